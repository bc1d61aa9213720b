"""CLI command ``repair``: build a RepairConfig, repair (or sweep λ), print with rich, readable at 80 columns
(docs/repair.md). Progress goes to stderr: a bar or status line on a terminal, plain lines in a log or a pipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from intrudim.cli.analyze import DEFAULT_TOP, check_top
from intrudim.cli.common import PlainHelpCommand, base_and_tuned, command_line, run_guarded, skipped_summary
from intrudim.cli.output import print_lines, terminal_table
from intrudim.errors import IntrudimError
from intrudim.repair.config import DEFAULT_LAMBDA
from intrudim.repair.sweep_result import DEFAULT_SWEEP
from intrudim.weights.names import short_matrix_name

DEFAULT_SWEEP_TEXT = ",".join(f"{lam:g}" for lam in DEFAULT_SWEEP)


def repair_command(
    models: Annotated[list[str], typer.Argument(metavar="[BASE] TUNED", help="BASE: a base model (HF folder, "
                      ".safetensors file, 'minilm'/'smollm2', Hub id org/name[@rev]); TUNED: a PEFT LoRA adapter, "
                      "intrudim run dir, Trainer checkpoint or fully fine-tuned model (a folder or Hub id). TUNED "
                      "alone: BASE is the base the adapter records.")],
    out: Annotated[Path, typer.Option("--out", help="Write OUT/adapter (or OUT/model), OUT/repair.json and "
                   "OUT/report.html here (--sweep: repair_sweep.json/.csv/.png and report.html).")],
    lam: Annotated[float, typer.Option("--lambda", help="Scale for the intruders' singular values: 0 removes "
                   "them, 1 keeps them.")] = DEFAULT_LAMBDA,
    sweep: Annotated[str | None, typer.Option("--sweep", metavar="λ,λ,...",
                     help="Comma-separated λ values (the paper's: "
                     f"{DEFAULT_SWEEP_TEXT}): measure --task accuracy, the loss on --task-text and --text forgetting "
                     "for each, per method; writes no adapter.")] = None,
    k: Annotated[int, typer.Option("--k", help="Top-k singular vectors of each tuned matrix examined.")] = 10,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Intruder threshold on max |cos|, in (0, 1].")] = 0.5,
    control: Annotated[str, typer.Option("--control", help="none (repair the intruders), non-intruder (as many top "
                       "non-intruder directions), shrink (W0 + c·ΔW, same removed norm), or all (--sweep).")] = "none",
    task: Annotated[str | None, typer.Option("--task", help="--sweep: task whose held-out accuracy is measured "
                    "(see `intrudim tasks`).")] = None,
    task_text: Annotated[str | None, typer.Option("--task-text", metavar="FILE|DIR|DATASET", help="--sweep: your own "
                         "held-out task text (a UTF-8 file, a folder of .txt, a saved datasets dataset): the task cost "
                         "is the model's loss on it, as `forgetting` measures loss (lower is better).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="--sweep: wiki, news, a file or folder of .txt: "
                    "forgetting is the model's loss on it (lower = less forgetting).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="--sweep: tokens of --text (and of --task-text) "
                          "scored.")] = 20_000,
    max_examples: Annotated[int, typer.Option("--max-examples", help="--sweep: held-out task examples scored.")] = 400,
    merged: Annotated[bool, typer.Option("--merged", help="Write merged weights to OUT/model instead of an adapter.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier repair in OUT (or "
                   "another run's report.html).")] = False,
    modules: Annotated[str | None, typer.Option("--modules", help="Regex on parameter names choosing the matrices.")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", "--cache-dir", help="Base SVD cache directory.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where base SVDs are computed.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading pickle checkpoints.")] = False,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Print at most N repaired matrices: all of them when "
                   "there are N or fewer, else those where intruders remain first, and one line counting the rest. "
                   "Every matrix is in --json and repair.json.")] = DEFAULT_TOP,
    print_all: Annotated[bool, typer.Option("--all", help="Print every repaired matrix (instead of --top).")] = False,
) -> None:
    """Scale the intruders' singular values by λ (v2): W' = W_t + (λ−1)·Σ σ_j u_j v_jᵀ, written exactly
    as a PEFT adapter of rank r+|I| (or merged weights); --sweep measures accuracy and forgetting per λ."""
    from intrudim.repair.config import RepairConfig

    stdout = Console()

    def work() -> None:
        from intrudim.fileio import ensure_writable_directory

        check_top(top)
        if sweep is not None and sweep.startswith("-"):  # `--sweep --control all`: the option took --control
            raise IntrudimError(
                f"--sweep takes its λ values right after it, e.g. --sweep {DEFAULT_SWEEP_TEXT} (the paper's); "
                f"it got '{sweep}', which is an option."
            )
        base, tuned = base_and_tuned(models)

        if sweep is not None:
            from intrudim.repair.sweep import repair_sweep, write_sweep_outputs
            from intrudim.repair.sweep_result import parse_controls, parse_lambdas

            lambdas, controls = parse_lambdas(sweep), parse_controls(control)
            config = RepairConfig(k=k, epsilon=epsilon, modules=modules, device=device, allow_pickle=allow_pickle)
            if task is not None:
                from intrudim.tasks import get_task

                get_task(task)  # an unknown task fails here, before any slow work
            ensure_writable_directory(out)
            _check_sweep_report_free(out, overwrite)
            if base is None:  # the sweep loads BASE as a model: the adapter's recorded base, resolved once here
                from intrudim.models.references import resolve_base, resolve_reference

                base = str(resolve_base(None, resolve_reference(tuned, role="tuned")).path)
            result = repair_sweep(
                base, tuned, lambdas, controls, config=config, task=task, text=text, task_text=task_text,
                max_tokens=max_tokens, max_examples=max_examples, cache_dir=cache, progress=True,
            )  # fmt: skip
            paths = write_sweep_outputs(result, out, command=command_line())
            if as_json:
                sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
                return
            _print_sweep(stdout, result)
            stdout.print()
            print_lines(stdout, [f"report: {paths['html']}", f"figure: {paths['png']}", f"json: {paths['json']}",
                                 f"csv: {paths['csv']}"])  # fmt: skip
            return
        if control == "all":
            raise IntrudimError("--control all compares every method and needs --sweep; a single repair takes none, "
                                "non-intruder or shrink.")  # fmt: skip
        config = RepairConfig(lam=lam, k=k, epsilon=epsilon, control=control, modules=modules, device=device,
                              allow_pickle=allow_pickle)  # fmt: skip
        from intrudim.repair.core import repair

        result = repair(base, tuned, config, out=out, merged=merged, overwrite=overwrite, cache_dir=cache,
                        progress=True)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            return
        _print_repair(stdout, result, top=None if print_all else top)
        print_lines(stdout, [f"report: {out / 'report.html'}", f"json: {out / 'repair.json'}"])

    run_guarded(work)


def _check_sweep_report_free(out: Path, overwrite: bool) -> None:
    """--sweep writes OUT/report.html: refuse to replace another run's report (a repair's, an analysis') unless
    --overwrite; a sweep's own outputs (repair_sweep.json beside it) are replaced as before."""
    report = out / "report.html"
    if report.exists() and not (out / "repair_sweep.json").exists() and not overwrite:
        raise IntrudimError(
            f"'{report}' already exists (the report of another run) and the sweep would replace it. Choose another "
            f"--out, or pass --overwrite to replace it."
        )


def _short(name: str) -> str:
    return short_matrix_name(name)


def repaired_to_print(changed: list[Any], top: int | None) -> list[Any]:
    """The rows `repair` prints (``--top``): every changed matrix, in the model's order, when there are ``top`` or
    fewer (or ``top`` is None: ``--all``); otherwise at most ``top``: those where intruders remain first (most
    first), then the others, each group in the model's order."""
    if top is None or len(changed) <= top:
        return list(changed)
    remaining = sorted((m for m in changed if m.remaining_ranks), key=lambda m: -len(m.remaining_ranks))
    rest = [m for m in changed if not m.remaining_ranks]
    return (remaining + rest)[:top]


def _print_repair(console: Console, result, top: int | None = DEFAULT_TOP) -> None:
    """The changed matrices, one row each (at most ``top``, :func:`repaired_to_print`), readable at 80 columns;
    then the summary, one fact per line."""
    from rich.text import Text

    from intrudim.report.repair_report import rank_list

    all_changed = [m for m in result.matrices if m.removed_frobenius > 0]
    changed = repaired_to_print(all_changed, top)
    if changed:
        control = result.config.control
        scaled = {"none": "intruder ranks scaled", "non-intruder": "non-intruder ranks scaled",
                  "shrink": "scaled"}[control]  # fmt: skip
        table = terminal_table(f"Repaired matrices (λ={result.config.lam:g}, control={control})")
        table.add_column("matrix", no_wrap=True)
        table.add_column(scaled, overflow="fold")
        table.add_column("σ before → after" if control != "shrink" else "ΔW × c", overflow="fold")
        if result.tuned_kind == "lora" and control != "shrink":
            table.add_column("rank +", justify="right", no_wrap=True)
        table.add_column("‖W'−W_t‖", justify="right", no_wrap=True)
        table.add_column("intruders\nbefore→after", justify="right", no_wrap=True)
        for m in changed:
            if m.shrink_c is not None:
                what, sigmas = "all of ΔW", f"c={m.shrink_c:.3f}"
            else:
                what = rank_list(m.scaled_ranks)
                sigmas = "\n".join(f"{a:.3g} → {b:.3g}" for a, b in zip(m.sigma_before, m.sigma_after, strict=True))
            left = "?" if m.remaining_ranks is None else str(len(m.remaining_ranks))
            row = [_short(m.name), what, sigmas]
            if result.tuned_kind == "lora" and control != "shrink":
                row.append(str(m.rank_added))
            row += [f"{m.removed_frobenius:.3g}", f"{len(m.intruder_ranks)} → {left}"]
            table.add_row(*row, style="red" if m.remaining_ranks else None)
        console.print(table)
    hidden = len(all_changed) - len(changed)
    if hidden:
        left = sum(1 for m in all_changed if m.remaining_ranks) - sum(1 for m in changed if m.remaining_ranks)
        what = "matrix" if hidden == 1 else "matrices"
        which = "with no intruder left" if not left else f"{left} of them with intruders left"
        print_lines(console, [f"… and {hidden} more repaired {what} not listed, {which}; every matrix: --all here, "
                              f"or --json, or repair.json"], style="dim")  # fmt: skip
    print_lines(console, result.summary_lines())
    print_lines(console, [Text.from_markup(line) for line in skipped_summary(result.skipped)])


def _print_sweep(console: Console, result) -> None:
    """Every method × λ, readable at 80 columns; what each column is and BASE's values for reference below."""
    from intrudim.spectral.repair import METHOD_LABELS

    loss = result.loss
    table = terminal_table(f"Repair sweep: {result.total_intruders} intruders in {result.matrices_with_intruders} "
                           f"matrices (k={result.k}, ε={result.epsilon})")  # fmt: skip
    table.add_column("method")
    table.add_column("λ", justify="right", no_wrap=True)
    has = {key: any(getattr(p, key) is not None for p in result.points)
           for key in ("accuracy", "task_loss", "forgetting_loss")}  # fmt: skip
    if has["accuracy"]:
        table.add_column("accuracy", justify="right", no_wrap=True)
    if has["task_loss"]:
        table.add_column("task-text\nloss", justify="right", no_wrap=True)
    if has["forgetting_loss"]:
        table.add_column("text\nloss", justify="right", no_wrap=True)
        table.add_column("Δ vs\nBASE", justify="right", no_wrap=True)
    table.add_column("‖W'−W_t‖", justify="right", no_wrap=True)
    previous = None
    for p in result.points:
        row = [METHOD_LABELS[p.method] if p.method != previous else "", f"{p.lam:g}"]
        previous = p.method
        if has["accuracy"]:
            row.append("" if p.accuracy is None else f"{p.accuracy:.3f}")
        if has["task_loss"]:
            row.append("" if p.task_loss is None else f"{p.task_loss:.4f}")
        if has["forgetting_loss"]:
            row.append("" if p.forgetting_loss is None else f"{p.forgetting_loss:.4f}")
            row.append("" if p.forgetting_loss is None or result.base_loss is None
                       else f"{p.forgetting_loss - result.base_loss:+.4f}")  # fmt: skip
        row.append(f"{p.removed_frobenius:.3g}")
        table.add_row(*row)
    console.print(table)
    lines = ["λ = 1 is TUNED as trained."]
    if has["accuracy"]:
        lines.append(f"accuracy: held-out accuracy on task '{result.task}' ({result.task_examples} examples; higher is "
                     f"better).")  # fmt: skip
    if loss is not None and has["task_loss"]:
        lines.append(f"task-text loss: {loss.name} on your task text {result.task_text['source']}, in {loss.unit} "
                     f"(lower is better).")  # fmt: skip
        lines.append(f"BASE loss on the task text: {loss.describe(result.base_task_loss)}")
    if loss is not None and has["forgetting_loss"]:
        lines.append(f"text loss: {loss.name} on the text '{result.text['source']}', in {loss.unit} (lower = less "
                     f"forgetting); Δ vs BASE: the forgetting.")  # fmt: skip
        lines.append(f"BASE loss on the text: {loss.describe(result.base_loss)}")
    if (regime := result.regime()) is not None:
        lines.append(regime_line(regime))
    lines.append("‖W'−W_t‖: the Frobenius norm removed, over every repaired matrix.")
    print_lines(console, lines)


def regime_line(regime: dict[str, Any]) -> str:
    """E.g. ``regime: TUNED perplexity / BASE perplexity = 80.2 on the text: destructive (above 2: ...)``."""
    ratio = f"{regime['ratio_name']} = {regime['perplexity_ratio']:.3g} on the text"
    if regime["destructive"]:
        return (f"regime: {ratio}: destructive (above {regime['destructive_above']:g}, TUNED no longer models the "
                f"text; the paper's forgetting is a modest rise at equal task accuracy)")
    return f"regime: {ratio} (not destructive: {regime['destructive_above']:g} or less)"


def register(app: typer.Typer) -> None:
    app.command("repair", cls=PlainHelpCommand)(repair_command)

"""CLI command ``repair``: build a RepairConfig, repair (or sweep λ), print with rich (docs/repair.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from intrudim.repair.config import DEFAULT_LAMBDA


def repair_command(
    models: Annotated[list[str], typer.Argument(metavar="[BASE] TUNED", help="BASE: a base model (HF folder, "
                      ".safetensors file, 'minilm'/'smollm2', Hub id org/name[@rev]); TUNED: a PEFT LoRA adapter, "
                      "intrudim run dir, Trainer checkpoint or fully fine-tuned model (a folder or Hub id). TUNED "
                      "alone: BASE is the base the adapter records.")],
    out: Annotated[Path, typer.Option("--out", help="Write OUT/adapter (or OUT/model) and OUT/repair.json here.")],
    lam: Annotated[float, typer.Option("--lambda", help="Scale for the intruders' singular values: 0 removes "
                   "them, 1 keeps them.")] = DEFAULT_LAMBDA,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Comma-separated λ values (e.g. 0,0.25,0.5,0.75,1): "
                     "measure --task accuracy and --text forgetting for each, per method; writes no adapter.")] = None,
    k: Annotated[int, typer.Option("--k", help="Top-k singular vectors of each tuned matrix examined.")] = 10,
    epsilon: Annotated[float, typer.Option("--epsilon", help="Intruder threshold on max |cos|, in (0, 1].")] = 0.5,
    control: Annotated[str, typer.Option("--control", help="none (repair the intruders), non-intruder (as many top "
                       "non-intruder directions), shrink (W0 + c·ΔW, same removed norm), or all (--sweep).")] = "none",
    task: Annotated[str | None, typer.Option("--task", help="--sweep: task whose held-out accuracy is measured "
                    "(see `intrudim tasks`).")] = None,
    text: Annotated[str | None, typer.Option("--text", help="--sweep: wiki, news, a file or folder of .txt: "
                    "forgetting is the model's loss on it.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="--sweep: tokens of --text scored.")] = 20_000,
    max_examples: Annotated[int, typer.Option("--max-examples", help="--sweep: held-out task examples scored.")] = 400,
    merged: Annotated[bool, typer.Option("--merged", help="Write merged weights to OUT/model instead of an adapter.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier repair in OUT.")] = False,
    modules: Annotated[str | None, typer.Option("--modules", help="Regex on parameter names choosing the matrices.")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", "--cache-dir", help="Base SVD cache directory.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda: where base SVDs are computed.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading pickle checkpoints.")] = False,
) -> None:
    """Scale the intruders' singular values by λ (v2): W' = W_t + (λ−1)·Σ σ_j u_j v_jᵀ, written exactly
    as a PEFT adapter of rank r+|I| (or merged weights); --sweep measures accuracy and forgetting per λ."""
    from intrudim.cli import run_guarded
    from intrudim.repair.config import RepairConfig

    stdout, stderr = Console(), Console(stderr=True)

    def work() -> None:
        from intrudim.cli import base_and_tuned
        from intrudim.fileio import ensure_writable_directory

        base, tuned = base_and_tuned(models)

        if sweep is not None:
            from intrudim.experiments.repair_sweep import (
                parse_controls,
                parse_lambdas,
                repair_sweep,
                write_sweep_outputs,
            )

            lambdas, controls = parse_lambdas(sweep), parse_controls(control)
            config = RepairConfig(k=k, epsilon=epsilon, modules=modules, device=device, allow_pickle=allow_pickle)
            if task is not None:
                from intrudim.tasks import get_task

                get_task(task)  # an unknown task fails here, before any slow work
            ensure_writable_directory(out)
            if base is None:  # the sweep loads BASE as a model: the adapter's recorded base, resolved once here
                from intrudim.models.references import resolve_base, resolve_reference

                base = str(resolve_base(None, resolve_reference(tuned, role="tuned")).path)
            with stderr.status("repair sweep") as status:
                result = repair_sweep(
                    base, tuned, lambdas, controls, config=config, task=task, text=text, max_tokens=max_tokens,
                    max_examples=max_examples, cache_dir=cache, progress=lambda m: status.update(f"repair sweep: {m}"),
                )  # fmt: skip
            paths = write_sweep_outputs(result, out)
            if as_json:
                sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
                return
            _print_sweep(stdout, result)
            stdout.print(f"\nfigure: [bold]{paths['png']}[/]  (json: {paths['json']}, csv: {paths['csv']})")
            return
        if control == "all":
            from intrudim.errors import IntrudimError

            raise IntrudimError("--control all compares every method and needs --sweep; a single repair takes none, "
                                "non-intruder or shrink.")  # fmt: skip
        config = RepairConfig(lam=lam, k=k, epsilon=epsilon, control=control, modules=modules, device=device,
                              allow_pickle=allow_pickle)  # fmt: skip
        from intrudim.repair.core import repair

        result = repair(base, tuned, config, out=out, merged=merged, overwrite=overwrite, cache_dir=cache,
                        progress=not as_json)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            return
        _print_repair(stdout, result)

    run_guarded(work)


def _short(name: str) -> str:
    from intrudim.cli import short_matrix_name

    return short_matrix_name(name)


def _print_repair(console: Console, result) -> None:
    changed = [m for m in result.matrices if m.removed_frobenius > 0]
    if changed:
        table = Table(title=f"Repaired matrices (λ={result.config.lam:g}, control={result.config.control})")
        for column in ("matrix", "scaled", "σ before → after", "rank +", "‖W'−W_t‖"):
            table.add_column(column, justify="left" if column == "matrix" else "right")
        for m in changed:
            sigmas = ", ".join(f"{a:.3g}→{b:.3g}" for a, b in zip(m.sigma_before, m.sigma_after, strict=True))
            if m.shrink_c is not None:
                sigmas = f"c={m.shrink_c:.3f}"
            table.add_row(_short(m.name), ",".join(map(str, m.scaled_ranks)) or "all", sigmas, str(m.rank_added),
                          f"{m.removed_frobenius:.3g}")  # fmt: skip
        console.print(table)
    for line in result.summary_lines():
        console.print(line, highlight=False)


def _print_sweep(console: Console, result) -> None:
    from intrudim.experiments.repair_sweep import METHOD_LABELS

    table = Table(title=f"Repair sweep: {result.total_intruders} intruders in {result.matrices_with_intruders} matrices")
    table.add_column("method")
    table.add_column("λ", justify="right")
    if result.task:
        table.add_column(f"acc. {result.task}", justify="right")
    if result.measure:
        table.add_column("forgetting loss", justify="right")
    table.add_column("‖removed‖", justify="right")
    for p in result.points:
        row = [METHOD_LABELS[p.method], f"{p.lam:g}"]
        if result.task:
            row.append("" if p.accuracy is None else f"{p.accuracy:.3f}")
        if result.measure:
            row.append("" if p.forgetting_loss is None else f"{p.forgetting_loss:.4f}")
        row.append(f"{p.removed_frobenius:.3g}")
        table.add_row(*row)
    console.print(table)
    if result.base_loss is not None:
        console.print(f"BASE loss on the same text: {result.base_loss:.4f} ({result.measure})", highlight=False)


def register(app: typer.Typer) -> None:
    from intrudim.cli import PlainHelpCommand

    app.command("repair", cls=PlainHelpCommand)(repair_command)

"""CLI command ``analyze``: build an AnalyzeConfig, call :func:`intrudim.analyze.analyze`, print one row per matrix."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from intrudim.cli.common import (
    PlainHelpCommand,
    base_and_tuned,
    command_line,
    run_guarded,
    skipped_summary,
    stderr,
    stdout,
)
from intrudim.cli.output import print_lines, terminal_table
from intrudim.errors import IntrudimError
from intrudim.weights.names import short_matrix_name

DEFAULT_TOP = 30
"""`analyze` prints every matrix of a model with at most this many, else this many of those with intruders (most
first): a 7B model has some 224 matrices, more than anyone reads in a terminal (all are in --json and --out)."""


def analyze(
    models: Annotated[list[str], typer.Argument(metavar="[BASE] TUNED", show_default=False,
                      help="BASE: the base model (a Hugging Face folder, a .safetensors file, 'minilm'/'smollm2' "
                      "(embedded) or a Hub repo id org/name[@revision]). TUNED: a PEFT LoRA adapter, an intrudim run "
                      "dir, a Trainer output_dir or checkpoint-N, or a fine-tuned model, as a folder or a Hub id. "
                      "With TUNED alone, BASE is the base the adapter records (base_model_name_or_path).")],
    k: Annotated[int, typer.Option(help="Top-k tuned singular vectors examined per matrix.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold on max |cos| to every base vector, in (0, 1].")] = 0.5,
    modules: Annotated[str | None, typer.Option(metavar="REGEX", help="Regex on parameter names choosing the matrices (replaces the default choice).")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Write analysis.json, analysis.csv, figures and report.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    device: Annotated[str, typer.Option(metavar="cpu|cuda[:N]", help="Where base SVDs are computed.")] = "cpu",
    cache: Annotated[Path | None, typer.Option("--cache", "--cache-dir", metavar="DIR", help="Base SVD cache directory (default: $INTRUDIM_CACHE or ~/.cache/intrudim/svd).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the base SVD cache.")] = False,
    cache_dtype: Annotated[str, typer.Option(metavar="float32|float64|float16|bfloat16", help="Precision of cached base factors (σ stays float64): float32 (default; half the disk of float64), float64 (the same counts as --no-cache; values to rounding), or float16/bfloat16 (half the disk of float32; the same counts, ranks and sweeps as --no-cache: every decision within the half factors' certified error of a threshold is re-decided with a float64 SVD of that matrix, and the JSON counts them as matrices_redecided; slower when warm, see docs/performance.md). One directory holds one half precision or full-precision factors.")] = "float32",
    k_sweep: Annotated[bool, typer.Option("--k-sweep", help="Also count intruders for k = 20%…100% of each matrix's singular vectors (Fig. 11).")] = False,
    include_embeddings: Annotated[bool, typer.Option("--include-embeddings", help="Also analyse embedding tables (left out by default).")] = False,
    include_heads: Annotated[bool, typer.Option("--include-heads", help="Also analyse heads: LM head, classifier, pooler (left out by default).")] = False,
    method: Annotated[str, typer.Option(metavar="auto|structured|dense", help="LoRA adapters: auto = structured (top-k from the factors and the cached base SVD, never merged); dense = merge and take a dense SVD (the slow reference). Dense tuned models always take the dense top-k.")] = "auto",
    effective_rank: Annotated[bool, typer.Option("--effective-rank/--no-effective-rank",
                              help="Effective rank of ΔW (Fig. 6); for dense models it needs all singular values of ΔW.")] = True,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading .bin/.pt pickle checkpoints (they can run code: only for files you trust).")] = False,
    threads: Annotated[int | None, typer.Option(metavar="N", help="Run torch and numpy/scipy BLAS on at most N threads (default: torch on every core for the large SVDs, BLAS on one for the small products).")] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", help="Print at most N matrices: all of them when there are N or fewer, else the N with the most intruders (most first) and one line counting the rest. Every matrix is in --json and in the CSV/JSON of --out.")] = DEFAULT_TOP,
    print_all: Annotated[bool, typer.Option("--all", help="Print every matrix, in the model's order (instead of --top).")] = False,
) -> None:
    """Count intruder dimensions of TUNED against BASE, per matrix (Sec. 3–4, Figs. 1–6, 11)."""
    from intrudim.analyze import AnalyzeConfig
    from intrudim.analyze import analyze as run_analysis

    def work() -> None:
        base, tuned = base_and_tuned(models)
        check_top(top)
        if threads is not None:
            from intrudim.threads import limit_threads

            limit_threads(threads)
        config = AnalyzeConfig(
            k=k, epsilon=epsilon, modules=modules, include_embeddings=include_embeddings,
            include_heads=include_heads, k_sweep=k_sweep, method=method, device=device,
            cache_dtype=cache_dtype, allow_pickle=allow_pickle, effective_rank=effective_rank,
        )  # fmt: skip
        if out is not None:
            from intrudim.fileio import ensure_writable_directory

            ensure_writable_directory(out)
        result = run_analysis(base, tuned, config, cache_dir=cache, use_cache=not no_cache, progress=True)
        paths: dict[str, Path] = {}
        if out is not None:
            from intrudim.report.analysis_report import write_analysis_outputs

            paths = write_analysis_outputs(result, out, command=command_line())
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            if paths:
                print_lines(stderr, [f"report: {paths['html']}"])
            return
        _print_analysis(result, top=None if print_all else top)
        if paths:
            stdout.print()
            print_lines(stdout, [f"report: {paths['html']}", f"json: {paths['json']}", f"csv: {paths['csv']}"])

    run_guarded(work)


def _rank_ranges(ranks: list[int]) -> str:
    """1,2,3,4,7 → '1-4,7': intruder ranks compactly."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_top(top: int) -> None:
    """``--top`` (of `analyze` and `repair`) counts rows to print: 0 or more."""
    if top < 0:
        raise IntrudimError(f"--top must be 0 or more (matrices printed); got {top}. --all prints every matrix.")


def matrices_to_print(matrices: list[Any], top: int | None) -> list[Any]:
    """The rows `analyze` prints (``--top``): every matrix, in the model's order, when there are ``top`` or fewer
    (or ``top`` is None: ``--all``); otherwise at most ``top`` of the matrices with intruders, the most intruders
    first (ties: the model's order)."""
    if top is None or len(matrices) <= top:
        return list(matrices)
    with_intruders = [m for m in matrices if m.intruders]
    return sorted(with_intruders, key=lambda m: -m.intruders)[:top]  # sorted() is stable: ties keep model order


def unlisted_lines(matrices: list[Any], shown: list[Any]) -> list[str]:
    """What the table left out (one line: how many, with and without intruders) and where every matrix is."""
    hidden = len(matrices) - len(shown)
    if not hidden:
        return []
    hidden_with = sum(1 for m in matrices if m.intruders) - sum(1 for m in shown if m.intruders)
    what = "matrix" if hidden == 1 else "matrices"
    more = f"… and {hidden} more {what} not listed" if shown else f"{hidden} {what} not listed"
    if hidden_with == 0:
        count = f"{more}, without intruders"
    elif hidden_with == hidden:
        count = f"{more}, with intruders"
    else:
        count = f"{more}: {hidden_with} with intruders, {hidden - hidden_with} without"
    return [count, "every matrix: --all here, or --json, or analysis.csv/.json in --out"]


def _print_analysis(result: Any, top: int | None = DEFAULT_TOP) -> None:
    """One line per matrix (at most ``top``, :func:`matrices_to_print`; ``None``: all), readable at 80 columns;
    full names are in the JSON and CSV. Then the summary, one fact per line."""
    names = [short_matrix_name(m.name) for m in result.matrices]
    if len(set(names)) < len(names):  # two matrices share a short label: fall back to the module type
        from intrudim.weights.selection import module_type

        names = [f"L{m.layer} {module_type(m.name)}" if m.layer is not None else module_type(m.name)
                 for m in result.matrices]  # fmt: skip
    label_of = {id(m): label for label, m in zip(names, result.matrices, strict=True)}
    shown = matrices_to_print(result.matrices, top)
    if shown:
        table = terminal_table(f"Intruder dimensions (k={result.k}, ε={result.epsilon})")
        table.add_column("matrix", no_wrap=True)
        table.add_column("shape", justify="right", no_wrap=True)
        table.add_column("intr.", justify="right", no_wrap=True)
        table.add_column("ranks", justify="right", overflow="fold")
        table.add_column("min max|cos|", justify="right", no_wrap=True)
        table.add_column("eff.rank ΔW", justify="right", no_wrap=True)
        for m in shown:
            table.add_row(
                label_of[id(m)], f"{m.shape[0]}×{m.shape[1]}", str(m.intruders), _rank_ranges(m.intruder_ranks),
                f"{min(m.max_abs_cos):.3f}", "" if m.effective_rank_delta is None else f"{m.effective_rank_delta:.2f}",
                style="bold red" if m.intruders else None,
            )  # fmt: skip
        stdout.print(table)
    print_lines(stdout, unlisted_lines(result.matrices, shown), style="dim")
    print_lines(stdout, result.summary_lines())
    print_lines(stdout, [Text.from_markup(line) for line in skipped_summary(result.skipped)])


def register(app: typer.Typer) -> None:
    """Add ``analyze`` to ``app``."""
    app.command("analyze", cls=PlainHelpCommand)(analyze)

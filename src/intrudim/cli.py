"""The `intrudim` command line: thin wrappers that build a config, call the library and print with rich.

Results go to stdout (``--json``: one JSON document and nothing else); progress and messages go to stderr.
Errors meant for people (:class:`~intrudim.errors.IntrudimError`) are printed as one paragraph, exit code 2.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from intrudim.errors import IntrudimError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="intrudim",
    help="Find, measure and repair intruder dimensions in fine-tuned transformers "
    "(Shuttleworth et al., 'LoRA vs Full Fine-tuning: An Illusion of Equivalence').",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
stdout = Console()
stderr = Console(stderr=True)
T = TypeVar("T")


def run_guarded(fn: Callable[[], T]) -> T:
    """Run ``fn``; turn an IntrudimError into a one-paragraph message and exit code 2 (no traceback)."""
    try:
        return fn()
    except IntrudimError as exc:
        stderr.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]: nothing half-written was left behind (outputs are written atomically).")
        raise typer.Exit(130) from None


def _command_line() -> str:
    return "intrudim " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@app.command()
def analyze(
    base: Annotated[str, typer.Argument(help="Base model: HF directory, .safetensors file, or 'minilm' (embedded).")],
    tuned: Annotated[str, typer.Argument(help="PEFT LoRA adapter dir, intrudim run dir, or fine-tuned model.")],
    k: Annotated[int, typer.Option(help="Top-k tuned singular vectors examined per matrix.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold on max |cos| to every base vector, in (0, 1].")] = 0.5,
    modules: Annotated[str | None, typer.Option(help="Regex on parameter names choosing the matrices.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write analysis.json, analysis.csv, figures and report.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda:N): where base SVDs are computed.")] = "cpu",
    cache: Annotated[Path | None, typer.Option("--cache", "--cache-dir", help="Base SVD cache directory (default: $INTRUDIM_CACHE or ~/.cache/intrudim/svd).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not read or write the base SVD cache.")] = False,
    cache_dtype: Annotated[str, typer.Option(help="float32 (half the disk) or float64 for cached base factors.")] = "float32",
    k_sweep: Annotated[bool, typer.Option("--k-sweep", help="Also count intruders for k = 20%…100% (Fig. 11).")] = False,
    include_embeddings: Annotated[bool, typer.Option("--include-embeddings")] = False,
    include_heads: Annotated[bool, typer.Option("--include-heads")] = False,
    method: Annotated[str, typer.Option(help="auto (LoRA from its factors) or dense (merge + dense SVD, reference).")] = "auto",
    effective_rank: Annotated[bool, typer.Option("--effective-rank/--no-effective-rank",
                              help="Effective rank of ΔW (Fig. 6); for dense models it needs all singular values of ΔW.")] = True,
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Allow loading .bin/.pt pickle checkpoints.")] = False,
) -> None:
    """Count intruder dimensions of TUNED against BASE, per matrix (Sec. 3–4, Figs. 1–6, 11)."""
    from intrudim.analyze import AnalyzeConfig
    from intrudim.analyze import analyze as run_analysis

    def work() -> None:
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

            paths = write_analysis_outputs(result, out, command=_command_line())
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            if paths:
                stderr.print(f"report: {paths['html']}")
            return
        _print_analysis(result)
        if paths:
            stdout.print(f"\nreport: [bold]{paths['html']}[/]  (json: {paths['json']}, csv: {paths['csv']})")

    run_guarded(work)


def _print_analysis(result: Any) -> None:
    table = Table(title=f"Intruder dimensions (k={result.k}, ε={result.epsilon})", show_lines=False)
    table.add_column("matrix", overflow="fold")
    table.add_column("shape", justify="right")
    table.add_column("intruders", justify="right")
    table.add_column("ranks", justify="right")
    table.add_column("min max|cos|", justify="right")
    table.add_column("eff. rank ΔW", justify="right")
    for m in result.matrices:
        style = "bold red" if m.intruders else None
        table.add_row(
            m.name, f"{m.shape[0]}×{m.shape[1]}", str(m.intruders), ",".join(map(str, m.intruder_ranks)),
            f"{min(m.max_abs_cos):.3f}", "" if m.effective_rank_delta is None else f"{m.effective_rank_delta:.2f}",
            style=style,
        )  # fmt: skip
    stdout.print(table)
    for line in result.summary_lines():
        stdout.print(line)
    for entry in result.skipped:
        stdout.print(f"[yellow]skipped[/] {entry['name']}: {entry['reason']}", highlight=False)


@app.command()
def toy(
    n: Annotated[int, typer.Option(help="Matrix size n for W + λ v vᵀ (Sec. 5).")] = 768,
    k: Annotated[int, typer.Option(help="Top-k vectors examined.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    trials: Annotated[int, typer.Option(help="Random vectors per n for the App. C baseline.")] = 200,
    out: Annotated[Path | None, typer.Option(help="Write toy.json, figures and toy.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
) -> None:
    """The toy model: W + λ·v vᵀ creates an intruder once λ > σ_max (Sec. 5); random-vector baseline (App. C)."""
    from dataclasses import asdict

    from intrudim.spectral.toy import random_vector_baseline, toy_lambda_sweep

    def work() -> None:
        if n < 2 or not (1 <= k <= n):
            raise IntrudimError(f"--n must be ≥ 2 and --k between 1 and n; got n={n}, k={k}.")
        if not (0 < epsilon <= 1):
            raise IntrudimError(f"--epsilon must be in (0, 1]; got {epsilon}.")
        if out is not None:
            from intrudim.fileio import ensure_writable_directory

            ensure_writable_directory(out)
        with stderr.status("toy model: sweeping λ and sampling random vectors"):
            sweep = toy_lambda_sweep(n, k=k, epsilon=epsilon, seed=seed)
            ns = sorted({16, 64, 256, 768, 1024, 4096, n})
            baseline = random_vector_baseline(ns, trials=trials, seed=seed)
        paths: dict[str, Path] = {}
        if out is not None:
            from intrudim.report.analysis_report import write_toy_outputs

            paths = write_toy_outputs(sweep, baseline, out)
        if as_json:
            payload = {"section5": asdict(sweep), "appendix_c": [asdict(p) for p in baseline]}
            sys.stdout.write(json.dumps(payload, indent=2) + "\n")
            return
        table = Table(title=f"W + λ·v vᵀ, n={n}, σ_max(W)={sweep.sigma_max:.3f} (Sec. 5)")
        for col in ("λ/σ_max", "rank of v", "|cos| with v", "max |cos| to base", f"intruders (top {k})"):
            table.add_column(col, justify="right")
        for p in sweep.points:
            table.add_row(f"{p.lam_over_sigma_max:g}", str(p.v_rank), f"{p.v_alignment:.3f}",
                          f"{p.v_max_cos_to_base:.3f}", str(p.intruders), style="bold red" if p.intruders else None)  # fmt: skip
        stdout.print(table)
        base_table = Table(title="Random unit vector vs an orthonormal basis (App. C)")
        for col in ("n", "mean max|cos|", "√(2 ln 2n / n)", "1/√n"):
            base_table.add_column(col, justify="right")
        for p in baseline:
            base_table.add_row(str(p.n), f"{p.mean_max_cos:.4f}", f"{p.theory:.4f}", f"{p.minimum_possible:.4f}")
        stdout.print(base_table)
        if paths:
            stdout.print(f"\nreport: [bold]{paths['html']}[/]")

    run_guarded(work)


def _register_training_commands() -> None:
    from intrudim.train.commands import register

    register(app)  # train, tasks, sweep (issue 4; docs/train.md)


_register_training_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

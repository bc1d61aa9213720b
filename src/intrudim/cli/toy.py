"""CLI command ``toy``: the toy model of Sec. 5 and the random-vector baseline of App. C."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from intrudim.cli.common import PlainHelpCommand, run_guarded, stderr, stdout
from intrudim.cli.output import print_lines, terminal_table
from intrudim.errors import IntrudimError


def toy(
    n: Annotated[int, typer.Option(help="Size n of the n×n Gaussian W in W + λ·v vᵀ (Sec. 5).")] = 768,
    k: Annotated[int, typer.Option(help="Top-k singular vectors of W + λ·v vᵀ examined for intruders.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Intruder threshold on max |cos| to every singular vector of W, in (0, 1].")] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed for W, v and the App. C vectors.")] = 0,
    trials: Annotated[int, typer.Option(help="Random unit vectors per n for the App. C baseline.")] = 200,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Write toy.json, figures and toy.html here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout and nothing else.")] = False,
) -> None:
    """The toy model of Sec. 5: sweep λ in W + λ·v vᵀ (W Gaussian, v a random unit vector) and report, per λ,
    the intruders among the top-k (max |cos| to W's singular vectors < ε) and the rank of v's direction, with the
    smallest λ/σ_max at which each appears. Sec. 5 argues λ > σ_max(W) suffices; intruders appear earlier, from
    about λ = 0.5·σ_max. Also the random-vector max-cosine baseline (App. C)."""
    from intrudim.spectral.toy import random_vector_baseline, toy_findings, toy_lambda_sweep

    def work() -> None:
        if n < 2 or not (1 <= k <= n):
            raise IntrudimError(f"--n must be ≥ 2 and --k between 1 and n; got n={n}, k={k}.")
        if not (0 < epsilon <= 1):
            raise IntrudimError(f"--epsilon must be in (0, 1]; got {epsilon}.")
        if trials < 2:
            raise IntrudimError(f"--trials must be ≥ 2 (a mean and a standard deviation are reported); got {trials}.")
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
            from intrudim.report.analysis_report import toy_payload

            sys.stdout.write(json.dumps(toy_payload(sweep, baseline), indent=2) + "\n")
            return
        table = terminal_table(f"W + λ·v vᵀ, n={n}, σ_max(W)={sweep.sigma_max:.3f} (Sec. 5)")
        for col in ("λ/σ_max", "v rank", "|cos(u,v)|", "theory", "max|cos| to W", f"intruders (top {k})"):
            table.add_column(col, justify="right", no_wrap=True)
        for p in sweep.points:
            table.add_row(f"{p.lam_over_sigma_max:g}", str(p.v_rank), f"{p.v_alignment:.3f}",
                          f"{p.v_alignment_theory:.3f}", f"{p.v_max_cos_to_base:.3f}",
                          str(p.intruders), style="bold red" if p.intruders else None)  # fmt: skip
        stdout.print(table)
        stdout.print(
            "u: the left singular vector of W + λ·v vᵀ most aligned with v; v rank: its rank among all n; theory: "
            "|cos(u,v)| as n → ∞; max|cos| to W: u against every left singular vector of W (an intruder below ε).",
            highlight=False,
        )
        for line in toy_findings(sweep):
            stdout.print(line, highlight=False)
        base_table = terminal_table("Random unit vector vs an orthonormal basis (App. C)")
        for col in ("n", "mean max|cos|", "√(2 ln 2n / n)", "1/√n"):
            base_table.add_column(col, justify="right")
        for p in baseline:
            base_table.add_row(str(p.n), f"{p.mean_max_cos:.4f}", f"{p.theory:.4f}", f"{p.minimum_possible:.4f}")
        stdout.print(base_table)
        if paths:
            stdout.print()
            print_lines(stdout, [f"report: {paths['html']}"])

    run_guarded(work)


def register(app: typer.Typer) -> None:
    """Add ``toy`` to ``app``."""
    app.command("toy", cls=PlainHelpCommand)(toy)

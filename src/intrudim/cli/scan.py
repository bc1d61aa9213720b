"""CLI command ``scan``: build a ScanConfig, scan, print the leaderboard with rich (docs/scan.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from intrudim.cli.common import PlainHelpCommand, command_line, run_guarded
from intrudim.cli.output import print_lines, terminal_table
from intrudim.weights.names import short_matrix_name

if TYPE_CHECKING:
    from rich.console import Console


def scan_command(
    base: Annotated[
        str,
        typer.Argument(
            metavar="BASE",
            show_default=False,
            help="Base model: HF directory, .safetensors file, 'minilm' or 'smollm2' (embedded).",
        ),
    ],
    tuned: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TUNED",
            show_default=False,
            help="PEFT LoRA adapter dirs, intrudim run dirs, or fine-tuned models of BASE.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="DIR",
            show_default=False,
            help="Write leaderboard.html/.json/.csv and runs/<name>/ (as `analyze --out`) here.",
        ),
    ] = None,
    glob: Annotated[
        str | None,
        typer.Option(
            "--glob",
            metavar="PATTERN",
            help="Also scan what this glob matches, e.g. 'runs/*/final' (quote it).",
        ),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Top-k tuned singular vectors examined per matrix.")] = 10,
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Intruder threshold on max |cos|, in (0, 1].")
    ] = 0.5,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run the units on a local Ray runtime started for the scan.")
    ] = False,
    ray_address: Annotated[
        str | None,
        typer.Option(
            "--ray-address",
            metavar="HOST:PORT",
            help="Run the units on an existing Ray cluster (its head's address).",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="--ray: parallel workers (default: all cores).")
    ] = None,
    device: Annotated[
        str, typer.Option("--device", metavar="cpu|cuda[:N]", help="Where base SVDs are computed.")
    ] = "cpu",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue a scan in --out: finished inputs are skipped.")
    ] = False,
    cache: Annotated[
        Path | None,
        typer.Option(
            "--cache",
            "--cache-dir",
            metavar="DIR",
            help="Base SVD cache shared by every unit (default: the one every verb uses, $INTRUDIM_CACHE or "
            "~/.cache/intrudim/svd; on a cluster, a directory every node sees).",
        ),
    ] = None,
    modules: Annotated[
        str | None,
        typer.Option("--modules", metavar="REGEX", help="Regex on parameter names choosing the matrices."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"rows": [...]} (input order) to stdout and nothing else.')
    ] = False,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Allow loading pickle checkpoints (only files you trust).")
    ] = False,
    order: Annotated[
        str,
        typer.Option(
            "--order",
            metavar="auto|matrix|adapter",
            help="matrix: each base matrix in turn, every input's factors analysed against its cached SVD read "
            "once; adapter: one input after the other (each reads every base factor again). auto: matrix from two "
            "inputs on. The same numbers either way.",
        ),
    ] = "auto",
    figures: Annotated[
        str,
        typer.Option(
            "--figures",
            metavar="auto|all|none",
            help="Figures in each input's report.html: all, none (tables, JSON and CSV only), or auto: all up to "
            "16 inputs, none above (nine figures cost ~8 s per input; `analyze --out` draws one input's).",
        ),
    ] = "auto",
    memory_budget: Annotated[
        int | None,
        typer.Option(
            "--memory-budget",
            metavar="MB",
            help="Matrix order: scan the inputs in batches whose results fit this many MB (each base factor is "
            "read once per batch). Default: a quarter of the memory available at the start.",
        ),
    ] = None,
) -> None:
    """A leaderboard of intruder dimensions over many adapters, run dirs or fine-tuned models of one BASE, with
    predicted vs found intruder-prone matrices; in-process, on a local Ray runtime (--ray) or a cluster."""
    from rich.console import Console

    from intrudim.analysis.config import AnalyzeConfig
    from intrudim.errors import IntrudimError
    from intrudim.scan import ScanConfig, scan

    stdout, stderr = Console(), Console(stderr=True)

    def work() -> None:
        if out is None:
            raise IntrudimError(
                "--out DIR is required: the scan writes its leaderboard and one analysis per input there."
            )
        if ray and ray_address is not None:
            raise IntrudimError(
                "Give --ray (a local Ray runtime) or --ray-address HOST:PORT (a cluster), not both."
            )
        config = ScanConfig(
            analysis=AnalyzeConfig(k=k, epsilon=epsilon, modules=modules, device=device, allow_pickle=allow_pickle),
            engine="ray" if (ray or ray_address is not None) else "local", ray_address=ray_address,
            ray_cpus=workers, resume=resume, order=order, memory_budget_mb=memory_budget, figures=figures,
        )  # fmt: skip
        if workers is not None and not ray:
            raise IntrudimError("--workers sizes the local Ray runtime: use it with --ray.")
        result = scan(base, list(tuned or []), out, config, pattern=glob, cache_dir=cache, progress=True,
                      command=command_line())  # fmt: skip
        if as_json:
            rows = result.rows
            sys.stdout.write(
                json.dumps({"rows": rows, "prediction": result.document["prediction"]}, indent=2) + "\n"
            )
            print_lines(stderr, [f"leaderboard: {result.paths['html']}"])
            return
        print_leaderboard(stdout, result.document, result.paths)

    run_guarded(work)


def print_leaderboard(console: Console, document: dict[str, Any], paths: dict[str, Path]) -> None:
    """The scan as the terminal shows it: one row per input, by its unique name (its folder under runs/), then one
    fact per line, wrapped between phrases (:func:`intrudim.cli.print_lines`)."""
    from rich.text import Text

    from intrudim.scan.leaderboard import ENERGY_NOTE

    rows = document["rows"]
    table = terminal_table(f"Intruder dimensions (k={document['k']}, ε={document['epsilon']}) of {len(rows)} "
                           f"tuned models")  # fmt: skip
    for column, justify in (("#", "right"), ("tuned", "left"), ("intr.", "right"), ("energy %", "right"),
                            ("worst", "left"), ("eff.rank", "right"), ("pred./found", "right")):  # fmt: skip
        table.add_column(column, justify=justify, overflow="fold")
    for i, row in enumerate(rows, 1):
        if row["error"] is not None:
            table.add_row(str(i), row["name"], "", "", "error", "", "", style="yellow")
            continue
        both = len(set(row["predicted"]) & set(row["found"]))
        table.add_row(
            str(i), row["name"], str(row["total_intruders"]), f"{100 * row['energy_share_mean']:.3g}",
            short_matrix_name(row["worst_matrix"]) if row["worst_matrix"] else "-",
            "" if row["effective_rank"] is None else f"{row['effective_rank']:.2f}",
            f"{len(row['predicted'])}/{len(row['found'])} ({both})",
            style="bold red" if row["total_intruders"] else None,
        )  # fmt: skip
    console.print(table)
    p = document["prediction"]
    lines: list[str | Text] = [
        f"base: {document['base']}",
        "#: input order; intr.: intruder dimensions, summed over matrices",
        ENERGY_NOTE,
        "worst: the matrix with the most intruders (its count in the report); eff.rank: effective rank of ΔW, mean "
        "over matrices",
        "pred./found: matrices predicted intruder-prone / with intruders (both)",
    ]
    for i, row in enumerate(rows, 1):
        if row["error"] is not None:
            lines.append(Text.assemble((f"#{i} {row['name']}", "yellow"), f": {row['error']}"))
    precision = "n/a" if p["precision"] is None else f"{p['precision']:.2f}"
    recall = "n/a" if p["recall"] is None else f"{p['recall']:.2f}"
    resumed = sum(1 for row in rows if row["resumed"])
    cache = document.get("base_svd_cache", {})
    lines += [
        f"predicted intruder-prone (σ1(ΔW)/σ_k(W0) > {p['threshold']:g}): {p['predicted']} of {p['matrices']} "
        f"matrices",
        f"with intruders: {p['found']}; both: {p['predicted_and_found']}; precision {precision}, recall {recall}",
        f"{len(rows)} inputs ({resumed} resumed) in {document['seconds']:.1f} s on {document['engine']}",
        f"base SVD cache: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} computed",
    ]
    print_lines(console, lines)
    console.print()
    print_lines(console, [f"leaderboard: {paths['html']}", f"json: {paths['json']}", f"csv: {paths['csv']}"])


def register(app: typer.Typer) -> None:
    """Add ``scan`` to the intrudim CLI."""
    app.command("scan", cls=PlainHelpCommand)(scan_command)

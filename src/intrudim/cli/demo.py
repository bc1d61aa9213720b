"""CLI command ``demo``: every finding of the paper on the embedded models, one report (docs/demo.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from intrudim.cli.common import PlainHelpCommand, run_guarded


def demo_command(
    quick: Annotated[bool, typer.Option("--quick", help="About 4 minutes on 2 cores: MiniLM only, short runs, "
                     "one seed (what `make demo` runs). Without it: every claim on three seeds, SmolLM2 for "
                     "forgetting and repair, the learning-rate × rank maps; about 70 minutes on 2 CPU cores (the "
                     "terminal says how long before it starts).")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for runs, measurements, summary.json and report.html; "
                   "a second demo with the same --out and settings reuses what is finished.")] = Path("demo_out"),
    seeds: Annotated[str | None, typer.Option("--seeds", "--seed", metavar="S[,S...]", help="Seeds: every "
                     "experiment runs once per seed and each claim is reported as held in n of N seeds ('fragile' "
                     "when they disagree). Default: 0 with --quick, 0,1,2 without.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Training runs side by side in worker processes "
                       "(the same numbers as one after the other, in about 2/3 of the time on 2 cores); 1: one "
                       "after the other, in this process.")] = 2,
    device: Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where the runs train and "
                      "forgetting and the base SVDs are computed: auto (a visible GPU, else the CPU), cpu, or "
                      "cuda.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json's claims as one JSON document.")] = False,
) -> None:
    """Run the paper's experiments on the embedded models (offline) and write one report: report.html and
    summary.json, whose `claims` list says, for each finding of the paper, whether it held here and the numbers."""
    from intrudim.experiments.demo import plan_text, run_demo
    from intrudim.experiments.demo_config import DemoConfig, parse_seeds
    from intrudim.train.devices import resolve_training_device

    stdout, stderr = Console(), Console(stderr=True)

    def work() -> None:
        config = DemoConfig(quick=quick, seeds=parse_seeds(seeds) if seeds is not None else None)
        where = resolve_training_device(device)
        stderr.print(plan_text(config, where), highlight=False)
        summary = run_demo(config, out, progress=True, console=stderr, workers=workers, device=where)
        if summary["reused"]:
            stderr.print(f"reused from an earlier demo in {out}: {len(summary['reused'])} finished runs and "
                         f"measurements ({', '.join(summary['reused'])})", highlight=False, soft_wrap=True)  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps({"claims": summary["claims"], "report": summary["report"]}, indent=2) + "\n")
            return
        table = Table(box=box.SIMPLE_HEAD, title="The paper's claims, measured", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("claim")
        table.add_column("result", no_wrap=True)
        styles = {"held": "green", "fragile": "yellow", "not held": "red", "not measured": "dim"}
        for number, claim in enumerate(summary["claims"], start=1):
            table.add_row(str(number), f"{claim['id']} ({claim['figure']})",
                          f"[{styles[claim['verdict']]}]{claim['result']}[/]")  # fmt: skip
        stdout.print(table)
        seeds_text = ", ".join(map(str, summary["seeds"]))
        stdout.print(f"{summary['held']} held, {summary['fragile']} fragile, {summary['not_held']} not held, "
                     f"{summary['not_measured']} not measured (seed{'s' if len(summary['seeds']) > 1 else ''} "
                     f"{seeds_text}) in {summary['seconds']['total']:.0f} s.")  # fmt: skip
        stdout.print(f"report: [bold]{summary['report']}[/]  (numbers: {Path(summary['report']).parent / 'summary.json'})",
                     soft_wrap=True)  # a long path stays on one line, whole

    run_guarded(work)


def register(app: typer.Typer) -> None:
    app.command("demo", cls=PlainHelpCommand)(demo_command)

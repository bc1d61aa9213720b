"""CLI command ``regime``: forgetting and repair in the paper's regime, over seeds (docs/regime.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from intrudim.cli.common import PlainHelpCommand, run_guarded
from intrudim.errors import IntrudimError


def _lambdas(text: str) -> tuple[float, ...]:
    from intrudim.repair.sweep_result import parse_lambdas

    try:
        return parse_lambdas(text)
    except IntrudimError as error:
        raise IntrudimError(str(error).replace("--sweep", "--lambdas")) from None


def _span(values: list[float]) -> str:
    low, high = f"{min(values):.3g}", f"{max(values):.3g}"
    return f"×{low}" if low == high else f"×{low}–{high}"


METHODS = {"none": "intruders", "non-intruder": "non-intruders", "shrink": "shrink"}


def _print_summary(summary: dict[str, Any], console: Console) -> None:
    """The rule's outcome, forgetting per method over seeds with its regime, the recovered fractions, the questions."""
    for outcome in summary["rule_outcome"].values():
        console.print(f"rule: {outcome['outcome']}", highlight=False, soft_wrap=True)
    methods = Table(box=box.SIMPLE_HEAD, title="Forgetting: tuned − base loss on the text (nats/token), over seeds",
                    title_justify="left")  # fmt: skip
    for column in ("run", "mean", "95% (seeds)", "tuned/base ppl", "accuracy per seed"):
        methods.add_column(column, justify="left" if column == "run" else "right")
    for run, method in summary["methods"].items():
        rows = method["per_seed"].values()
        low, high = method["ci95_over_seeds"]
        ratios = [r["perplexity_ratio"] for r in rows if r["perplexity_ratio"] is not None]
        methods.add_row(run, f"{method['mean_delta']:+.4f}", f"[{low:+.3f}, {high:+.3f}]",
                        _span(ratios) if ratios else "—",
                        " ".join("—" if r["accuracy"] is None else f"{r['accuracy']:.2f}" for r in rows))  # fmt: skip
    console.print(methods)
    console.print("(each seed's Δ with its interval over windows: report.html and summary.json)", style="dim",
                  highlight=False)  # fmt: skip
    repair = Table(box=box.SIMPLE_HEAD, title="Share of forgetting recovered", title_justify="left")
    repair.add_column("run")
    repair.add_column("scaled by λ")
    lambdas = sorted({lam for t in summary["recovered"].values() for m in t.values() for lam in m if lam != "1"}, key=float)
    for lam in lambdas:
        repair.add_column(f"λ={lam}", justify="right")
    for run, table in summary["recovered"].items():
        for method, by_lambda in table.items():
            repair.add_row(run, METHODS[method], *("—" if by_lambda[lam]["mean"] is None
                                                   else f"{by_lambda[lam]['mean']:+.3f}" for lam in lambdas))  # fmt: skip
    console.print(repair)
    console.print("(mean over seeds of (tuned − repaired loss) / (tuned − base loss); —: not swept, the run had no "
                  "intruders or did not forget)", style="dim", highlight=False)  # fmt: skip
    claims = Table(box=box.SIMPLE_HEAD, title="The questions", title_justify="left")
    claims.add_column("question")
    claims.add_column("result", no_wrap=True)
    claims.add_column("regime")
    styles = {"held": "green", "fragile": "yellow", "not held": "red", "not measured": "dim"}
    for claim in summary["claims"]:
        destructive = claim["regime"]["destructive_seeds"]
        regime = f"destructive in seeds {', '.join(map(str, destructive))}" if destructive else "non-destructive"
        claims.add_row(claim["id"], f"[{styles[claim['verdict']]}]{claim['result']}[/]", regime)
    console.print(claims)
    console.print(f"{summary['held']} held, {summary['fragile']} fragile, {summary['not_held']} not held, "
                  f"{summary['not_measured']} not measured in {summary['seconds']['total']:.0f} s (regime: tuned / base "
                  f"perplexity on the text, destructive above 2).")  # fmt: skip
    console.print(f"report: [bold]{summary['report']}[/]  (numbers: {Path(summary['report']).parent / 'summary.json'})",
                  soft_wrap=True)  # fmt: skip


def regime_command(
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs, measurements, summary.json and report.html; "
                   "a second run with the same settings reuses what is finished (and adds seeds).")] = Path("regime_out"),
    model: Annotated[str, typer.Option("--model", help="A causal LM: 'smollm2' (embedded) or a local folder.")] = "smollm2",
    task: Annotated[str, typer.Option("--task", help="A task whose answer is running text (see `intrudim tasks`).")] = "review-summary",
    text: Annotated[str, typer.Option("--text", help="Forgetting text: news, wiki, a file, a folder of .txt or a "
                    "saved dataset.")] = "news",
    seeds: Annotated[str, typer.Option("--seeds", metavar="S[,S...]", help="Seeds; the learning rates are chosen "
                     "on the first.")] = "0,1,2",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Step budget of every run (a run stops earlier at the "
                     "target accuracy).")] = 200,
    evaluations: Annotated[int, typer.Option("--evaluations", min=1, help="Held-out evaluations per run (every "
                           "⌈steps/N⌉ steps).")] = 5,
    lrs: Annotated[str, typer.Option("--lrs", metavar="LR[,LR...]", help="LoRA's candidate α·η, tried in ascending "
                   "order on the first seed.")] = "1e-3,2e-3,4e-3,8e-3,1.6e-2",
    full_lrs: Annotated[str, typer.Option("--full-lrs", metavar="LR[,LR...]", help="Full fine-tuning's candidate η, "
                        "tried the same way.")] = "1e-5,3e-5,1e-4",
    target_accuracy: Annotated[float, typer.Option("--target-accuracy", help="The task's target held-out accuracy: "
                               "the rule's and every run's stopping point.")] = 0.9,
    high_rank: Annotated[int, typer.Option("--high-rank", help="The higher LoRA rank compared with r=1 (α = 2r).")] = 8,
    lambdas: Annotated[str, typer.Option("--lambdas", metavar="λ[,λ...]", help="The repair sweep's λ values (1 is "
                       "always added).")] = "0,0.25,0.5,0.75,1",
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens of --text scored for "
                          "forgetting.")] = 4096,
    max_examples: Annotated[int, typer.Option("--max-examples", min=1, help="Held-out task examples (target "
                            "accuracy and repair sweep).")] = 100,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Training runs side by side in worker processes "
                       "(the same numbers as one after the other); 1: here, one after the other.")] = 2,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a regime experiment in --out made with "
                         "other settings.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json's claims and aggregates as one JSON "
                       "document.")] = False,
) -> None:
    """Forgetting and repair in the paper's regime: LoRA r=1, a higher rank and full fine-tuning of a causal LM on a
    running-text task, trained to equal accuracy at learning rates chosen by a written rule, over seeds; each run's
    forgetting and regime, the repair λ-sweep against both controls, each question held in n of N seeds."""
    from intrudim.experiments.demo_config import parse_seeds
    from intrudim.experiments.regime import run_regime
    from intrudim.experiments.regime_config import RegimeConfig
    from intrudim.train.lr_map import parse_lrs

    stdout, stderr = Console(), Console(stderr=True)

    def work() -> None:
        config = RegimeConfig(
            model=model, task=task, text=text, seeds=parse_seeds(seeds), steps=steps, evaluations=evaluations,
            lrs=parse_lrs(lrs), full_lrs=parse_lrs(full_lrs, "--full-lrs"), target_accuracy=target_accuracy,
            high_rank=high_rank, lambdas=_lambdas(lambdas), max_tokens=max_tokens, max_examples=max_examples,
        )  # fmt: skip
        summary = run_regime(config, out, overwrite=overwrite, progress=True, console=stderr, workers=workers)
        if summary["reused"]:
            stderr.print(f"reused from an earlier run in {out}: {', '.join(summary['reused'])}", highlight=False,
                         soft_wrap=True)  # fmt: skip
        if as_json:
            keys = ("rule", "rule_outcome", "chosen", "recipe", "methods", "recovered", "claims", "report")
            sys.stdout.write(json.dumps({key: summary[key] for key in keys}, indent=2) + "\n")
            return
        _print_summary(summary, stdout)

    run_guarded(work)


def register(app: typer.Typer) -> None:
    app.command("regime", cls=PlainHelpCommand)(regime_command)

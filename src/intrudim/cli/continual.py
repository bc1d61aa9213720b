"""CLI command ``continual`` (Fig. 8 / 17, v2): parse, build a ContinualConfig, run, print with rich.

The recipe options are those of ``train`` and ``sweep`` (cli/options.py's shared list, the same defaults),
except the ones a continual run sets per stage (``--task``, ``--track``) or does not have (``--overwrite``:
an existing --out is never replaced; ``--figures``: the figures are always written).
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from intrudim.cli.common import PlainHelpCommand, run_guarded
from intrudim.cli.options import RECIPE_OPTIONS, CacheDir, Epsilon, K, option, recipe_config

# Shared recipe options (cli/options.py) that continual does not take, or takes as its own option.
_NOT_TAKEN = {"task", "track", "overwrite", "figures", "k", "epsilon", "resume", "quiet", "cache_dir"}

Tasks = Annotated[str, typer.Option("--tasks", help="Comma-separated tasks, trained in this order (see `intrudim tasks`).")]
Ranks = Annotated[str, typer.Option("--ranks", help="Comma-separated LoRA ranks; 'full' = full fine-tuning.")]
Method = Annotated[str, typer.Option("--method", help="LoRA variant of the rank entries: lora or lora-b-only.")]
Out = Annotated[Path, typer.Option("--out", help="Directory to create (or to continue with --resume).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out from its last finished stage.")]
KeepWeights = Annotated[bool, typer.Option("--keep-weights/--last-weights-only", help="Keep every stage's merged weights (default), or only the last stage's.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress on stderr.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print continual.json on stdout instead of the table.")]


def _own_options() -> list[inspect.Parameter]:
    # the keyword-only option parameters that train and sweep build
    return [
        option("out", Out), option("tasks", Tasks, "sentiment,topic,pair-match,agreement"),
        option("ranks", Ranks, "1,8,64,full"), option("method", Method, "lora"), option("k", K, 10),
        option("epsilon", Epsilon, 0.5), option("resume", Resume, False), option("keep_weights", KeepWeights, True),
        option("cache_dir", CacheDir, None), option("quiet", Quiet, False), option("as_json", AsJson, False),
    ]  # fmt: skip


def _recipe_options() -> list[inspect.Parameter]:
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
            for name, annotation, default in RECIPE_OPTIONS if name not in _NOT_TAKEN]  # fmt: skip


def _run(*, out: Path, tasks: str, ranks: str, method: str, k: int, epsilon: float, resume: bool, keep_weights: bool,
         cache_dir: Path | None, quiet: bool, as_json: bool, **recipe: Any) -> None:  # fmt: skip
    def work() -> None:
        from intrudim.experiments.continual import ContinualConfig, run_continual
        from intrudim.train.sweep import parse_ranks

        parsed_ranks = parse_ranks(ranks)
        train = recipe_config(task="sentiment", **recipe)  # the task (and method, rank) is set per stage
        config = ContinualConfig(tasks=tuple(t for t in tasks.split(",")), ranks=parsed_ranks, method=method,
                                 train=train, k=k, epsilon=epsilon)  # fmt: skip
        result = run_continual(config, out, resume=resume, progress=not quiet, cache_dir=cache_dir,
                               keep_weights=keep_weights, device=str(recipe["device"]))  # fmt: skip
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
            return
        _print(result)

    run_guarded(work)


def _print(result: Any) -> None:
    console = Console()
    tasks = list(result.config.tasks)
    table = Table(title=f"continual: accuracy after each stage; intruders vs the base (k={result.config.k}, "
                        f"ε={result.config.epsilon})", box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    table.add_column("after stage", no_wrap=True)
    for task in tasks:
        table.add_column(task, justify="right", no_wrap=True)
    table.add_column("intr.", justify="right")
    table.add_column("energy", justify="right")
    for label, method in result.methods.items():
        for stage in method.stages:
            accuracies = ["-" if stage.accuracies.get(t) is None else f"{stage.accuracies[t]:.3f}" for t in tasks]
            name = f"{label}: base" if stage.stage == 0 else f"  {stage.stage} {stage.task}"
            table.add_row(name, *accuracies, str(stage.intruders), f"{100 * stage.energy_share:.2f}%",
                          end_section=stage.stage == len(tasks))  # fmt: skip
    console.print(table)
    for label, method in result.methods.items():
        mean = method.mean_forgetting
        console.print(f"{label}: intruders by stage {' → '.join(map(str, method.intruders))}"
                      + ("" if mean is None else f"; mean forgetting {mean:+.3f}"), highlight=False)  # fmt: skip
    console.print("Forgetting: a task's accuracy right after its own stage (its baseline) minus its accuracy after "
                  "the last stage. '-': not measured (an encoder's task has no head before its stage). energy: "
                  "the intruders' mean share of a matrix's energy.", highlight=False)  # fmt: skip
    names = ", ".join(str(path.relative_to(result.out_dir)) for path in result.paths.values())
    console.print(f"Outputs in {result.out_dir}: {names}.", highlight=False)


def _continual_command() -> Any:
    parameters = [*_own_options(), *_recipe_options()]

    def continual_command(**options: Any) -> None:
        _run(**options)

    continual_command.__doc__ = (
        "Continual learning (Fig. 8): train the tasks in order for every rank (LoRA merged after each stage, "
        "each task keeping its own head); after every stage, every task's accuracy and the intruders of the "
        "weights against the original base. Every recipe option of `train` applies to every stage."
    )
    continual_command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    continual_command.__annotations__ = {p.name: p.annotation for p in parameters}
    return continual_command


def register(app: typer.Typer) -> None:
    """Add ``continual`` to ``app``."""
    app.command("continual", cls=PlainHelpCommand)(_continual_command())

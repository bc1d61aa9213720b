"""CLI commands ``train``, ``tasks`` and ``sweep``: parse, build a TrainConfig, call, print with rich.

``train`` and ``sweep`` share one option set (:data:`intrudim.cli.options.RECIPE_OPTIONS`): every recipe option of a run, with
the same default, exists in both; each command adds only its own (``--method``/``--rank``; ``--ranks``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from intrudim.cli.common import PlainHelpCommand
from intrudim.cli.options import Out, option, recipe_command, recipe_config
from intrudim.cli.output import terminal_table
from intrudim.errors import IntrudimError
from intrudim.spectral.prediction import DEFAULT_PRESSURE_THRESHOLD


def _stderr() -> Console:
    return Console(stderr=True)


def _fail(error: IntrudimError) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/bold red] [red]{error}[/red]", highlight=False)
    return typer.Exit(2)


def _train(*, out: Path, method: str, rank: int, **options: object) -> None:
    from intrudim.train.engine import train

    try:
        config = recipe_config(method=method, rank=rank, **options)
        result = train(config, out, resume=bool(options["resume"]), overwrite=bool(options["overwrite"]),
                       progress=not options["quiet"], cache_dir=options["cache_dir"],  # type: ignore[arg-type]
                       figures=bool(options["figures"]), device=str(options["device"]))  # fmt: skip
    except IntrudimError as error:
        raise _fail(error) from None
    console = _stderr()
    colour = "yellow" if result.reached_target is False else "green"
    console.print(f"[{colour}]{result.message}[/{colour}]", highlight=False)
    if result.final_intruders is not None:
        console.print(f"Intruder dimensions (k={options['k']}, ε={options['epsilon']}, summed over matrices): "
                      f"{result.final_intruders}")  # fmt: skip
    if options["figures"] and result.final_intruders is not None and not result.checkpoints:
        console.print("No intruders-over-steps figure: the run had no checkpoints (--checkpoint-every N tracks "
                      "intruders every N steps).", highlight=False)  # fmt: skip
    console.print(f"Run directory: {result.run_dir}", highlight=False)


train_command = recipe_command("train_command", [
    option("out", Out),
    option("method", Annotated[str, typer.Option("--method", help="full, lora or lora-b-only (Fig. 10).")], "lora"),
    option("rank", Annotated[int, typer.Option("--rank", help="LoRA rank r.")], 8),
], _train, "Fine-tune a model on a task: full, LoRA or B-only LoRA, with the paper's recipe (App. A).")  # fmt: skip


def tasks_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON on stdout.")] = False,
    describe: Annotated[bool, typer.Option("--describe", help="Also show each task's source and description.")] = False,
) -> None:
    """List the tasks: name, kind, classes, sizes, and whether they work offline."""
    from intrudim.tasks import list_tasks

    infos = list_tasks()
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in infos], indent=2))
        return
    table = terminal_table("intrudim tasks")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "classes", "train", "valid.", "offline") + (("source", "description") if describe else ()):
        table.add_column(column, justify="right" if column in ("classes", "train", "valid.") else "left")
    for info in infos:
        row = [info.name, info.kind.replace("_", " "), str(info.num_classes), str(info.train_size or "-"),
               str(info.validation_size or "-"), "yes" if info.offline else "--data-path"]  # fmt: skip
        table.add_row(*row, *((info.source, info.description) if describe else ()))
    Console().print(table)
    if not describe:
        Console().print("--describe adds each task's source and description; --json has everything.", highlight=False)


def _ray_options(ray: bool, ray_address: str | None, cpus_per_run: int, gpus_per_run: float):  # -> RaySweepOptions | None
    from intrudim.train.ray_sweep import RaySweepOptions

    if ray and ray_address is not None:
        raise IntrudimError("Give --ray (a local Ray runtime) or --ray-address HOST:PORT (a cluster), not both.")
    if not ray and ray_address is None:
        if cpus_per_run != 1 or gpus_per_run:
            raise IntrudimError("--ray-cpus-per-run and --ray-gpus-per-run size Ray tasks: add --ray or --ray-address.")
        return None
    return RaySweepOptions(address=ray_address, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run)


def _sweep(*, out: Path, ranks: str, method: str, lrs: str | None, full_lrs: str, forgetting_text: str,
           forgetting_tokens: int, ray: bool, ray_address: str | None, ray_cpus_per_run: int, ray_gpus_per_run: float,
           **options: object) -> None:  # fmt: skip
    from dataclasses import replace

    from intrudim.train.lr_map import MAP_FORGETTING, lr_rank_map, parse_lrs
    from intrudim.train.sweep import parse_ranks, rank_sweep

    try:
        if method not in ("lora", "lora-b-only"):
            raise IntrudimError(f"--method {method!r}: a sweep's rank runs use lora or lora-b-only; add 'full' to --ranks.")
        config = recipe_config(method=method, **options)
        engine = _ray_options(ray, ray_address, ray_cpus_per_run, ray_gpus_per_run)
        common = dict(resume=bool(options["resume"]), overwrite=bool(options["overwrite"]),
                      progress=not options["quiet"], figures=bool(options["figures"]),
                      cache_dir=options["cache_dir"], ray=engine, device=str(options["device"]))  # fmt: skip
        if lrs is not None:
            measured = None
            if forgetting_text.strip().lower() != "none":
                measured = replace(MAP_FORGETTING, text=forgetting_text, max_tokens=forgetting_tokens)
            grid = lr_rank_map(config, out, parse_lrs(lrs), parse_ranks(ranks),
                               full_lrs=parse_lrs(full_lrs, "--full-lrs"), forgetting=measured, **common)  # type: ignore[arg-type]  # fmt: skip
        else:
            result = rank_sweep(config, out, parse_ranks(ranks), **common)  # type: ignore[arg-type]
    except IntrudimError as error:
        raise _fail(error) from None
    if lrs is not None:
        _print_map(grid, Console(stderr=True))
        return
    table = terminal_table(f"rank sweep: {options['task']}")
    for column in ("run", "steps", "accuracy", "reached target", "intruders"):
        table.add_column(column)
    for row in result.rows():
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(row["run"], str(row["steps"]), accuracy, str(row["reached_target"]), str(row["intruders"]))
    Console(stderr=True).print(table)
    if result.prediction is not None:
        _print_prediction(result.prediction, Console(stderr=True))
    Console(stderr=True).print(f"Sweep directory: {result.out_dir}", highlight=False)


def _print_map(grid, console: Console) -> None:  # noqa: ANN001 - an LrMapResult
    """One row per run of the map, then where intruders begin and the recipe the rule picks."""
    from intrudim.evaluate.forgetting_config import MEASURE_NAMES, MEASURE_UNITS
    from intrudim.train.lr_map import choose_lr

    about = grid.forgetting
    unit = "" if about is None else (f" ({MEASURE_NAMES.get(about['measure'], about['measure'])} on "
                                     f"'{about['text'].get('source', 'text')}', {MEASURE_UNITS.get(about['measure'], 'nats')})")  # fmt: skip
    table = terminal_table("learning rate × rank map")
    for column in ("run", "α·η / η", "steps", "accuracy", "intruders", f"forgetting{unit}"):
        table.add_column(column)
    for cell in grid.cells:
        forgetting = "-" if cell.forgetting is None else f"{cell.forgetting:+.3f}"
        if cell.forgetting_ci95 is not None:
            forgetting += f" [{cell.forgetting_ci95[0]:+.3f}, {cell.forgetting_ci95[1]:+.3f}]"
        table.add_row("full" if cell.is_full else f"r={cell.rank}", f"{cell.lr:g}", str(cell.steps),
                      "-" if cell.accuracy is None else f"{cell.accuracy:.3f}", str(cell.intruders), forgetting)  # fmt: skip
    console.print(table)
    first = grid.first_intruder_lr()
    console.print("First α·η with an intruder: " + ", ".join(
        f"r={rank} {'none in the map' if lr is None else f'{lr:g}'}" for rank, lr in first.items()), highlight=False)  # fmt: skip
    chosen, rule = choose_lr(grid)
    console.print(f"Recipe rule ({rule}): {'none reaches it' if chosen is None else f'α·η = {chosen:g}'}", highlight=False)
    console.print(f"Map directory: {grid.out_dir} (map.json, figures/lr_rank_map.png)", highlight=False)


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_prediction(report: dict[str, object], console: Console) -> None:
    """The prediction report in a few lines: default and fitted threshold, then where it fails."""

    def line(label: str, score: dict[str, object]) -> str:
        return (f"{label} {score['threshold']:.3g}: precision {_fmt(score['precision'])}, recall "
                f"{_fmt(score['recall'])} ({score['predicted_and_found']} of {score['predicted']} predicted, "
                f"{score['found']} with intruders)")  # fmt: skip

    console.print(f"Intruder pressure σ₁(ΔW)/σ_k(W₀) as a prediction, over {report['observations']} tracked matrices "
                  f"of {report['runs']} run{'s' if report['runs'] != 1 else ''}:", highlight=False)  # fmt: skip
    console.print("  " + line("threshold", report["default"]), highlight=False)  # type: ignore[arg-type]
    if report["fitted"] is not None:
        console.print("  " + line("fitted   ", report["fitted"]) + " (in-sample)", highlight=False)  # type: ignore[arg-type]
    held_out = report.get("held_out")
    if held_out is not None:
        low, high = held_out["thresholds"]  # type: ignore[index]
        console.print(f"  held out (leave one run out, thresholds {low:.3g}–{high:.3g}): "
                      f"precision {_fmt(held_out['precision'])}, recall {_fmt(held_out['recall'])}",  # type: ignore[index]
                      highlight=False)  # fmt: skip
    for note in report["failure_notes"]:  # type: ignore[attr-defined]
        console.print(f"  {note}", highlight=False)


def predict_command(
    paths: Annotated[list[Path], typer.Argument(help="Run folders (`train --out`) and sweep folders (`sweep --out`).")],
    threshold: Annotated[float, typer.Option("--threshold", help="The threshold to score (the default prediction).")] = DEFAULT_PRESSURE_THRESHOLD,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON on stdout.")] = False,
) -> None:
    """How well intruder pressure σ₁(ΔW)/σ_k(W₀) predicts intruders over training runs: precision and recall at
    --threshold, the refitted threshold, and where the prediction fails (from the runs' tracked checkpoints)."""
    from intrudim.train.prediction import observations, prediction_report

    try:
        if not threshold > 0:
            raise IntrudimError(f"--threshold must be > 0; got {threshold}.")
        tracked = observations(paths)
        if not tracked:
            raise IntrudimError(
                "No tracked intruder pressure in these runs: train with tracking on (the default; not --no-track) "
                "and checkpoints (--checkpoint-every N); runs trained before intrudim recorded pressure have none."
            )
    except IntrudimError as error:
        raise _fail(error) from None
    report = prediction_report(tracked, threshold)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_prediction(report, Console(stderr=True))


sweep_command = recipe_command("sweep_command", [
    option("out", Annotated[Path, typer.Option("--out", help="Sweep directory to create (one run folder per rank).")]),
    option("ranks", Annotated[str, typer.Option("--ranks", help="Comma-separated ranks; 'full' = full fine-tuning.")],
            "1,2,4,8,16,64,full"),
    option("method", Annotated[str, typer.Option("--method", help="LoRA variant of the rank runs: lora or lora-b-only.")],
            "lora"),
    option("lrs", Annotated[str | None, typer.Option("--lrs", metavar="A,B,...", help="A learning-rate × rank map: "
                                                      "the rank sweep once per LoRA α·η in this list (e.g. --lrs "
                                                      "1e-3,3e-3,1e-2), each run's forgetting measured, map.json "
                                                      "and figures/lr_rank_map.png.")], None),
    option("full_lrs", Annotated[str, typer.Option("--full-lrs", metavar="A,B,...", help="With --lrs: full "
                                                    "fine-tuning's own η values (it has no α).")], "1e-4"),
    option("forgetting_text", Annotated[str, typer.Option("--forgetting-text", help="With --lrs: the text of each "
                                                           "run's forgetting (wiki, news, a file or folder; 'none' to "
                                                           "skip).")], "news"),
    option("forgetting_tokens", Annotated[int, typer.Option("--forgetting-tokens", help="With --lrs: tokens of that "
                                                             "text.")], 4096),
    option("ray", Annotated[bool, typer.Option("--ray", help="Run the runs as tasks on a local Ray runtime (pip install "
                                                               "'intrudim[ray]').")], False),
    option("ray_address", Annotated[str | None, typer.Option("--ray-address", metavar="HOST:PORT",
                                                              help="Run the runs on an existing Ray cluster.")], None),
    option("ray_cpus_per_run", Annotated[int, typer.Option("--ray-cpus-per-run", help="CPUs (threads) Ray gives each "
                                                            "run.")], 1),
    option("ray_gpus_per_run", Annotated[float, typer.Option("--ray-gpus-per-run", help="GPUs Ray gives each run (0: "
                                                              "CPU only; 1: one GPU each).")], 0.0),
], _sweep, "The paper's rank sweep: one run per LoRA rank plus full fine-tuning, at equal target accuracy; every "
           "recipe option of `train` applies to every run.")  # fmt: skip


def register(app: typer.Typer) -> None:
    """Add ``train``, ``tasks``, ``sweep`` and ``predict`` to ``app``."""
    app.command("train", cls=PlainHelpCommand)(train_command)
    app.command("tasks", cls=PlainHelpCommand)(tasks_command)
    app.command("sweep", cls=PlainHelpCommand)(sweep_command)
    app.command("predict", cls=PlainHelpCommand)(predict_command)

"""CLI commands ``train``, ``tasks`` and ``sweep``: parse, build a TrainConfig, call, print with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from intrudim.errors import IntrudimError

Model = Annotated[str, typer.Option("--model", help="'minilm' or 'smollm2' (embedded) or a local Hugging Face model folder.")]
ObjectiveOpt = Annotated[str, typer.Option("--objective", help="auto (causal LMs as language models, others with a classification head), classification, or causal-lm.")]
TaskName = Annotated[str, typer.Option("--task", help="Task name; see `intrudim tasks`.")]
Out = Annotated[Path, typer.Option("--out", help="Run directory to create.")]
Alpha = Annotated[float | None, typer.Option("--alpha", help="Fixed LoRA α (implies --alpha-rule fixed unless rslora).")]
AlphaRuleOpt = Annotated[str, typer.Option("--alpha-rule", help="2r (paper default), fixed (α=8 or --alpha), rslora.")]
Lr = Annotated[float | None, typer.Option("--lr", help="Learning rate η; default: total-lr/α for LoRA, 1e-5 full (1e-4 on minilm).")]
TotalLr = Annotated[float, typer.Option("--total-lr", help="LoRA 'total learning rate' α·η (App. A).")]
OtherLr = Annotated[float | None, typer.Option("--other-lr", help="LoRA methods: η of biases, LayerNorms and head (default: same η).")]
ScheduleOpt = Annotated[str, typer.Option("--schedule", help="linear (App. A: decay to 0 after warm-up) or constant after warm-up.")]
MaxGradNorm = Annotated[float, typer.Option("--max-grad-norm", help="Clip the gradient norm (HF Trainer's default 1.0); 0: no clipping.")]
Epochs = Annotated[float, typer.Option("--epochs", help="Maximum epochs (App. A: 5).")]
Steps = Annotated[int | None, typer.Option("--steps", help="Maximum optimizer steps; overrides --epochs.")]
Target = Annotated[float | None, typer.Option("--target-accuracy", help="Stop when held-out accuracy reaches this.")]
EvalEvery = Annotated[int, typer.Option("--eval-every", help="Evaluate every N steps.")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", help="Checkpoint (and track intruders) every N steps; 0: none.")]
Fraction = Annotated[float, typer.Option("--train-fraction", help="Share of the training split to use (Fig. 12).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of data, head and adapter initialisation, and data order.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Global batch size (App. A: 16).")]
MaxLength = Annotated[int, typer.Option("--max-length", help="Maximum tokens per input (paper: 512).")]
DataPath = Annotated[Path | None, typer.Option("--data-path", help="Local data for the paper's tasks.")]
MaxTrain = Annotated[int | None, typer.Option("--max-train-examples", help="Cap (or, for generated tasks, size) of the train split.")]
MaxValidation = Annotated[int | None, typer.Option("--max-validation-examples", help="Cap/size of the validation split.")]
K = Annotated[int, typer.Option("--k", help="Top-k singular vectors checked for intruders.")]
Epsilon = Annotated[float, typer.Option("--epsilon", help="Cosine threshold ε for intruders.")]
Track = Annotated[bool, typer.Option("--track/--no-track", help="Track intruders at each checkpoint.")]
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Base-SVD cache folder (default RUN_DIR/svd_cache).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
Figures = Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures into the run directory.")]


def _stderr() -> Console:
    return Console(stderr=True)


def _fail(error: IntrudimError) -> typer.Exit:
    _stderr().print(f"[bold red]error:[/bold red] [red]{error}[/red]", highlight=False)
    return typer.Exit(2)


def _config(**fields: object):  # -> TrainConfig
    from intrudim.train.config import TrainConfig

    steps = fields.pop("steps")
    checkpoint_every = fields.pop("checkpoint_every")
    if fields.get("max_grad_norm") == 0:
        fields["max_grad_norm"] = None
    data_path = fields.pop("data_path")
    return TrainConfig(
        max_steps=steps, checkpoint_every=checkpoint_every or None,
        data_path=None if data_path is None else str(data_path), **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def train_command(
    out: Out,
    model: Model = "minilm",
    task: TaskName = "sentiment",
    objective: ObjectiveOpt = "auto",
    method: Annotated[str, typer.Option("--method", help="full, lora or lora-b-only (Fig. 10).")] = "lora",
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank r.")] = 8,
    alpha: Alpha = None,
    alpha_rule: AlphaRuleOpt = "2r",
    lr: Lr = None,
    total_lr: TotalLr = 2.4e-3,
    other_lr: OtherLr = None,
    schedule: ScheduleOpt = "linear",
    max_grad_norm: MaxGradNorm = 1.0,
    epochs: Epochs = 5.0,
    steps: Steps = None,
    target_accuracy: Target = None,
    eval_every: EvalEvery = 50,
    checkpoint_every: CheckpointEvery = 100,
    train_fraction: Fraction = 1.0,
    seed: Seed = 42,
    batch_size: BatchSize = 16,
    max_length: MaxLength = 64,
    data_path: DataPath = None,
    max_train_examples: MaxTrain = None,
    max_validation_examples: MaxValidation = None,
    k: K = 10,
    epsilon: Epsilon = 0.5,
    track: Track = True,
    cache_dir: CacheDir = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    figures: Figures = True,
) -> None:
    """Fine-tune a model on a task: full, LoRA or B-only LoRA, with the paper's recipe (App. A)."""
    from intrudim.train.engine import train

    try:
        config = _config(
            model=model, task=task, objective=objective, method=method, rank=rank, alpha=alpha, alpha_rule=alpha_rule, lr=lr,
            total_lr=total_lr, other_lr=other_lr, schedule=schedule, max_grad_norm=max_grad_norm, epochs=epochs,
            steps=steps, target_accuracy=target_accuracy, eval_every=eval_every,
            checkpoint_every=checkpoint_every, train_fraction=train_fraction, seed=seed, batch_size=batch_size,
            max_length=max_length, data_path=data_path, max_train_examples=max_train_examples,
            max_validation_examples=max_validation_examples, intruder_k=k, intruder_epsilon=epsilon,
            track_intruders=track,
        )  # fmt: skip
        result = train(config, out, resume=resume, overwrite=overwrite, progress=not quiet, cache_dir=cache_dir,
                       figures=figures)
    except IntrudimError as error:
        raise _fail(error) from None
    console = _stderr()
    colour = "yellow" if result.reached_target is False else "green"
    console.print(f"[{colour}]{result.message}[/{colour}]", highlight=False)
    if result.final_intruders is not None:
        console.print(f"Intruder dimensions (k={k}, ε={epsilon}, summed over matrices): {result.final_intruders}")
    console.print(f"Run directory: {result.run_dir}", highlight=False)


def tasks_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print the registry as JSON on stdout.")] = False,
) -> None:
    """List the tasks: name, kind, classes, sizes, and whether they work offline."""
    from intrudim.tasks import list_tasks

    infos = list_tasks()
    if as_json:
        typer.echo(json.dumps([info.to_json() for info in infos], indent=2))
        return
    table = Table(title="intrudim tasks")
    table.add_column("name", no_wrap=True)
    for column in ("kind", "classes", "train", "validation", "offline", "source", "description"):
        table.add_column(column)
    for info in infos:
        table.add_row(
            info.name, info.kind, str(info.num_classes), str(info.train_size or "-"), str(info.validation_size or "-"),
            "yes" if info.offline else "needs --data-path", info.source, info.description,
        )  # fmt: skip
    Console().print(table)


def sweep_command(
    out: Out,
    model: Model = "minilm",
    task: TaskName = "sentiment",
    objective: ObjectiveOpt = "auto",
    ranks: Annotated[str, typer.Option("--ranks", help="Comma-separated ranks; 'full' = full fine-tuning.")] = "1,2,4,8,16,64,full",
    method: Annotated[str, typer.Option("--method", help="LoRA variant of the rank runs: lora or lora-b-only.")] = "lora",
    alpha: Alpha = None,
    alpha_rule: AlphaRuleOpt = "2r",
    total_lr: TotalLr = 2.4e-3,
    other_lr: OtherLr = None,
    schedule: ScheduleOpt = "linear",
    max_grad_norm: MaxGradNorm = 1.0,
    epochs: Epochs = 5.0,
    steps: Steps = None,
    target_accuracy: Target = None,
    eval_every: EvalEvery = 50,
    checkpoint_every: CheckpointEvery = 0,
    train_fraction: Fraction = 1.0,
    seed: Seed = 42,
    max_length: MaxLength = 64,
    data_path: DataPath = None,
    k: K = 10,
    epsilon: Epsilon = 0.5,
    resume: Resume = False,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    figures: Figures = True,
) -> None:
    """The paper's rank sweep: one run per LoRA rank plus full fine-tuning, at equal target accuracy."""
    from intrudim.train.sweep import parse_ranks, rank_sweep

    try:
        if method not in ("lora", "lora-b-only"):
            raise IntrudimError(f"--method {method!r}: a sweep's rank runs use lora or lora-b-only; add 'full' to --ranks.")
        config = _config(
            model=model, task=task, objective=objective, method=method, alpha=alpha, alpha_rule=alpha_rule, total_lr=total_lr,
            other_lr=other_lr, schedule=schedule, max_grad_norm=max_grad_norm, epochs=epochs, steps=steps,
            target_accuracy=target_accuracy, eval_every=eval_every,
            checkpoint_every=checkpoint_every, train_fraction=train_fraction, seed=seed, max_length=max_length,
            data_path=data_path, intruder_k=k, intruder_epsilon=epsilon,
        )  # fmt: skip
        result = rank_sweep(config, out, parse_ranks(ranks), resume=resume, overwrite=overwrite, progress=not quiet,
                            figures=figures)
    except IntrudimError as error:
        raise _fail(error) from None
    table = Table(title=f"rank sweep: {task}")
    for column in ("run", "steps", "accuracy", "reached target", "intruders"):
        table.add_column(column)
    for row in result.rows():
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        table.add_row(row["run"], str(row["steps"]), accuracy, str(row["reached_target"]), str(row["intruders"]))
    Console(stderr=True).print(table)
    Console(stderr=True).print(f"Sweep directory: {result.out_dir}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``tasks`` and ``sweep`` to ``app``."""
    app.command("train")(train_command)
    app.command("tasks")(tasks_command)
    app.command("sweep")(sweep_command)

"""The recipe options ``train``, ``sweep`` and ``continual`` share: one list (:data:`RECIPE_OPTIONS`), so that
a recipe option (docs/train.md: "apply to every run") exists with the same default in every command, their option
types, and the TrainConfig they build."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

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
CacheDir = Annotated[Path | None, typer.Option("--cache-dir", help="Base-SVD cache folder (default: the one every verb uses, $INTRUDIM_CACHE or ~/.cache/intrudim/svd).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --out.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
Device = Annotated[str, typer.Option("--device", metavar="auto|cpu|cuda", help="Where training runs: auto (a visible GPU, else the CPU), cpu, or cuda.")]
Figures = Annotated[bool, typer.Option("--figures/--no-figures", help="Write PNG figures into the run directory.")]


# The options every run of `train` and `sweep` shares, in --help order: one list, so that a recipe option
# (docs/train.md: "apply to every run") exists with the same default in both commands.
RECIPE_OPTIONS: tuple[tuple[str, object, object], ...] = (
    ("model", Model, "minilm"),
    ("task", TaskName, "sentiment"),
    ("objective", ObjectiveOpt, "auto"),
    ("alpha", Alpha, None),
    ("alpha_rule", AlphaRuleOpt, "2r"),
    ("lr", Lr, None),
    ("total_lr", TotalLr, 2.4e-3),
    ("other_lr", OtherLr, None),
    ("schedule", ScheduleOpt, "linear"),
    ("max_grad_norm", MaxGradNorm, 1.0),
    ("epochs", Epochs, 5.0),
    ("steps", Steps, None),
    ("target_accuracy", Target, None),
    ("eval_every", EvalEvery, 50),
    ("checkpoint_every", CheckpointEvery, 100),
    ("train_fraction", Fraction, 1.0),
    ("seed", Seed, 42),
    ("batch_size", BatchSize, 16),
    ("max_length", MaxLength, 64),
    ("data_path", DataPath, None),
    ("max_train_examples", MaxTrain, None),
    ("max_validation_examples", MaxValidation, None),
    ("k", K, 10),
    ("epsilon", Epsilon, 0.5),
    ("track", Track, True),
    ("cache_dir", CacheDir, None),
    ("resume", Resume, False),
    ("overwrite", Overwrite, False),
    ("quiet", Quiet, False),
    ("figures", Figures, True),
    ("device", Device, "auto"),
)
RUN_OPTIONS = ("cache_dir", "resume", "overwrite", "quiet", "figures", "device")  # how to run, not what to train
FIELD_OF_OPTION = {"k": "intruder_k", "epsilon": "intruder_epsilon", "track": "track_intruders", "steps": "max_steps"}


def recipe_config(**options: object):  # -> TrainConfig
    """The TrainConfig of the recipe options (run options such as --resume are left out)."""
    from intrudim.train.config import TrainConfig

    fields = {FIELD_OF_OPTION.get(name, name): value for name, value in options.items() if name not in RUN_OPTIONS}
    fields["checkpoint_every"] = fields.get("checkpoint_every") or None  # 0: no checkpoints
    if fields.get("max_grad_norm") == 0:
        fields["max_grad_norm"] = None
    if fields.get("data_path") is not None:
        fields["data_path"] = str(fields["data_path"])
    return TrainConfig(**fields)  # type: ignore[arg-type]


def recipe_command(name: str, own: list[inspect.Parameter], body: Callable[..., None], doc: str) -> Callable[..., None]:
    """A typer command taking ``own`` options followed by the shared recipe options; calls ``body(**options)``."""
    shared = [inspect.Parameter(option, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
              for option, annotation, default in RECIPE_OPTIONS]  # fmt: skip
    parameters = [*own, *shared]

    def command(**options: object) -> None:
        body(**options)

    command.__name__ = command.__qualname__ = name
    command.__doc__ = doc
    command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return command


def option(name: str, annotation: object, default: object = inspect.Parameter.empty) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)



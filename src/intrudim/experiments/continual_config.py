"""The settings of a continual run: ContinualConfig, its methods' labels, the names of the files it writes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from intrudim.errors import InvalidConfigError
from intrudim.train.config import TrainConfig

CONTINUAL_KIND = "intrudim-continual"


FORMAT_VERSION = 1


CONFIG_FILE = "config.json"


RESULT_FILE = "continual.json"


CSV_FILE = "continual.csv"


ACCURACY_FIGURE = "figures/continual_accuracy.png"


INTRUDERS_FIGURE = "figures/continual_intruders.png"


STAGE_FILE = "stage.json"


HEAD_FILE = "head.safetensors"


LORA_METHODS: tuple[str, ...] = ("lora", "lora-b-only")


DEFAULT_TASKS: tuple[str, ...] = ("sentiment", "topic", "pair-match", "agreement")


DEFAULT_RANKS: tuple[int | str, ...] = (1, 8, 64, "full")


# Fields of the recipe template that every stage sets itself: they do not decide anything as given.
_PER_RUN_FIELDS = ("task", "method", "rank", "track_intruders")


OnStep = Callable[[str, int, int], None]


def _normalise_ranks(ranks: Any) -> tuple[int | str, ...]:
    if isinstance(ranks, str):
        from intrudim.train.sweep import parse_ranks

        return parse_ranks(ranks)
    normalised: list[int | str] = []
    for rank in ranks:
        if isinstance(rank, str) and rank.strip().lower() == "full":
            normalised.append("full")
        elif isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
            normalised.append(rank)
        elif isinstance(rank, str) and rank.strip().isdigit() and int(rank) > 0:
            normalised.append(int(rank))
        else:
            raise InvalidConfigError(f"ranks: {rank!r} is neither a positive integer nor 'full' (e.g. ranks=(1, 8, 'full')).")
    if not normalised:
        raise InvalidConfigError("ranks is empty; give e.g. ranks=(1, 8, 64, 'full').")
    if len(set(normalised)) != len(normalised):
        raise InvalidConfigError(f"ranks {tuple(ranks)!r} names a rank twice; each method is trained once.")
    return tuple(normalised)


def method_label(rank: int | str) -> str:
    """The folder and table name of a method: ``r-<rank>`` or ``full``."""
    return "full" if rank == "full" else f"r-{rank}"


@dataclass(frozen=True)
class ContinualConfig:
    """What a continual-learning experiment trains (Fig. 8).

    ``tasks``: trained in this order. ``ranks``: one method per entry, a LoRA rank or ``"full"`` (full
    fine-tuning). ``method``: the LoRA variant of the rank entries (``lora`` or ``lora-b-only``, Fig. 10).
    ``train``: the recipe of every stage (model, seed, steps, learning rates, max_length, ...); its ``task``,
    ``method``, ``rank`` and ``track_intruders`` are set per stage (intruders are counted here, against the
    original base). ``k``, ``epsilon``: the intruder definition (Sec. 4).
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    ranks: tuple[int | str, ...] = DEFAULT_RANKS
    method: str = "lora"
    train: TrainConfig = field(default_factory=TrainConfig)
    k: int = 10
    epsilon: float = 0.5

    def __post_init__(self) -> None:
        from intrudim.tasks import task_names

        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        tasks = tuple(str(task).strip().lower() for task in tasks)
        if not tasks or any(not task for task in tasks):
            raise InvalidConfigError(f"tasks {self.tasks!r} is empty; give e.g. tasks=('sentiment', 'topic').")
        known = task_names()
        unknown = [task for task in tasks if task not in known]
        if unknown:
            raise InvalidConfigError(
                f"Unknown task{'s' if len(unknown) > 1 else ''} {', '.join(repr(t) for t in unknown)} in --tasks. "
                f"Known tasks: {', '.join(known)} (run `intrudim tasks` for details)."
            )
        if len(set(tasks)) != len(tasks):
            raise InvalidConfigError(f"--tasks {','.join(tasks)} names a task twice; each task is one stage.")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "ranks", _normalise_ranks(self.ranks))
        if self.method not in LORA_METHODS:
            raise InvalidConfigError(
                f"method={self.method!r}: the LoRA entries of a continual run use lora or lora-b-only; full "
                f"fine-tuning is the rank 'full'."
            )
        if not isinstance(self.train, TrainConfig):
            raise InvalidConfigError(f"train must be a TrainConfig; got {type(self.train).__name__}.")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidConfigError(f"k={self.k!r} must be a positive integer (top singular vectors checked).")
        if not 0.0 < float(self.epsilon) < 1.0:
            raise InvalidConfigError(f"epsilon={self.epsilon!r} must be in (0, 1); the paper uses 0.5.")

    @property
    def labels(self) -> tuple[str, ...]:
        """``r-1``, ``r-8``, ..., ``full``: one per entry of ``ranks``."""
        return tuple(method_label(rank) for rank in self.ranks)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "ranks": list(self.ranks), "method": self.method, "k": self.k,
                "epsilon": self.epsilon, "train": self.train.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContinualConfig:
        return cls(tasks=tuple(data["tasks"]), ranks=tuple(data["ranks"]), method=data.get("method", "lora"),
                   train=TrainConfig.from_json(data.get("train", {})), k=int(data.get("k", 10)),
                   epsilon=float(data.get("epsilon", 0.5)))  # fmt: skip

    def stage_config(self, rank: int | str, task: str, start_model: str, objective: str) -> TrainConfig:
        """The TrainConfig of one stage: the template, on ``task``, starting from ``start_model``.

        The learning rate is resolved once from the template (with its model name), so a stage that starts from
        a merged folder trains at the same η as the first (the embedded MiniLM's full-FT η, among others).
        """
        if rank == "full":
            template = replace(self.train, method="full")
        else:
            template = replace(self.train, method=self.method, rank=int(rank))
        return replace(template, task=task, model=start_model, objective=objective, lr=template.learning_rate,
                       track_intruders=False)  # fmt: skip

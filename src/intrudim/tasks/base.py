"""The shape of a task: examples, splits and the facts the registry lists about it.

A task is either sequence classification (one text, or a text pair, and a class label) or multiple
choice (several text pairs, one of them right). Both are trained with a sequence-classification head:
a multiple-choice example is scored one choice at a time by a one-output head and the scores are
compared with a softmax over the choices, which is what ``AutoModelForMultipleChoice`` does and what
the official WinoGrande and Social IQa recipes for RoBERTa do (Appendix A of the paper follows them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Literal

from intrudim.errors import InvalidConfigError

TaskKind = Literal["classification", "multiple_choice"]


@dataclass(frozen=True)
class Example:
    """One labelled example.

    ``choices`` holds one ``(text, text_pair)`` entry for classification (``text_pair`` is ``None`` for
    single-sentence tasks) and one entry per answer for multiple choice. ``label`` is the class index
    or the index of the right choice.
    """

    choices: tuple[tuple[str, str | None], ...]
    label: int


@dataclass(frozen=True)
class TaskInfo:
    """What ``intrudim tasks`` lists about a task without loading it."""

    name: str
    kind: TaskKind
    num_classes: int
    description: str
    offline: bool
    train_size: int | None
    validation_size: int | None
    paper: str
    source: str

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "num_classes": self.num_classes,
            "description": self.description,
            "offline": self.offline,
            "train_size": self.train_size,
            "validation_size": self.validation_size,
            "paper": self.paper,
            "source": self.source,
        }


@dataclass(frozen=True)
class Task:
    """A loaded task: its kind, label names and its train and validation splits."""

    name: str
    kind: TaskKind
    label_names: tuple[str, ...]
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    source: str = ""
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        """Classes for classification; choices per example for multiple choice."""
        return len(self.label_names)

    @property
    def head_outputs(self) -> int:
        """Outputs of the sequence-classification head: one score per choice for multiple choice."""
        return 1 if self.kind == "multiple_choice" else self.num_labels

    @property
    def has_pairs(self) -> bool:
        return any(pair is not None for example in self.train[:1] for _, pair in example.choices)


def take_train_fraction(task: Task, train_fraction: float, seed: int) -> Task:
    """Keep a seeded random ``train_fraction`` of the training split (the data-size study, Fig. 12).

    Subsets are nested: the examples kept at fraction 0.25 are among those kept at 0.5 for the same seed.
    """
    if not 0.0 < train_fraction <= 1.0:
        raise InvalidConfigError(
            f"train_fraction={train_fraction!r} is outside (0, 1]; give the share of the training split to "
            f"keep, e.g. --train-fraction 0.25."
        )
    if train_fraction == 1.0:
        return task
    order = list(range(len(task.train)))
    random.Random(seed).shuffle(order)
    keep = max(1, round(train_fraction * len(order)))
    kept = tuple(task.train[i] for i in sorted(order[:keep]))
    metadata = {**task.metadata, "train_fraction": train_fraction, "full_train_size": len(task.train)}
    return replace(task, train=kept, metadata=metadata)

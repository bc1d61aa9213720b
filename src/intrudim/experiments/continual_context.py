"""What every stage of a continual run shares (the context), and the tasks and run labels of its stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intrudim.experiments.continual_config import ContinualConfig, OnStep, method_label
from intrudim.train.config import TrainConfig


@dataclass
class _Context:
    """What every stage of a run shares."""

    config: ContinualConfig
    out: Path
    base_model: Path
    objective: str
    tasks: dict[str, Any]  # name → Task (the splits every stage trains on and evaluates)
    cache_dir: Path
    progress: bool
    on_step: OnStep | None
    keep_weights: bool
    console: Any = None
    device: str = "auto"  # where every stage trains (train --device)
    _original_pooler: dict[str, torch.Tensor] | None = None

    @property
    def causal(self) -> bool:
        return self.objective == "causal-lm"

    def say(self, text: str) -> None:
        if self.progress and self.console is not None:
            self.console.print(f"continual: {text}", highlight=False, soft_wrap=True)


def _run_label(rank: int | str, index: int, task: str) -> str:
    return f"{method_label(rank)}/stage-{index}-{task}"


def _load_task(train: TrainConfig, name: str):
    from intrudim.tasks import get_task

    return get_task(
        name, seed=train.seed, train_fraction=train.train_fraction, data_path=train.data_path,
        max_train_examples=train.max_train_examples, max_validation_examples=train.max_validation_examples,
    )  # fmt: skip

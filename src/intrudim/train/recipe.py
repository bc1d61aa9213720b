"""Appendix A's recipe in numbers: how many steps, which examples each step sees, AdamW and its schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from intrudim.train.config import TrainConfig


def total_training_steps(config: TrainConfig, train_size: int) -> tuple[int, int]:
    """(max steps, steps per epoch): ``max_steps`` if given, else ⌈epochs · ⌈n / batch⌉⌉."""
    steps_per_epoch = max(1, math.ceil(train_size / config.batch_size))
    if config.max_steps is not None:
        return config.max_steps, steps_per_epoch
    return max(1, math.ceil(config.epochs * steps_per_epoch)), steps_per_epoch


def batch_indices(step: int, seed: int, train_size: int, batch_size: int, steps_per_epoch: int) -> list[int]:
    """Indices of the global batch of ``step`` (0-based): a fresh seeded permutation each epoch."""
    epoch, position = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(train_size, generator=generator)
    return order[position * batch_size : (position + 1) * batch_size].tolist()


def _make_optimizer(model: nn.Module, config: TrainConfig, max_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for name, p in named if "lora_" in name or config.other_lr is None]}]
    if config.other_lr is not None:
        groups.append({"params": [p for name, p in named if "lora_" not in name], "lr": config.other_lr})
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = math.ceil(config.warmup_ratio * max_steps)
    if config.schedule == "constant":
        return optimizer, get_constant_schedule_with_warmup(optimizer, warmup)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, max_steps)

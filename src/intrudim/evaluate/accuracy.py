"""Held-out accuracy: the measure the paper equalises across methods (Sec. 3, Tables 1-2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intrudim.evaluate.batching import example_labels, example_logits
from intrudim.tasks.base import Example, TaskKind


@torch.no_grad()
def count_correct(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    *,
    max_length: int = 64,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[int, int]:
    """(correct, total) of argmax predictions over ``examples``; the model is put in eval mode and restored."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            logits = example_logits(model, tokenizer, batch, kind, max_length, device)
            correct += int((logits.argmax(dim=-1) == example_labels(batch, device)).sum())
    finally:
        model.train(was_training)
    return correct, len(examples)


def accuracy(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    *,
    max_length: int = 64,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> float:
    """Share of ``examples`` whose label is the argmax of the model's logits."""
    correct, total = count_correct(
        model, tokenizer, examples, kind, max_length=max_length, batch_size=batch_size, device=device
    )
    return correct / total if total else float("nan")

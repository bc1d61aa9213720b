"""Turning examples into model inputs and logits, for classification and multiple choice alike."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intrudim.tasks.base import Example, TaskKind


def encode_examples(
    tokenizer: object, examples: Sequence[Example], max_length: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Tokenize every choice of every example (row-major: example, then choice), padded to the longest."""
    texts = [text for example in examples for text, _ in example.choices]
    pairs = [pair for example in examples for _, pair in example.choices]
    has_pairs = any(pair is not None for pair in pairs)
    encoded = tokenizer(  # type: ignore[operator]
        texts,
        [pair or "" for pair in pairs] if has_pairs else None,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    return {key: value.to(device) for key, value in encoded.items()}


def example_logits(
    model: nn.Module,
    tokenizer: object,
    examples: Sequence[Example],
    kind: TaskKind,
    max_length: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(batch, classes) logits; for multiple choice, (batch, choices) scores from a one-output head."""
    inputs = encode_examples(tokenizer, examples, max_length, device)
    logits = model(**inputs).logits  # (batch·choices, head outputs)
    if kind == "multiple_choice":
        return logits.view(len(examples), -1)  # one score per choice
    return logits


def example_labels(examples: Sequence[Example], device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.tensor([example.label for example in examples], dtype=torch.long, device=device)

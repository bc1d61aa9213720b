"""Held-out accuracy: the measure the paper equalises across methods (Sec. 3, Tables 1-2).

Encoders predict the argmax of their classification head. Causal LMs (given a ``prompt_format``) predict
the label whose answer text has the highest total log-likelihood given the prompt; nothing is sampled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intrudim.evaluate.batching import candidate_scores, example_labels, example_logits
from intrudim.tasks.base import Example, TaskKind
from intrudim.tasks.prompts import PromptFormat


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
    prompt_format: PromptFormat | None = None,
) -> tuple[int, int]:
    """(correct, total) of argmax predictions over ``examples``; the model is put in eval mode and restored.

    With ``prompt_format`` the model is a causal LM and the scores are the answers' log-likelihoods.
    """
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            if prompt_format is None:
                logits = example_logits(model, tokenizer, batch, kind, max_length, device)
            else:
                logits = candidate_scores(model, tokenizer, batch, kind, prompt_format, max_length, device)
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
    prompt_format: PromptFormat | None = None,
) -> float:
    """Share of ``examples`` whose label is the argmax of the model's scores (see :func:`count_correct`)."""
    correct, total = count_correct(
        model, tokenizer, examples, kind, max_length=max_length, batch_size=batch_size, device=device,
        prompt_format=prompt_format,
    )
    return correct / total if total else float("nan")

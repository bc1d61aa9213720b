"""Forgetting for sentence-embedding encoders (MiniLM): their own pre-training objective, in-batch contrastive loss.

all-MiniLM-L6-v2 has no language-model head: it was trained (after MiniLM's distillation) as a sentence
encoder on ~1B sentence pairs with an in-batch InfoNCE loss. Its training script (nreimers/se-pytorch-xla,
``train_many_data_files_v2.py``): mean pooling over the attention mask, L2-normalised embeddings, scores
= 20 · cos(a_i, b_j) over every pair in the batch, and the symmetric cross-entropy "as in CLIP",
½·(CE(scores, i) + CE(scoresᵀ, i)), inputs truncated to 128 tokens. The faithful measure of how much a
fine-tune moved MiniLM away from what it was pre-trained to do is that same loss on held-out natural
pairs: here a sentence and the sentence that follows it in a news article. Retrieval accuracy (is the
true neighbour the top-scoring candidate in the batch?) is reported beside it.

The loss depends on the number of in-batch candidates (chance level is ln B), so ``pairs_per_batch`` is
fixed (64, one TPU core's batch in that script, whose global batch was larger) and the last partial group
of pairs is dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SENTENCE_TRANSFORMERS_SCALE = 20.0
"""The scale of cosine similarities in all-MiniLM-L6-v2's contrastive training (``--scale 20`` for cossim)."""


@dataclass(frozen=True)
class PairScores:
    """Per pair: the symmetric InfoNCE loss, and retrieval accuracy (mean of the two directions: 0, ½ or 1)."""

    losses: torch.Tensor  # (pairs,) float64
    correct: torch.Tensor  # (pairs,) float64


def mean_pooled_embeddings(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(b, H) L2-normalised means of the last hidden states over the non-padding tokens."""
    output = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = getattr(output, "last_hidden_state", None)
    if hidden is None:  # a wrapper with a head (e.g. the classification model a run trained): its encoder's output
        hidden = output.hidden_states[-1]  # (b, T, H)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled.float(), dim=-1)


def in_batch_contrastive_scores(anchors: torch.Tensor, positives: torch.Tensor, scale: float) -> PairScores:
    """Symmetric InfoNCE of normalised embeddings (B, H) and (B, H): pair i's true partner is i, the rest negatives."""
    scores = scale * anchors.double() @ positives.double().T  # (B, B)
    labels = torch.arange(scores.shape[0], device=scores.device)
    forward = F.cross_entropy(scores, labels, reduction="none")
    backward = F.cross_entropy(scores.T, labels, reduction="none")
    correct = ((scores.argmax(dim=1) == labels).double() + (scores.argmax(dim=0) == labels).double()) / 2
    return PairScores(((forward + backward) / 2).cpu(), correct.cpu())


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def embed_sentences(
    model: nn.Module,
    sentences: Sequence[Sequence[int]],
    pad_id: int,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(n, H) embeddings of tokenized sentences (each with its special tokens), ``batch_size`` per forward pass."""
    chunks = []
    for start in range(0, len(sentences), batch_size):
        chunk = sentences[start : start + batch_size]
        ids, mask = _pad(chunk, pad_id, device)
        chunks.append(mean_pooled_embeddings(model, ids, mask).cpu())
        if advance is not None:
            advance(int(mask.sum()))
    return torch.cat(chunks)


@torch.no_grad()
def contrastive_pair_scores(
    model: nn.Module,
    anchors: Sequence[Sequence[int]],
    positives: Sequence[Sequence[int]],
    pad_id: int,
    *,
    pairs_per_batch: int = 64,
    scale: float = SENTENCE_TRANSFORMERS_SCALE,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    advance: Callable[[int], None] | None = None,
) -> PairScores:
    """Loss and retrieval accuracy of every pair, in groups of ``pairs_per_batch`` (len(anchors) must be a multiple)."""
    a = embed_sentences(model, anchors, pad_id, batch_size=batch_size, device=device, advance=advance)
    p = embed_sentences(model, positives, pad_id, batch_size=batch_size, device=device, advance=advance)
    losses, correct = [], []
    for start in range(0, len(anchors), pairs_per_batch):
        group = in_batch_contrastive_scores(a[start : start + pairs_per_batch], p[start : start + pairs_per_batch], scale)
        losses.append(group.losses)
        correct.append(group.correct)
    return PairScores(torch.cat(losses), torch.cat(correct))

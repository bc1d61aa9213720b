"""The settings of a forgetting measurement (ForgettingConfig); each measure's description and defaults."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from intrudim.errors import InvalidConfigError
from intrudim.evaluate.contrastive import SENTENCE_TRANSFORMERS_SCALE

MEASURES: tuple[str, ...] = ("perplexity", "pseudo_loss", "contrastive")


MEASURE_DESCRIPTIONS = {
    "perplexity": "causal LM: mean next-token cross-entropy over windows of the text (perplexity = exp(loss))",
    "pseudo_loss": "masked LM: pseudo-loss −PLL/L of Salazar et al. (2020), every token masked once "
    "(pseudo-perplexity = exp(loss)), as in the paper (Sec. 4, Figs. 9, 16)",
    "contrastive": "sentence-transformers encoder: its own pre-training objective, the symmetric in-batch "
    "InfoNCE loss (scale 20, mean-pooled normalised embeddings) of adjacent-sentence pairs, and retrieval accuracy",
}


MEASURE_NAMES = {"perplexity": "next-token cross-entropy", "pseudo_loss": "MLM pseudo-loss",
                 "contrastive": "contrastive loss"}
"""Each measure's loss in a few words, for labels (the full definitions: ``MEASURE_DESCRIPTIONS``)."""

MEASURE_UNITS = {"perplexity": "nats/token", "pseudo_loss": "nats/token", "contrastive": "nats/pair"}
"""The unit of each measure's loss: a mean over tokens (next-token cross-entropy, MLM pseudo-loss) or over
sentence pairs (the contrastive loss), in nats."""


DEFAULT_BATCH_SIZE = {"perplexity": 4, "pseudo_loss": 64, "contrastive": 64}


DEFAULT_TEXT = {"perplexity": "wiki", "pseudo_loss": "wiki", "contrastive": "news"}


@dataclass(frozen=True)
class ForgettingConfig:
    """Settings of a forgetting measurement; the defaults are the definition every result is compared under.

    ``text``: ``wiki``, ``news``, a file, a folder of .txt, or a saved dataset; None picks ``wiki`` for LMs and
    ``news`` for the contrastive measure (adjacent sentences of news articles). ``max_tokens``: at most this many
    tokens of text are scored (20k: a ±1% interval on smollm2 in about a minute on 2 cores). ``seq_len``: tokens
    per window (LMs; special tokens of masked LMs come on top) or the truncation length of a sentence
    (contrastive; 128 as in MiniLM's training). ``batch_size``: sequences per forward pass (masked LMs: masked
    copies; None: 4 windows, 64 copies, 64 sentences). ``pairs_per_batch``: in-batch candidates of the
    contrastive loss (its chance level is ln of it). ``bootstrap_resamples``/``bootstrap_seed``: the paired
    bootstrap of tuned − base over sequences.
    """

    text: str | None = None
    max_tokens: int = 20_000
    seq_len: int = 128
    batch_size: int | None = None
    pairs_per_batch: int = 64
    contrastive_scale: float = SENTENCE_TRANSFORMERS_SCALE
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    device: str = "cpu"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        for name in ("max_tokens", "seq_len", "pairs_per_batch", "bootstrap_resamples"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidConfigError(f"{name}={value!r} must be a positive integer.")
        if self.seq_len < 2:
            raise InvalidConfigError(f"seq_len={self.seq_len} must be at least 2 (a window predicts seq_len − 1 tokens).")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InvalidConfigError(f"batch_size={self.batch_size!r} must be a positive integer (or None for the default).")
        if self.pairs_per_batch < 2:
            raise InvalidConfigError(f"pairs_per_batch={self.pairs_per_batch} must be at least 2 (one true pair, one negative).")
        if not (math.isfinite(self.contrastive_scale) and self.contrastive_scale > 0):
            raise InvalidConfigError(f"contrastive_scale={self.contrastive_scale!r} must be a positive number.")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", self.device):
            raise InvalidConfigError(f"device={self.device!r} must be cpu, cuda, cuda:N or mps.")

    def batch_size_for(self, measure: str) -> int:
        return self.batch_size or DEFAULT_BATCH_SIZE[measure]

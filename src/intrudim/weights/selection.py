"""Which matrices are analysed, and in which orientation.

Default (DESIGN.md): every 2-D linear weight inside the transformer blocks (attention q/k/v/o, MLP
in/out); embeddings, heads and LayerNorms only on request. GPT-2-family ``Conv1D`` layers store
(in, out); they are transposed so that every matrix is analysed as (out, in), like ``nn.Linear``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A parameter inside a transformer block: "...layer.3.", "layers.3.", "h.3.", "blocks.3.", "block.3.".
BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layer|layers|h|blocks|block|decoder\.layers|encoder\.layers)\.(\d+)\.")
EMBEDDING_PATTERN = re.compile(r"(?:^|\.)(?:embeddings?|embed_tokens|embed_positions|wte|wpe|word_embeddings)(?:\.|$)")
HEAD_PATTERN = re.compile(r"(?:^|\.)(?:lm_head|classifier|pooler|score|qa_outputs|cls)(?:\.|$)")
NORM_PATTERN = re.compile(r"(?:norm|ln_\d|ln_f|layernorm)", re.IGNORECASE)

# Model types whose transformers implementation uses Conv1D (weight stored as (in, out)).
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
CONV1D_MODULES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})


@dataclass(frozen=True)
class MatrixSelection:
    """Rules for choosing matrices. ``modules`` is a regular expression searched in the parameter name."""

    modules: str | None = None
    include_embeddings: bool = False
    include_heads: bool = False
    include_norms: bool = False

    def selects(self, name: str, shape: tuple[int, ...]) -> bool:
        if len(shape) != 2 or not name.endswith(".weight") or min(shape) < 2:
            return False
        if self.modules is not None:
            return re.search(self.modules, name) is not None
        if EMBEDDING_PATTERN.search(name):
            return self.include_embeddings
        if HEAD_PATTERN.search(name):
            return self.include_heads
        if NORM_PATTERN.search(name.rsplit(".", 2)[-2] if name.count(".") else name):
            return self.include_norms
        return BLOCK_PATTERN.search(name) is not None


def layer_index(name: str) -> int | None:
    """Index of the transformer block a parameter belongs to, or None."""
    match = BLOCK_PATTERN.search(name)
    return int(match.group(1)) if match else None


def module_type(name: str) -> str:
    """The part of the name after the block index, without '.weight': e.g. 'attention.self.query', 'mlp.up_proj'."""
    match = BLOCK_PATTERN.search(name)
    rest = name[match.end() :] if match else name
    return rest[: -len(".weight")] if rest.endswith(".weight") else rest


def is_conv1d(name: str, model_type: str | None) -> bool:
    """True for GPT-2-style Conv1D weights, stored (in, out): analyse their transpose."""
    if model_type is not None and model_type not in CONV1D_MODEL_TYPES:
        return False
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in CONV1D_MODULES

"""Short labels of weight matrices for terminal tables and figures ('L4 attn.q', 'L4 mlp.up'), from the key alone."""

from __future__ import annotations

import re

from intrudim.weights.selection import layer_index, module_type

_ATTENTION_PART = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_PART = re.compile(r"^(?:mlp|feed_forward|ffn|intermediate|output)$", re.IGNORECASE)
_SHORT_LEAF = {
    "query": "q", "key": "k", "value": "v", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
    "out_proj": "o", "c_attn": "qkv", "qkv_proj": "qkv", "query_key_value": "qkv", "Wqkv": "qkv",
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "c_fc": "up", "fc1": "up", "fc2": "down",
    "fc_in": "up", "fc_out": "down", "w1": "gate", "w3": "up", "w2": "down", "wi": "up", "wo": "down",
    "dense_h_to_4h": "up", "dense_4h_to_h": "down", "gate_up_proj": "gate_up",
}  # fmt: skip


def short_matrix_name(name: str) -> str:
    """A short label for terminal tables, from the key alone: layer index + module type, e.g.
    'encoder.layer.4.attention.self.query.weight' → 'L4 attn.q', 'model.layers.4.mlp.up_proj.weight' → 'L4 mlp.up'.
    Keys outside the blocks keep their name without '.weight'; full names stay in JSON and CSV."""
    layer = layer_index(name)
    kind = module_type(name)
    if layer is None:
        return kind
    parts = kind.split(".")
    leaf, path = parts[-1], parts[:-1]
    if any(_ATTENTION_PART.search(part) for part in path) or leaf in ("c_attn", "query", "key", "value"):
        label = "attn." + {"dense": "o", "c_proj": "o"}.get(leaf, _SHORT_LEAF.get(leaf, leaf))
    elif path and _MLP_PART.match(path[0]):
        if path[0].lower() == "intermediate":  # BERT: intermediate.dense (MLP in), output.dense (MLP out)
            label = "mlp.up"
        elif path[0].lower() == "output":
            label = "mlp.down"
        else:
            label = "mlp." + {"c_proj": "down"}.get(leaf, _SHORT_LEAF.get(leaf, leaf))
    else:
        label = kind
    return f"L{layer} {label}"

"""Opening a resolved reference's weights for the matrix verbs (analyze, repair, scan, the callback): a BASE as a
:class:`~intrudim.weights.sources.WeightSource`, a TUNED as a LoRA adapter or a dense model, from files or from a
model in memory."""

from __future__ import annotations

from typing import Any

from intrudim.errors import IntrudimError
from intrudim.models.memory import module_weights, peft_adapter_in_memory
from intrudim.models.references import (
    ADAPTER_ORDER,
    ModelReference,
    is_peft_model,
    resolve_base,
    resolve_reference,
)
from intrudim.weights.peft_adapter import LoraAdapter
from intrudim.weights.sources import WeightSource, open_weights


def open_base_weights(base: ModelReference, *, allow_pickle: bool = False) -> WeightSource:
    """BASE's weights: from its files, or (in memory) a model's parameters — a ``PeftModel``'s W₀."""
    if base.module is not None:
        return module_weights(base.module, base.given)
    assert base.path is not None
    if base.is_adapter:
        raise IntrudimError(
            f"BASE '{base.given}' is a PEFT adapter (it holds adapter_config.json), not a model. {ADAPTER_ORDER}"
        )
    return open_weights(base.path, allow_pickle=allow_pickle)


def open_tuned(tuned: ModelReference, *, allow_pickle: bool = False) -> LoraAdapter | WeightSource:
    """TUNED as a LoRA adapter (a folder or a ``PeftModel``'s active/named adapter) or as a dense model's weights."""
    if tuned.module is not None:
        if is_peft_model(tuned.module):
            return peft_adapter_in_memory(tuned.module, tuned.adapter_name)
        return module_weights(tuned.module, tuned.given)
    assert tuned.path is not None
    if tuned.is_adapter:
        return LoraAdapter(tuned.path, allow_pickle=allow_pickle)
    return open_weights(tuned.path, allow_pickle=allow_pickle)


def resolve_pair(
    base: Any, tuned: Any, *, allow_pickle: bool = False, adapter_name: str | None = None, progress: bool = True
) -> tuple[ModelReference, ModelReference]:
    """TUNED and BASE resolved (BASE may be None: the adapter's recorded base, or a PeftModel's own W₀)."""
    tuned_ref = resolve_reference(tuned, role="tuned", allow_pickle=allow_pickle, adapter_name=adapter_name,
                                  progress=progress)  # fmt: skip
    base_ref = resolve_base(base, tuned_ref, allow_pickle=allow_pickle, progress=progress)
    return base_ref, tuned_ref

"""Models in memory: the weights of a live ``nn.Module`` and the LoRA adapter of a ``PeftModel``, read in place.

Nothing is merged, saved or copied: W₀ of a LoRA layer is the weight inside it (``base_layer.weight``), ΔW comes
from its factors, and a dense model's weights are its parameters. The tensors are read when a verb asks for them,
so an analysis of a model in the middle of training sees its weights of that moment. Names are those the model
would be saved under (``save_pretrained``), so results equal those of the same weights read from files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from intrudim.errors import IntrudimError
from intrudim.models.references import describe_module, is_peft_model
from intrudim.weights.peft_adapter import LoraAdapter
from intrudim.weights.sources import WeightSource

PEFT_PREFIX = "base_model.model."
_PEFT_ONLY_PARTS = (".lora_", ".modules_to_save.", ".token_adapter.trainable_tokens_")


class ModuleWeights(WeightSource):
    """The named tensors of a model in memory, with the :class:`~intrudim.weights.sources.WeightSource` interface.

    ``load`` returns the live tensor (detached, on the CPU; a tensor on a GPU is copied to the CPU), never a copy
    kept here.
    """

    def __init__(self, label: str, tensors: dict[str, torch.Tensor], config: dict[str, Any] | None):
        super().__init__(path=Path(label), files={key: Path(label) for key in tensors}, config=config,
                         in_memory=True)  # fmt: skip
        self.label = label
        self.tensors = tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def load(self, key: str) -> torch.Tensor:
        tensor = self.tensors[key].detach()
        return tensor if tensor.device.type == "cpu" else tensor.cpu()

    def close(self) -> None:
        pass


def model_config_dict(module: Any) -> dict[str, Any] | None:
    """The transformers config of a model (a PeftModel's base model) as config.json would hold it."""
    inner = module.get_base_model() if is_peft_model(module) else module
    config = getattr(inner, "config", None)
    to_dict = getattr(config, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def base_weight_name(name: str) -> str | None:
    """The name a parameter of a PeftModel has in its base model (``…q_proj.base_layer.weight`` →
    ``…q_proj.weight``); None for the adapter's own tensors (LoRA factors, modules_to_save copies, trainable
    tokens)."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX) :]
    if any(part in f".{name}" for part in _PEFT_ONLY_PARTS):
        return None
    return name.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", ".").replace(".original_module.", ".")


def module_weights(module: torch.nn.Module, label: str | None = None) -> ModuleWeights:
    """A model's weights in memory. For a ``PeftModel``: its BASE weights (W₀ inside each LoRA layer, the original
    of each module it saves whole), under the names of the base model; for any other module: its own."""
    label = label or describe_module(module)
    tensors: dict[str, torch.Tensor] = {}
    peft = is_peft_model(module)
    for name, tensor in module.state_dict(keep_vars=False).items():
        key = base_weight_name(name) if peft else name
        if key is not None and isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            tensors.setdefault(key, tensor)
    if not tensors:
        raise IntrudimError(f"{label} holds no floating-point weights to analyse.")
    return ModuleWeights(label, tensors, model_config_dict(module))


def peft_adapter_in_memory(module: Any, adapter_name: str | None = None) -> LoraAdapter:
    """The LoRA adapter ``adapter_name`` (default: the active one) of a ``PeftModel``, as peft's ``save_pretrained``
    would write it (``get_peft_model_state_dict``) but kept in memory: the factors are the live parameters."""
    from peft import get_peft_model_state_dict

    name = adapter_name or module.active_adapter
    if name not in module.peft_config:
        raise IntrudimError(f"The PeftModel has no adapter '{name}'; its adapters: {', '.join(sorted(module.peft_config))}.")
    state = get_peft_model_state_dict(module, adapter_name=name)
    return LoraAdapter(describe_module(module, name), config=adapter_config_dict(module, name), state=state)


def adapter_config_dict(module: Any, adapter_name: str) -> dict[str, Any]:
    """A PeftModel's adapter config as adapter_config.json holds it (sets as sorted lists, enums as their values),
    the way peft's ``save_pretrained`` writes it."""
    import enum

    def plain(value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, (set, frozenset)):
            return sorted(plain(v) for v in value)
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    config = module.peft_config[adapter_name].to_dict()
    config.pop("runtime_config", None)
    return {key: plain(value) for key, value in config.items()}

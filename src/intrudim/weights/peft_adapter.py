"""Reading PEFT LoRA adapters from their own files: ΔW = s·B·A per module, never merged into a dense copy.

s = α/r, or α/√r with rsLoRA (``use_rslora``); per-module r and α honour ``rank_pattern`` and
``alpha_pattern`` as PEFT does. With ``fan_in_fan_out`` (GPT-2 Conv1D) PEFT stores the base weight as
(in, out) but its B·A is already in (out, in) orientation, which is the orientation analysed here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intrudim.errors import CorruptFileError, IntrudimError
from intrudim.weights.sources import _safe_open, read_tensor

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
# base_model.model.<module>.lora_A[.<adapter name>].weight
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
# LoRA on an nn.Embedding: base_model.model.<module>.lora_embedding_A[.<adapter name>] (a parameter, no .weight)
_LORA_EMBEDDING_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_embedding_(?P<which>[AB])(?:\.[^.]+)?$")
# A whole weight the adapter trained and saved (PEFT's modules_to_save): base_model.model.<module>[.modules_to_save.<name>].weight
_FULL_WEIGHT_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+?)(?:\.modules_to_save\.[^.]+)?\.weight$")
# peft's trainable tokens: new values for chosen rows of an embedding (base_model.model.<module>.token_adapter.
# trainable_tokens_delta[.<adapter name>]); the rows are the config's trainable_token_indices
_TRAINABLE_TOKENS_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.token_adapter\.trainable_tokens_delta(?:\.[^.]+)?$"
)
EMBEDDING_LORA_ADVICE = (
    "LoRA on an embedding table (lora_embedding_A/B) is analysed with --include-embeddings (embeddings are left "
    "out by default)"
)


def is_adapter_dir(path: Path) -> bool:
    return path.is_dir() and (path / ADAPTER_CONFIG).exists()


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's get_pattern_key: a pattern key matches a module name ending in it (regex)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class LoraFactors:
    """One module's LoRA update: ΔW = scale · B @ A, B (out, r), A (r, in)."""

    module: str
    A: torch.Tensor
    B: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.B.shape[0]), int(self.A.shape[1]))

    def delta(self) -> torch.Tensor:
        """Dense ΔW (for references and small matrices only)."""
        return self.scale * (self.B.to(torch.float64) @ self.A.to(torch.float64))


class LoraAdapter:
    """A PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)."""

    def __init__(
        self,
        path: str | Path,
        *,
        allow_pickle: bool = False,
        config: dict[str, Any] | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ):
        """Read the adapter folder ``path``; or, with ``config`` and ``state`` (an adapter of a model in memory,
        :func:`intrudim.models.memory.peft_adapter_in_memory`), take them as they are: ``path`` then only names
        it in messages and nothing is read from disk."""
        self.path = Path(path)
        self.in_memory = state is not None
        config_path = self.path / ADAPTER_CONFIG
        if config is not None:
            self.config: dict[str, Any] = config
        else:
            try:
                self.config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise CorruptFileError(f"Cannot parse adapter config '{config_path}': {exc}") from None
        if self.in_memory:
            config_path = self.path
        peft_type = str(getattr(self.config.get("peft_type"), "value", self.config.get("peft_type", "LORA"))).upper()
        if peft_type != "LORA":
            raise IntrudimError(
                f"'{config_path}' describes a {peft_type} adapter; intrudim analyses LoRA adapters. Merge it "
                f"into the model (peft's merge_and_unload) and pass the merged model as TUNED."
            )
        if self.config.get("use_dora"):
            raise IntrudimError(
                f"'{config_path}' is a DoRA adapter (use_dora=true): its update is not W₀ + s·B·A. Merge it "
                f"(peft's merge_and_unload) and pass the merged model as TUNED."
            )
        self.lora_alpha = float(self.config.get("lora_alpha", self.config.get("r", 8)))
        self.use_rslora = bool(self.config.get("use_rslora", False))
        self.fan_in_fan_out = bool(self.config.get("fan_in_fan_out", False))
        self.alpha_pattern: dict[str, float] = self.config.get("alpha_pattern") or {}
        self.base_model_name = self.config.get("base_model_name_or_path")
        if state is not None:
            self._tensors: dict[str, Any] = {"keys": list(state), "state": state, "file": self.path}
        else:
            self._tensors = self._open_tensors(allow_pickle)
        self.modules: dict[str, tuple[str, str]] = {}  # module -> (key of A, key of B)
        # module -> key of a 2-D weight saved whole (modules_to_save: trained fully, not by LoRA)
        self.full_weights: dict[str, str] = {}
        # module -> key of peft's trainable tokens (new values of some rows of that embedding table)
        self.token_rows: dict[str, str] = {}
        # keys of other tensors of 2 or more dimensions (none of the above): not analysed
        self.other_tensors: list[str] = []
        found: dict[str, dict[str, str]] = {}
        embedding_found: dict[str, dict[str, str]] = {}
        for key in self._tensors["keys"]:
            match = _LORA_KEY.match(key)
            if match:
                found.setdefault(match["module"], {})[match["which"]] = key
            elif embedding := _LORA_EMBEDDING_KEY.match(key):
                embedding_found.setdefault(embedding["module"], {})[embedding["which"]] = key
            elif tokens := _TRAINABLE_TOKENS_KEY.match(key):
                self.token_rows[tokens["module"]] = key
            elif "lora_" not in key and (full := _FULL_WEIGHT_KEY.match(key)) and len(self._shape(key)) == 2:
                self.full_weights[full["module"]] = key
            elif len(self._shape(key)) >= 2:
                self.other_tensors.append(key)  # reported, not analysed
        # LoRA on embedding tables: ΔW = s·(B·A)ᵀ for the (num_embeddings, dim) weight, with A (r, num_embeddings)
        # and B (dim, r) as peft stores them; read as factors (Aᵀ, Bᵀ) of the weight's orientation.
        self.embedding_modules: list[str] = sorted(embedding_found)
        self.embedding_keys: dict[str, tuple[str, str]] = {}
        for module, pair in embedding_found.items():
            if "A" in pair and "B" in pair:
                self.embedding_keys[module] = (pair["A"], pair["B"])
        for module, pair in found.items():
            if "A" not in pair or "B" not in pair:
                missing = "lora_B" if "A" in pair else "lora_A"
                raise CorruptFileError(
                    f"Adapter '{self.path}' has a LoRA factor for '{module}' but no {missing}: the adapter file "
                    f"is incomplete."
                )
            self.modules[module] = (pair["A"], pair["B"])
        if not self.modules and not self.embedding_keys:
            raise CorruptFileError(
                f"Adapter '{self.path}' holds no LoRA weights (no keys ending in lora_A.weight / lora_B.weight or "
                f"lora_embedding_A / lora_embedding_B)."
            )

    def _open_tensors(self, allow_pickle: bool) -> dict[str, Any]:
        weights = self.path / ADAPTER_WEIGHTS
        if weights.exists():
            handle = _safe_open(weights)
            return {"keys": list(handle.keys()), "handle": handle, "file": weights}
        if (self.path / ADAPTER_PICKLE).exists():
            from intrudim.weights.sources import _load_pickle, _refuse_pickle

            _refuse_pickle(self.path / ADAPTER_PICKLE, allow_pickle)
            state = _load_pickle(self.path / ADAPTER_PICKLE)
            return {"keys": list(state), "state": state, "file": self.path / ADAPTER_PICKLE}
        raise CorruptFileError(
            f"Adapter directory '{self.path}' has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}. Save the adapter "
            f"with peft's save_pretrained (safetensors is the default)."
        )

    def _load(self, key: str) -> torch.Tensor:
        """Read one factor. The file is opened for this read only (the long-lived handle reads the header): a
        memory map kept open keeps every page read so far resident, so memory would grow with the number of
        layers (issue 15; as :meth:`~intrudim.weights.sources.WeightSource.load` reads base weights)."""
        if "state" in self._tensors:
            return self._tensors["state"][key]
        file = self._tensors["file"]
        return read_tensor(file, key, f"adapter '{file}'")

    def _shape(self, key: str) -> tuple[int, ...]:
        if "state" in self._tensors:
            return tuple(self._tensors["state"][key].shape)
        return tuple(self._tensors["handle"].get_slice(key).get_shape())

    def full_weight_shape(self, module: str) -> tuple[int, ...]:
        """The stored shape of a weight the adapter saved whole (:attr:`full_weights`), from the header."""
        return self._shape(self.full_weights[module])

    def full_weight(self, module: str) -> torch.Tensor:
        """A weight the adapter trained fully and saved whole (PEFT's ``modules_to_save``), as stored."""
        return self._load(self.full_weights[module])

    def token_indices(self, module: str) -> list[int]:
        """The rows of ``module``'s embedding that peft's trainable tokens replace (``trainable_token_indices``: a
        list, or a dict of module name patterns to lists, as peft reads it)."""
        indices = self.config.get("trainable_token_indices")
        if isinstance(indices, dict):
            indices = _pattern_value(indices, module, None)
        if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices):
            raise CorruptFileError(
                f"Adapter '{self.path}' has trainable tokens for '{module}' but its {ADAPTER_CONFIG} gives no list "
                f"of token indices for it (trainable_token_indices: {self.config.get('trainable_token_indices')!r})."
            )
        return indices

    def with_token_rows(self, module: str, W0: torch.Tensor) -> torch.Tensor:
        """The embedding table ``W0`` (num_embeddings, dim) with the rows peft's trainable tokens replace, as peft
        merges them (``index_copy``)."""
        indices = self.token_indices(module)
        rows = self._load(self.token_rows[module])
        if rows.ndim != 2 or rows.shape[0] != len(indices) or rows.shape[1] != W0.shape[1] or max(indices) >= W0.shape[0]:
            raise CorruptFileError(
                f"Adapter '{self.path}': trainable tokens of '{module}' have shape {tuple(rows.shape)} for "
                f"{len(indices)} token indices (largest {max(indices)}), which does not fit the embedding "
                f"{tuple(W0.shape)} of BASE."
            )
        return W0.index_copy(0, torch.tensor(indices), rows.to(W0.dtype))

    def embedding_factor_shape(self, module: str) -> tuple[int, int]:
        """(num_embeddings, dim) of the table that ``module``'s embedding factors update."""
        key_a, key_b = self.embedding_keys[module]
        return (int(self._shape(key_a)[-1]), int(self._shape(key_b)[0]))

    def embedding_factors(self, module: str) -> LoraFactors:
        """An embedding table's update as factors of its weight: ΔW = scale · Aᵀ_peft · Bᵀ_peft, (num, r)·(r, dim)."""
        key_a, key_b = self.embedding_keys[module]
        A, B = self._load(key_a), self._load(key_b)  # (r, num), (dim, r)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise CorruptFileError(
                f"Adapter '{self.path}': embedding factors of '{module}' do not fit together: lora_embedding_A "
                f"{tuple(A.shape)}, lora_embedding_B {tuple(B.shape)} (expected (r, num_embeddings) and (dim, r))."
            )
        return LoraFactors(module=module, A=B.T.contiguous(), B=A.T.contiguous(), scale=self.scale_for(module, int(A.shape[0])))

    def factor_shape(self, module: str) -> tuple[int, int]:
        """(out, in) of the matrix ``module``'s factors update, read from the file header (no tensor load)."""
        key_a, key_b = self.modules[module]
        if "state" in self._tensors:
            a_shape, b_shape = self._tensors["state"][key_a].shape, self._tensors["state"][key_b].shape
        else:
            handle = self._tensors["handle"]
            a_shape, b_shape = handle.get_slice(key_a).get_shape(), handle.get_slice(key_b).get_shape()
        return (int(b_shape[0]), int(a_shape[-1]))

    def scale_for(self, module: str, rank: int) -> float:
        alpha = float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank

    def factors(self, module: str) -> LoraFactors:
        key_a, key_b = self.modules[module]
        A, B = self._load(key_a), self._load(key_b)
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise CorruptFileError(
                f"Adapter '{self.path}': factors of '{module}' do not fit together: lora_A {tuple(A.shape)}, "
                f"lora_B {tuple(B.shape)} (expected (r, in) and (out, r))."
            )
        return LoraFactors(module=module, A=A, B=B, scale=self.scale_for(module, int(A.shape[0])))

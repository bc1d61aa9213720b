"""Putting an adapter's or a fine-tuned checkpoint's weights into a loaded model, in place.

TUNED is a PEFT LoRA adapter (merged in memory into the loaded model, whatever wrapper it was trained on:
``intrudim train`` trains a ``*ForSequenceClassification`` wrapper, so its adapter names modules
``bert.encoder…`` and saves a classifier that an LM does not have), an ``intrudim train`` run directory (its
``final/``), a Trainer checkpoint, a Hub repo id, or a fine-tuned model folder (its body weights replace the
loaded model's; an LM head that TUNED lacks, as after a classification fine-tune, is kept). Used by ``forgetting``
and the repair sweep (Sec. 4, Figs. 9, 16); :func:`merge_adapter_with_peft` is peft's own merge, for models loaded
with the head the adapter was trained on.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.errors import IncompatibleWeightsError, IntrudimError
from intrudim.models.references import resolve_local_path

_HEAD_MODULE_NAMES = ("classifier", "score", "pooler", "qa_outputs", "lm_head", "cls", "pre_classifier")


def _prefix_rewrite(sources: list[str], targets: set[str]) -> tuple[str, str]:
    """(old, new): the one prefix rewrite ``old + rest → new + rest`` that maps the most ``sources`` onto ``targets``.

    Wrappers rename the same weights by a leading component: a BertForSequenceClassification says
    ``bert.encoder…`` where a BertModel says ``encoder…`` and a BertForMaskedLM ``bert.encoder…``. One rewrite
    for the whole model (not a best match per name) keeps, e.g., BERT's pooler from landing on a same-named
    layer of an MLM head.
    """

    def prefixes(names: list[str] | set[str]) -> set[str]:
        out = {""}
        for name in names:
            parts = name.split(".")
            out.update(".".join(parts[:i]) + "." for i in range(1, min(3, len(parts))))
        return out

    best, best_count = ("", ""), -1
    for old in sorted(prefixes(sources), key=len):
        for new in sorted(prefixes(targets), key=len):
            count = sum(1 for s in sources if s.startswith(old) and new + s[len(old) :] in targets)
            if count > best_count:
                best, best_count = (old, new), count
    return best


def _rewrite(name: str, rule: tuple[str, str]) -> str | None:
    old, new = rule
    return new + name[len(old) :] if name.startswith(old) else None


def _example_module(names: set[str]) -> str:
    deep = sorted(n for n in names if n.count(".") >= 3)
    return deep[0] if deep else sorted(names)[-1]


def _is_head_name(name: str) -> bool:
    return any(part in _HEAD_MODULE_NAMES for part in name.split("."))


@dataclass
class TunedWeightsReport:
    """What applying TUNED changed: LoRA modules merged, tensors replaced, head-only weights ignored."""

    kind: str  # "adapter" or "model"
    path: str
    lora_modules: int = 0
    tensors_replaced: int = 0
    ignored_head_weights: list[str] = field(default_factory=list)
    kept_from_base: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "lora_modules": self.lora_modules,
                "tensors_replaced": self.tensors_replaced, "ignored_head_weights": self.ignored_head_weights,
                "kept_from_base": self.kept_from_base}  # fmt: skip


def _check_shape(parameter: torch.Tensor, value: torch.Tensor, name: str, source: str) -> None:
    if tuple(parameter.shape) != tuple(value.shape):
        raise IncompatibleWeightsError(
            f"'{source}' does not fit BASE: its tensor for '{name}' has shape {tuple(value.shape)}, BASE's has "
            f"{tuple(parameter.shape)}. TUNED must be a fine-tune (or adapter) of this BASE."
        )


def _copy_into(parameter: torch.Tensor, value: torch.Tensor, name: str, source: str) -> None:
    _check_shape(parameter, value, name, source)
    with torch.no_grad():
        parameter.copy_(value.to(parameter.dtype))


def _add_into(parameter: torch.Tensor, delta: torch.Tensor, name: str, source: str) -> None:
    """parameter += delta, computed in float64 and rounded once to the parameter's dtype."""
    _check_shape(parameter, delta, name, source)
    with torch.no_grad():
        parameter.copy_((parameter.double() + delta.to(parameter.device)).to(parameter.dtype))


def merge_lora_adapter_(model: nn.Module, adapter_dir: Path, *, allow_pickle: bool = False) -> TunedWeightsReport:
    """Merge a PEFT LoRA adapter into ``model`` in place: W += s·B·A per module, plus its biases, modules_to_save and
    trainable tokens (rows of an embedding replaced, as peft merges them).

    Module names are mapped onto ``model`` by one prefix rewrite (see :func:`_prefix_rewrite`), so an adapter
    trained on a ``*ForSequenceClassification`` wrapper merges into the LM of the same base; head-only modules
    (classifier, score, pooler…) that the LM lacks are ignored and listed. s = α/r (α/√r with rsLoRA), honouring
    rank_pattern/alpha_pattern; GPT-2 Conv1D (fan_in_fan_out) weights are updated as (in, out). The result
    equals peft's ``merge_and_unload`` (tested).
    """
    from transformers.pytorch_utils import Conv1D

    from intrudim.weights.peft_adapter import ADAPTER_WEIGHTS, LoraAdapter

    adapter = LoraAdapter(adapter_dir, allow_pickle=allow_pickle)
    report = TunedWeightsReport("adapter", str(adapter_dir))
    modules = dict(model.named_modules())
    module_names = set(modules)
    rule = _prefix_rewrite(sorted(adapter.modules) + adapter.embedding_modules + sorted(adapter.token_rows), module_names)
    for module_name in sorted(adapter.modules):
        target_name = _rewrite(module_name, rule)
        target = modules.get(target_name) if target_name is not None else None
        if target is None or not hasattr(target, "weight"):
            raise IncompatibleWeightsError(
                f"Adapter '{adapter_dir}' has LoRA factors for module '{module_name}', which BASE does not have "
                f"(BASE's modules look like '{_example_module(module_names)}'). The adapter "
                f"was trained on another base model; give the BASE it was trained from."
            )
        factors = adapter.factors(module_name)
        delta = factors.scale * (factors.B.double() @ factors.A.double())  # (out, in)
        if isinstance(target, Conv1D) or (adapter.fan_in_fan_out and not isinstance(target, nn.Linear)):
            delta = delta.T  # Conv1D stores (in, out)
        _add_into(target.weight, delta, f"{target_name}.weight (LoRA B·A)", str(adapter_dir))
        report.lora_modules += 1
    state = _adapter_state(adapter_dir, ADAPTER_WEIGHTS, allow_pickle)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    embedding_keys = [k for k in state if ".lora_embedding_A" in k]
    for key_a in embedding_keys:
        module_name = key_a.removeprefix("base_model.model.").split(".lora_embedding_A")[0]
        key_b = key_a.replace("lora_embedding_A", "lora_embedding_B")
        target_name = _rewrite(module_name, rule)
        target = modules.get(target_name) if target_name is not None else None
        if target is None or key_b not in state:
            raise IncompatibleWeightsError(
                f"Adapter '{adapter_dir}' has embedding LoRA for '{module_name}', which BASE does not have."
            )
        A, B = state[key_a].double(), state[key_b].double()  # (r, num_embeddings), (dim, r)
        delta = adapter.scale_for(module_name, int(A.shape[0])) * (B @ A).T  # (num_embeddings, dim)
        _add_into(target.weight, delta, f"{target_name}.weight (embedding LoRA)", str(adapter_dir))
        report.lora_modules += 1
    for module_name in sorted(adapter.token_rows):  # peft's trainable tokens: rows of an embedding, index_copy'd
        target_name = _rewrite(module_name, rule)
        target = modules.get(target_name) if target_name is not None else None
        if target is None or not hasattr(target, "weight"):
            raise IncompatibleWeightsError(
                f"Adapter '{adapter_dir}' has trainable tokens for '{module_name}', which BASE does not have."
            )
        with torch.no_grad():
            target.weight.copy_(adapter.with_token_rows(module_name, target.weight.detach()))
        report.tensors_replaced += 1
    token_keys = set(adapter.token_rows.values())  # merged above
    for key, value in state.items():
        if key in token_keys:
            continue
        if ".lora_" in key:
            if re.search(r"\.lora_(A|B|embedding_A|embedding_B)(\.|$)", key):
                continue
            raise IntrudimError(
                f"Adapter '{adapter_dir}' holds '{key}', a LoRA variant intrudim does not merge. Merge it with peft "
                f"(merge_and_unload), save the model, and pass that folder as TUNED."
            )
        name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
        name = name.replace(".modules_to_save.default.", ".").replace(".modules_to_save.", ".")
        target_name = _rewrite(name, rule)
        if target_name is None or target_name not in parameters:
            if _is_head_name(name):
                report.ignored_head_weights.append(name)
                continue
            raise IncompatibleWeightsError(
                f"Adapter '{adapter_dir}' saves the weight '{name}' (a trained bias or module), which BASE does not "
                f"have. The adapter was trained on another base model; give the BASE it was trained from."
            )
        _copy_into(parameters[target_name], value, target_name, str(adapter_dir))
        report.tensors_replaced += 1
    return report


def _adapter_state(adapter_dir: Path, weights_name: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if (adapter_dir / weights_name).exists():
        return load_file(str(adapter_dir / weights_name))
    from intrudim.weights.sources import _load_pickle, _refuse_pickle

    pickle = adapter_dir / "adapter_model.bin"
    _refuse_pickle(pickle, allow_pickle)
    return _load_pickle(pickle)


def load_dense_weights_(model: nn.Module, tuned: Path, *, allow_pickle: bool = False) -> TunedWeightsReport:
    """Replace ``model``'s weights by a fine-tuned model's (streamed one tensor at a time); keep BASE's head if absent.

    Every parameter of the model body must be found in TUNED (else the two do not match); weights of the LM
    head that TUNED lacks (it was fine-tuned with a task head) are kept from BASE and listed.
    """
    from intrudim.weights.sources import open_weights

    source = open_weights(tuned, allow_pickle=allow_pickle)
    report = TunedWeightsReport("model", str(tuned))
    parameters = dict(model.named_parameters(remove_duplicate=False))
    keys = source.keys()
    rule = _prefix_rewrite(keys, set(parameters))
    assigned: set[str] = set()
    for key in keys:
        target_name = _rewrite(key, rule)
        if target_name is None or target_name not in parameters:
            if _is_head_name(key):
                report.ignored_head_weights.append(key)
            continue
        _copy_into(parameters[target_name], source.load(key), target_name, str(tuned))
        assigned.add(target_name)
        report.tensors_replaced += 1
    source.close()
    body_prefix = getattr(model, "base_model_prefix", "")
    tied = {id(p) for name, p in parameters.items() if name in assigned}
    for name, parameter in parameters.items():
        if name in assigned or id(parameter) in tied:
            continue
        in_body = not body_prefix or name.startswith(f"{body_prefix}.") or not hasattr(model, body_prefix)
        if in_body:
            raise IncompatibleWeightsError(
                f"'{tuned}' does not fit BASE: it has no weight for '{name}' (looked for it with the prefix rule "
                f"{rule[0] or '∅'!r} → {rule[1] or '∅'!r}). TUNED must be a fine-tune of this BASE, saved with all "
                f"its weights."
            )
        report.kept_from_base.append(name)
    return report


def apply_tuned_weights_(model: nn.Module, tuned: str | Path, *, allow_pickle: bool = False) -> TunedWeightsReport:
    """Turn the loaded BASE ``model`` into TUNED in place: a LoRA adapter, a run directory, or a fine-tuned model.

    TUNED is resolved by :func:`~intrudim.models.references.resolve_local_path` (role ``tuned``), so a Trainer
    output_dir or checkpoint-N folder and a Hub repo id work too.
    """
    from intrudim.weights.peft_adapter import is_adapter_dir

    path = resolve_local_path(tuned, role="tuned", allow_pickle=allow_pickle)
    if is_adapter_dir(path):
        return merge_lora_adapter_(model, path, allow_pickle=allow_pickle)
    return load_dense_weights_(model, path, allow_pickle=allow_pickle)


def merge_adapter_with_peft(model: nn.Module, adapter_dir: Path) -> nn.Module:
    """``model`` with the PEFT adapter in ``adapter_dir`` loaded and merged by peft itself (``merge_and_unload``:
    LoRA, biases, modules_to_save and saved heads); ``model`` must have the class the adapter was trained on.

    peft only warns when an adapter's tensors find no module in ``model`` (the adapter was saved from another class:
    ``LlamaForCausalLM`` names its layers ``model.layers.N``, a bare ``LlamaModel`` ``layers.N``) and then merges
    nothing; here that is an :class:`AdapterMismatchError` naming an unmatched tensor, never a silent no-op."""
    import logging

    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict

    saved = _saved_lora_keys(adapter_dir)
    with warnings.catch_warnings():  # peft 0.21 calls transformers' deprecated is_gradient_checkpointing
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(missing adapter keys|did not match any targeted module).*")
        peft_logger = logging.getLogger("peft")
        level = peft_logger.level
        peft_logger.setLevel(logging.ERROR)  # its key-mismatch warnings: checked below, said in one sentence
        try:
            peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
        finally:
            peft_logger.setLevel(level)
        if saved:
            loaded = set(get_peft_model_state_dict(peft_model).keys())
            missing = sorted(saved - loaded)
            if missing:
                raise AdapterMismatchError(
                    f"The adapter '{adapter_dir}' does not fit {type(model).__name__}: {len(missing)} of its "
                    f"{len(saved)} LoRA tensors match no module of it (e.g. '{missing[0]}'), so merging would change "
                    f"nothing. The adapter was saved from another class of this model."
                )
        return peft_model.merge_and_unload()


class AdapterMismatchError(IntrudimError):
    """An adapter's LoRA tensors match no module of the model it is loaded into."""


def _saved_lora_keys(adapter_dir: Path) -> set[str]:
    """The LoRA tensor names of an adapter's safetensors file (empty when it has none we can read without pickle)."""
    from safetensors import safe_open

    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        return set()
    with safe_open(str(path), framework="pt") as handle:
        return {key for key in handle.keys() if ".lora_A." in key or ".lora_B." in key}

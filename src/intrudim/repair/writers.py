"""Writing a repair: an exact PEFT adapter of rank r + |I| (rank_pattern / alpha_pattern), with the weights it saved
whole (``modules_to_save``) repaired and written back whole; or merged weights sharded like the input; or a
bit-for-bit copy when nothing changes. Every output directory is built beside its destination and moved into place
at the end, so an interrupted repair leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from intrudim.analysis.planning import AnalysisInputs
from intrudim.errors import IntrudimError
from intrudim.fileio import ensure_writable_directory, write_json_atomic
from intrudim.models.references import read_adapter_config
from intrudim.repair.plan import MatrixRepairPlan
from intrudim.repair.result import RepairResult
from intrudim.weights.peft_adapter import ADAPTER_CONFIG, ADAPTER_PICKLE, ADAPTER_WEIGHTS, LoraAdapter
from intrudim.weights.sources import SAFETENSORS_INDEX, WeightSource


def output_name(inputs: AnalysisInputs, merged: bool) -> str:
    return "adapter" if inputs.adapter is not None and not merged else "model"


def prepare_output(out: Path, inputs: AnalysisInputs, *, merged: bool, overwrite: bool) -> Path:
    """Check --out before any slow work: writable, and no earlier output that would be replaced."""
    ensure_writable_directory(out)
    if merged and (inputs.base.in_memory or (inputs.adapter is not None and inputs.adapter.in_memory)):
        raise IntrudimError(
            "--merged (merged=True) writes BASE with the repaired adapter merged in, from BASE's folder; a model in "
            "memory has none. Leave out merged to write the repaired adapter, or give BASE as a folder."
        )
    if merged and inputs.adapter is not None and not inputs.base.path.is_dir():
        raise IntrudimError(
            f"--merged needs BASE as a model directory (config.json + weights) to merge into; '{inputs.base.path}' "
            f"is a single file. Give the model folder, or leave out --merged to get a repaired adapter."
        )
    target = out / output_name(inputs, merged)
    for existing in (target, out / "repair.json", out / "report.html"):
        if existing.exists() and not overwrite:
            raise IntrudimError(
                f"'{existing}' already exists and would be replaced. Choose another --out, or pass --overwrite to "
                f"replace the earlier repair."
            )
    return out


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a fresh directory beside ``target``; on success it replaces ``target`` (an older one is removed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        if target.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            target.rename(trash / target.name)
            tmp.rename(target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _copy_tree(source: Path, dest: Path) -> None:
    """Every file of ``source`` into ``dest``, bytes and modification times preserved."""
    if source.is_file():
        shutil.copy2(source, dest / source.name)
        if (source.parent / "config.json").exists():
            shutil.copy2(source.parent / "config.json", dest / "config.json")
        return
    shutil.copytree(source, dest, dirs_exist_ok=True)


def write_outputs(
    result: RepairResult,
    plans: list[MatrixRepairPlan],
    inputs: AnalysisInputs,
    out: Path,
    *,
    merged: bool,
    overwrite: bool,
) -> None:
    """Write OUT/adapter or OUT/model for ``result.config``'s λ and control; fill in result.output*."""
    lam, control = result.config.lam, result.config.control
    target = out / output_name(inputs, merged)
    result.output, result.output_kind = str(target), output_name(inputs, merged)
    changed = any(m.removed_frobenius > 0 for m in result.matrices)
    if inputs.adapter is not None:
        adapter = inputs.adapter
        new_factors = lora_replacements(plans, adapter, lam, control)
        whole = {adapter.full_weights[key]: W for key, W in dense_replacements(plans, inputs, lam, control).items()}
        with atomic_directory(target) as tmp:
            if not changed:
                result.unchanged = True
                if merged:
                    merge_with_peft(inputs.base, adapter.path, tmp)
                elif adapter.in_memory:
                    write_adapter(adapter, {}, tmp)
                else:
                    _copy_tree(adapter.path, tmp)
            elif merged:
                with tempfile.TemporaryDirectory(dir=out) as staging:
                    write_adapter(adapter, new_factors, Path(staging), whole=whole)
                    merge_with_peft(inputs.base, Path(staging), tmp)
            else:
                write_adapter(adapter, new_factors, tmp, whole=whole)
        return
    assert inputs.tuned is not None
    with atomic_directory(target) as tmp:
        if not changed:
            result.unchanged = True
            _copy_tree(inputs.tuned.path, tmp)
            return
        write_like(inputs.tuned, dense_replacements(plans, inputs, lam, control), tmp)


def lora_replacements(
    plans: list[MatrixRepairPlan], adapter: LoraAdapter, lam: float, control: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """module → (B', A', α' or None): the factors that make the repaired update, exactly
    (:meth:`~intrudim.repair.core.MatrixRepairPlan.lora_replacement`)."""
    new: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]] = {}
    for plan in plans:
        replacement = plan.lora_replacement(lam, control, adapter.use_rslora)
        if replacement is not None:
            assert plan.factors is not None
            new[plan.factors.module] = replacement
    return new


def write_adapter(
    adapter: LoraAdapter,
    new: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]],
    dest: Path,
    *,
    whole: dict[str, torch.Tensor] | None = None,
) -> None:
    """A PEFT adapter directory: the input's files, with the repaired modules' factors replaced (in the input's
    dtype) and their rank and α set through rank_pattern / alpha_pattern (first in each, so that they win
    over any broader pattern, as PEFT takes the first matching key). ``whole``: adapter key → the repaired value
    of a weight the adapter saved whole (``modules_to_save``), stored orientation, cast to the stored dtype."""
    if adapter.in_memory:  # a PeftModel's adapter: its live tensors, copied (they share storage with the model)
        tensors = {key: t.detach().cpu().clone().contiguous() for key, t in adapter._tensors["state"].items()}
    else:
        weights = adapter.path / ADAPTER_WEIGHTS
        tensors = load_file(str(weights)) if weights.exists() else dict(adapter._tensors["state"])
    for key, W in (whole or {}).items():
        tensors[key] = W.to(tensors[key].dtype).contiguous()
    rank_pattern: dict[str, int] = {}
    alpha_pattern: dict[str, float] = {}
    for module, (B_new, A_new, alpha) in new.items():
        if module in adapter.modules:
            key_a, key_b = adapter.modules[module]
        else:  # an embedding table: peft stores lora_embedding_A = (factor B)ᵀ, lora_embedding_B = (factor A)ᵀ
            key_a, key_b = adapter.embedding_keys[module]
            B_new, A_new = A_new.T, B_new.T
        dtype = tensors[key_a].dtype
        tensors[key_a] = A_new.to(dtype).contiguous()
        tensors[key_b] = B_new.to(dtype).contiguous()
        if alpha is not None:
            pattern = re.escape(module)
            rank_pattern[pattern] = int(A_new.shape[0])
            alpha_pattern[pattern] = float(alpha)
    config = dict(adapter.config)
    config["rank_pattern"] = {**rank_pattern, **(config.get("rank_pattern") or {})}
    config["alpha_pattern"] = {**alpha_pattern, **(config.get("alpha_pattern") or {})}
    for item in [] if adapter.in_memory else adapter.path.iterdir():
        if item.name in (ADAPTER_WEIGHTS, ADAPTER_PICKLE, ADAPTER_CONFIG) or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name)
        else:
            shutil.copy2(item, dest / item.name)
    save_file(tensors, str(dest / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json_atomic(dest / ADAPTER_CONFIG, config)


def dense_replacements(
    plans: list[MatrixRepairPlan], inputs: AnalysisInputs, lam: float, control: str
) -> dict[str, torch.Tensor]:
    """Stored key → W' (float64, stored orientation) for every dense matrix that changes: a dense TUNED's weights,
    or the weights a LoRA adapter saved whole (keyed by module, ``job.tuned_key``)."""
    out: dict[str, torch.Tensor] = {}
    for plan in plans:
        if not plan.intruders or plan.factors is not None:
            continue
        job = plan.job
        W0 = inputs.base_matrix(job) if control == "shrink" else None  # only the shrink control needs W₀
        W_new = plan.dense_replacement(inputs.tuned_matrix(job), W0, lam, control)
        if W_new is None:
            continue
        assert job.tuned_key is not None
        out[job.tuned_key] = W_new.T if job.transpose else W_new
    return out


def write_like(source: WeightSource, replacements: dict[str, torch.Tensor], dest: Path) -> None:
    """The tensors of ``source`` with ``replacements`` (cast to each tensor's dtype), file by file as the
    input is sharded (same file names, same index), plus its config and tokenizer files."""
    if source.is_pickle:
        raise IntrudimError(
            f"'{source.path}' is a pickle checkpoint; a repaired model is written as safetensors shards like its "
            f"input, which needs a safetensors input. Convert it to safetensors first."
        )
    by_file: dict[Path, list[str]] = {}
    for key, file in source.files.items():
        by_file.setdefault(file, []).append(key)
    for file, keys in by_file.items():
        tensors = {}
        for key in keys:
            tensor = source.load(key)
            if key in replacements:
                tensor = replacements[key].to(tensor.dtype)
            tensors[key] = tensor.contiguous()
        save_file(tensors, str(dest / file.name), metadata={"format": "pt"})
        del tensors
    folder = source.path if source.path.is_dir() else source.path.parent
    for item in folder.iterdir():
        if item.is_file() and item.suffix in (".json", ".txt", ".model", ".jinja") and not (dest / item.name).exists():
            shutil.copy2(item, dest / item.name)
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        shutil.copy2(index, dest / SAFETENSORS_INDEX)


def merge_with_peft(base: WeightSource, adapter_dir: Path, dest: Path) -> None:
    """Merge an adapter into BASE with peft itself (biases, norms and saved heads included), sharded like BASE."""
    from intrudim.models.loading import load_for_peft_task
    from intrudim.models.tuned import AdapterMismatchError, merge_adapter_with_peft

    task = (read_adapter_config(adapter_dir) or {}).get("task_type")
    num_labels = _head_outputs(adapter_dir) if task == "SEQ_CLS" else None

    def merged_as(loader_task: str | None):  # noqa: ANN202 - a transformers model
        return merge_adapter_with_peft(load_for_peft_task(base.path, loader_task, num_labels=num_labels), adapter_dir)

    *first, last = _classes_to_try(task)  # an adapter saved without task_type: BASE's own class, then a bare body
    merged = None
    for loader_task in first:
        try:
            merged = merged_as(loader_task)
            break
        except AdapterMismatchError:
            continue
    if merged is None:
        merged = merged_as(last)  # the last class to try: its mismatch is the error
    shard_bytes = max(file.stat().st_size for file in set(base.files.values()))
    merged.save_pretrained(str(dest), max_shard_size=max(shard_bytes, 1 << 20), safe_serialization=True)
    for item in base.path.iterdir():
        if item.is_file() and item.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            shutil.copy2(item, dest / item.name)


def _classes_to_try(task: str | None) -> tuple[str | None, ...]:
    """The classes to load BASE as for peft's merge: the adapter's ``task_type``'s; without one (a plain
    ``LoraConfig``), the class BASE's config names (what a user loads before ``get_peft_model``), then a bare body."""
    return (task,) if task else ("ARCHITECTURE", None)


def _head_outputs(adapter_dir: Path) -> int | None:
    """Number of labels of a sequence-classification adapter's saved head (classifier/score weight rows)."""
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.exists():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if re.search(r"(classifier|score)(\.out_proj)?\.weight$", key) and "original_module" not in key:
                return int(handle.get_slice(key).get_shape()[0])
    return None

"""The weights after a continual stage: its adapter merged into the start; an encoder's task head apart."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.experiments.continual_config import HEAD_FILE
from intrudim.experiments.continual_context import _Context


def _head_prefixes(model: nn.Module) -> tuple[list[str], list[str]]:
    """(pooler module names, classifier module names) of an encoder's head (train.methods.head_modules)."""
    from intrudim.train.methods import head_modules

    names = head_modules(model)
    poolers = [name for name in names if name.rsplit(".", 1)[-1] == "pooler"]
    return poolers, [name for name in names if name not in poolers]


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in prefixes)


def _load_for_task(ctx: _Context, folder: Path, task: Any) -> tuple[nn.Module, Any]:
    from intrudim.models.loading import load_base_model, load_causal_lm

    torch.manual_seed(ctx.config.train.seed)  # a fresh head (overwritten by the task's own) is seeded
    if ctx.causal:
        return load_causal_lm(folder)
    return load_base_model(folder, task.head_outputs)


def _original_pooler(ctx: _Context) -> dict[str, torch.Tensor]:
    """The base model's pooler (a new task's head starts from it, as in the first stage)."""
    if ctx._original_pooler is None:
        model, _ = _load_for_task(ctx, ctx.base_model, next(iter(ctx.tasks.values())))
        poolers, _ = _head_prefixes(model)
        ctx._original_pooler = {key: value.detach().clone() for key, value in model.state_dict().items()
                                if _under(key, poolers)}  # fmt: skip
    return ctx._original_pooler


def _merged_model(ctx: _Context, start: Path, final: Path, task: Any) -> tuple[nn.Module, Any]:
    """The weights after a stage: the stage's LoRA adapter merged into its start weights, or the full FT model."""
    from intrudim.weights.peft_adapter import is_adapter_dir

    if is_adapter_dir(final):
        from intrudim.models.tuned import merge_adapter_with_peft

        model, tokenizer = _load_for_task(ctx, start, task)
        model = merge_adapter_with_peft(model, final)
    else:
        model, tokenizer = _load_for_task(ctx, final, task)
    return model.eval(), tokenizer


def _save_folder_atomic(model: nn.Module, tokenizer: Any, destination: Path, state: dict[str, torch.Tensor] | None) -> None:
    from intrudim.models.loading import quiet_transformers

    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with quiet_transformers():
        if state is None:
            model.save_pretrained(str(tmp))
        else:
            model.save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(tmp, destination)


def _write_stage_weights(ctx: _Context, model: nn.Module, tokenizer: Any, stage_dir: Path) -> None:
    """merged/ (an HF folder the next stage starts from) and, for an encoder, head.safetensors (the task's head).

    An encoder's merged/ has no classifier and the base model's pooler: the next task gets a fresh head, as the
    first did; the task's own head is kept in head.safetensors.
    """
    from safetensors.torch import save_file

    if ctx.causal:
        _save_folder_atomic(model, tokenizer, stage_dir / "merged", None)
        return
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    poolers, classifiers = _head_prefixes(model)
    head = {key: value.clone() for key, value in state.items() if _under(key, poolers + classifiers)}
    from intrudim.fileio import atomic_path

    with atomic_path(stage_dir / HEAD_FILE) as tmp:
        save_file(head, str(tmp))
    backbone = {key: value for key, value in state.items() if not _under(key, classifiers)}
    backbone.update(_original_pooler(ctx))
    _save_folder_atomic(model, tokenizer, stage_dir / "merged", backbone)

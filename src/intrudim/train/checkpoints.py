"""Checkpoints of a run: weights in the formats `analyze` reads, plus the state needed to resume.

``checkpoints/step-<N>/`` holds the weights (a PEFT adapter folder for LoRA, an HF model folder for full
fine-tuning) and ``training_state/``: the trainable tensors (safetensors), optimizer and scheduler state,
RNG state and ``state.json`` (step, best accuracy...). Every checkpoint is written into a temporary
folder and renamed into place, so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from intrudim.errors import CorruptFileError
from intrudim.fileio import write_json_atomic

CHECKPOINTS_DIR = "checkpoints"
TRAINING_STATE_DIR = "training_state"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class LoopState:
    """Counters of the training loop that a resumed run must continue from."""

    step: int = 0
    best_accuracy: float | None = None
    best_step: int | None = None
    last_accuracy: float | None = None
    last_loss: float | None = None
    target_reached_step: int | None = None


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS_DIR / f"step-{step}"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint, by step."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / TRAINING_STATE_DIR / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def save_weights(model: nn.Module, directory: Path, tokenizer: object | None = None) -> None:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or an HF model folder."""
    from intrudim.models.loading import quiet_transformers

    directory.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():  # no "Writing model shards" bar in intrudim's output
        model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))  # type: ignore[attr-defined]


def save_weights_atomic(model: nn.Module, directory: Path, tokenizer: object | None = None) -> None:
    """``save_weights`` into a temporary sibling folder, then swap it into place."""
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_weights(model, tmp, tokenizer)
    _swap_into_place(tmp, directory)


def _swap_into_place(tmp: Path, directory: Path) -> None:
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def trainable_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
) -> Path:
    """Write ``checkpoints/step-<state.step>/`` atomically and return it."""
    destination = checkpoint_dir(run_dir, state.step)
    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_weights(model, tmp)
    training = tmp / TRAINING_STATE_DIR
    training.mkdir()
    save_file(trainable_tensors(model), str(training / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), training / "optimizer.pt")
    torch.save(scheduler.state_dict(), training / "scheduler.pt")
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from CUDA's generators
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, training / "rng.pt")
    write_json_atomic(training / "state.json", asdict(state))
    _swap_into_place(tmp, destination)
    return destination


def load_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> LoopState:
    """Restore trainable weights, optimizer, scheduler and RNG from ``directory``; return the loop state."""
    training = directory / TRAINING_STATE_DIR
    try:
        tensors = load_file(str(training / "trainable.safetensors"))
        state = LoopState(**json.loads((training / "state.json").read_text(encoding="utf-8")))
        optimizer_state = torch.load(training / "optimizer.pt", weights_only=True)
        scheduler_state = torch.load(training / "scheduler.pt", weights_only=True)
        rng = torch.load(training / "rng.pt", weights_only=False)  # our own file: python's RNG state is a tuple
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise CorruptFileError(
            f"Checkpoint '{directory}' cannot be read ({exc}). Delete that folder to resume from the one before, "
            f"or start again without --resume."
        ) from None
    parameters = dict(model.named_parameters())
    missing = sorted(set(parameters_requiring_grad(model)) - set(tensors))
    if missing:
        raise CorruptFileError(
            f"Checkpoint '{directory}' lacks {len(missing)} trainable tensors (e.g. '{missing[0]}'); it was made by "
            f"a different method or model. Resume with the options that made the run."
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(tensor)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng.get("cuda") and torch.cuda.is_available():  # a run resumed on another machine may have fewer GPUs
        for index, cuda_state in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)
    return state


def parameters_requiring_grad(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]

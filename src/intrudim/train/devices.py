"""Where a run trains: the device asked for, checked, and accelerate's per-process state made to follow it."""

from __future__ import annotations

from typing import Any

import torch

from intrudim.errors import IntrudimError

TRAINING_DEVICES = ("auto", "cpu", "cuda")


def make_accelerator(device: str) -> Any:
    """An ``accelerate.Accelerator`` on ``device`` ("auto", "cpu" or "cuda").

    accelerate keeps one state per process: after a run on the GPU, a run with ``device="cpu"`` in the same process
    is refused ("AcceleratorState has already been initialized"), and after a CPU run a GPU run would silently stay
    on the CPU. Outside a distributed launch (where that state holds the process group), the state is reset when
    the device asked for differs from the one it holds.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    if AcceleratorState._shared_state and not PartialState().use_distributed:
        held_cpu = AcceleratorState().device.type == "cpu"
        wanted_cpu = device == "cpu" or not torch.cuda.is_available()
        if held_cpu != wanted_cpu:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=device == "cpu")


def check_training_device(device: str) -> None:
    """``device`` is one of :data:`TRAINING_DEVICES`, and "cuda" only where CUDA is available."""
    if device not in TRAINING_DEVICES:
        raise IntrudimError(
            f"--device {device!r} is unknown for training; use auto (a visible GPU, else the CPU), cpu or cuda "
            f"(pick a GPU with CUDA_VISIBLE_DEVICES)."
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise IntrudimError("--device cuda was asked for, but no CUDA GPU is available here. Use --device cpu or auto.")


def resolve_training_device(device: str) -> str:
    """"cpu" or "cuda": where ``device`` ("auto", "cpu" or "cuda", checked) makes a run train on this machine."""
    check_training_device(device)
    return "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"

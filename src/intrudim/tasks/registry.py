"""The task registry: generated tasks (offline) and the paper's six tasks (local data)."""

from __future__ import annotations

import difflib
import os

from intrudim.errors import IntrudimError
from intrudim.tasks.base import Task, TaskInfo, take_train_fraction
from intrudim.tasks.generated import (
    DEFAULT_TRAIN_SIZE,
    DEFAULT_VALIDATION_SIZE,
    GeneratedTaskSpec,
    generated_task_specs,
    running_text_task_specs,
)
from intrudim.tasks.real import RealTaskSpec, load_real_task, real_task_specs


def _specs() -> dict[str, GeneratedTaskSpec | RealTaskSpec]:
    return {spec.name: spec for spec in (*generated_task_specs(), *running_text_task_specs(), *real_task_specs())}


def task_names() -> list[str]:
    """Every registered task name, generated tasks first."""
    return list(_specs())


def list_tasks() -> list[TaskInfo]:
    """Name, kind, classes, sizes and whether each task is available offline (``intrudim tasks``)."""
    return [spec.info() for spec in _specs().values()]


def get_task(
    name: str,
    *,
    seed: int = 0,
    train_fraction: float = 1.0,
    data_path: str | os.PathLike[str] | None = None,
    max_train_examples: int | None = None,
    max_validation_examples: int | None = None,
) -> Task:
    """Load a task by name.

    Generated tasks (classification and running text) are made from ``seed`` (``max_*_examples`` set their sizes,
    defaults 4000/400);
    the paper's tasks are read from ``data_path`` or the local ``datasets`` cache. ``train_fraction``
    keeps a seeded subset of the training split (Fig. 12).
    """
    specs = _specs()
    spec = specs.get(name.lower())
    if spec is None:
        close = difflib.get_close_matches(name.lower(), specs, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise IntrudimError(
            f"Unknown task '{name}'.{hint} Known tasks: {', '.join(specs)} (run `intrudim tasks` for details)."
        )
    if isinstance(spec, GeneratedTaskSpec):
        if data_path is not None:
            raise IntrudimError(f"Task '{name}' is generated; --data-path is only for the paper's tasks.")
        task = spec.build(
            seed,
            train_size=max_train_examples or DEFAULT_TRAIN_SIZE,
            validation_size=max_validation_examples or DEFAULT_VALIDATION_SIZE,
        )
    else:
        task = load_real_task(spec, data_path, max_train_examples, max_validation_examples)
    return take_train_fraction(task, train_fraction, seed)

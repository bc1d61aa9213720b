"""A sweep's training runs as Ray tasks (`intrudim sweep --ray` / `--ray-address HOST:PORT`).

Each run is one task that asks Ray for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; Ray starts it where those
are free (on a GPU node it sees only its own GPUs via CUDA_VISIBLE_DEVICES, and accelerate trains on them) and
sets the task's thread count to its CPUs. The run folders and the base-SVD cache are paths that every node must
see (the same machine, or a shared file system), as for `scan`. A task that dies with its worker or node is run
again by Ray (``max_retries``); it resumes its run from the run's last checkpoint, so no finished step is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.ray_runtime import POLL_SECONDS, address_problem, ray_runtime
from intrudim.train.config import TrainConfig
from intrudim.train.engine import train
from intrudim.train.result import TrainResult
from intrudim.train.run_dir import CONFIG_FILE


@dataclass(frozen=True)
class RaySweepOptions:
    """Where a sweep's runs go: ``address`` None starts a local Ray runtime with ``local_cpus`` CPUs (default all
    cores); each run asks for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs."""

    address: str | None = None
    local_cpus: int | None = None
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.address is not None and (problem := address_problem(self.address)):
            raise IntrudimError(problem)
        if self.cpus_per_run < 1:
            raise IntrudimError(f"--ray-cpus-per-run must be at least 1; got {self.cpus_per_run}.")
        if self.gpus_per_run < 0:
            raise IntrudimError(f"--ray-gpus-per-run must be 0 or more; got {self.gpus_per_run}.")
        if self.local_cpus is not None and self.local_cpus < self.cpus_per_run:
            raise IntrudimError(
                f"A local Ray runtime of {self.local_cpus} CPUs cannot start a run that needs {self.cpus_per_run}."
            )


def train_task(config: TrainConfig, run_dir: str, cache_dir: str, figures: bool, device: str = "auto") -> TrainResult:
    """One run on a Ray worker: a fresh run, or (a retry after a lost worker, or --resume) the run continued."""
    folder = Path(run_dir)
    return train(config, folder, resume=(folder / CONFIG_FILE).is_file(), progress=False,
                 cache_dir=Path(cache_dir), figures=figures, device=device)  # fmt: skip


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the task's own exception here
    if isinstance(cause, IntrudimError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def run_sweep_on_ray(
    jobs: list[tuple[str, TrainConfig, Path]],
    cache_dir: Path,
    options: RaySweepOptions,
    *,
    figures: bool,
    on_done: Callable[[str, TrainResult], None],
    on_wait: Callable[[list[str], float], None] | None = None,
    device: str = "auto",
) -> None:
    """Run ``jobs`` (name, config, run folder) as Ray tasks; ``on_done(name, result)`` here as each finishes, in
    the order they finish. The first run that fails stops the sweep with its error (finished runs are kept and
    --resume skips them); the runs still going are cancelled."""
    with ray_runtime(options.address, cpus=options.local_cpus) as ray:
        resources = ray.cluster_resources()
        if resources.get("CPU", 0) < options.cpus_per_run or resources.get("GPU", 0) < options.gpus_per_run:
            raise IntrudimError(
                f"The Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs; a run "
                f"needs {options.cpus_per_run} CPUs and {options.gpus_per_run:g} GPUs (--ray-cpus-per-run, "
                f"--ray-gpus-per-run). Nothing was trained."
            )
        task = ray.remote(num_cpus=options.cpus_per_run, num_gpus=options.gpus_per_run,
                          max_retries=options.max_retries)(train_task)  # fmt: skip
        pending = {task.remote(config, str(run_dir), str(cache_dir), figures, device): name
                   for name, config, run_dir in jobs}  # fmt: skip
        started = time.monotonic()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS * 5)
                for ref in ready:
                    name = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the run's own error, or its retries ran out
                        raise IntrudimError(f"Run '{name}' failed on Ray: {_cause(exc)}") from None
                    on_done(name, result)
                if on_wait is not None and pending:
                    on_wait(sorted(pending.values()), time.monotonic() - started)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def describe_options(options: RaySweepOptions) -> dict[str, Any]:
    """What sweep.json records of where the runs went."""
    return {"engine": "ray", "ray_address": options.address, "cpus_per_run": options.cpus_per_run,
            "gpus_per_run": options.gpus_per_run}  # fmt: skip

"""Several training runs side by side in worker processes (:mod:`intrudim.side_by_side`), each step reported here.

The demo trains its runs this way: at the same torch thread count a run writes the same weights bit for bit
whether it trains alone or beside another, and two CPU runs side by side take about 2/3 of the time of one after
the other (docs/demo.md, "Timings").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from intrudim.side_by_side import run_side_by_side
from intrudim.train.config import TrainConfig
from intrudim.train.engine import train
from intrudim.train.result import TrainResult


def train_job(config: TrainConfig, run_dir: Path, cache_dir: Path | None, figures: bool = True,
              device: str = "auto", *, report: Callable[[Any], None]) -> TrainResult:  # fmt: skip
    """One run on ``device`` (resumed when its folder exists), every finished step reported as ``report(step)``."""
    return train(config, run_dir, resume=run_dir.exists(), progress=False, cache_dir=cache_dir, figures=figures,
                 on_step=report, device=device)  # fmt: skip


def train_side_by_side(
    jobs: dict[Hashable, tuple[TrainConfig, Path]],
    cache_dir: Path | None,
    *,
    workers: int = 2,
    threads: int | None = None,
    figures: bool = True,
    device: str = "auto",
    on_step: Callable[[Any, int], None] | None = None,
) -> dict[Any, TrainResult]:
    """``{key: (config, run_dir)}`` → ``{key: TrainResult}``, at most ``workers`` runs at a time, each with
    ``threads`` torch threads (default: this process's), ``figures`` written or not, training on ``device``
    (auto, cpu or cuda: :func:`~intrudim.train.engine.train`'s); ``on_step(key, step)`` after every step of every run
    (here, in this process)."""
    return run_side_by_side({key: (train_job, (config, run_dir, cache_dir, figures, device)) for key, (config, run_dir) in jobs.items()},
                            workers=workers, threads=threads, on_event=on_step)  # fmt: skip

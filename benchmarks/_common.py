"""Helpers shared by the benchmark scripts: timing, thread pinning, load average."""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def timed(fn, repeats: int, *args) -> tuple[dict[str, float], object]:
    """Median wall-clock and median process CPU time (all threads) of ``repeats`` calls."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fn(*args)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}, out


def limit_threads(threads: int | None):
    """Pin torch and the BLAS/OpenMP pools to ``threads`` (None: leave the defaults)."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    return threadpool_limits(limits=threads)


def load_average() -> list[float]:
    """1/5/15-minute load average: on a 2-core machine anything well above 2 means other processes competed."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """The --threads and --clock options of the timing benchmarks."""
    parser.add_argument("--threads", type=int, default=None, help="pin torch/BLAS threads (default: all cores)")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="time shown in the table: wall-clock, or process CPU seconds (robust on a busy machine with --threads 1)",
    )  # fmt: skip

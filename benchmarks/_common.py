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


def compare_analyses(adapter: dict[str, list[dict]], matrix: dict[str, list[dict]]) -> str:
    """Two scans' per-matrix results (input name -> matrices): ``same counts, ranks and sweeps; values within …
    relative`` or what differs first. A matrix-major scan stacks the adapters' products with the base factors, and
    a Ray task runs them on one thread (wider or differently threaded GEMMs sum in another order): values equal to
    float rounding (1e-5 relative at most), every decision the same."""
    worst = 0.0
    for name in adapter:
        for a, m in zip(adapter[name], matrix[name], strict=True):
            for key in ("intruders", "intruder_ranks", "epsilon_sweep", "k_sweep", "largest_intruder_rank", "name"):
                if a.get(key) != m.get(key):
                    return f"{name} {a['name']}: {key} differs ({a.get(key)} vs {m.get(key)})"
            for key in ("max_abs_cos", "singular_values", "intruder_energy_share", "effective_rank_delta"):
                x, y = a.get(key), m.get(key)
                for u, v in zip(x if isinstance(x, list) else [x], y if isinstance(y, list) else [y], strict=True):
                    if u is not None and v is not None:
                        worst = max(worst, abs(u - v) / max(abs(u), 1e-12))
    if worst > 1e-5:
        return f"values differ by up to {worst:.1e} relative"
    return f"same counts, ranks and sweeps; values within {worst:.1e} relative"

"""The top-k of a stack of cores on two CPU cores: half of them in a helper process (issue 28). Opt-in.

A matrix-major scan stacks the products of many adapters' factors with one base matrix's factors, then takes each
adapter's top-k singular triplets from its core with ARPACK (:func:`~intrudim.spectral.structured.core_top_k`).
ARPACK holds the GIL, so a second thread runs no faster, and the other CPU core idles for that part of the scan.
Here one helper process takes every other core of a stack while this process takes the rest: each core's top-k is
computed by the same function on the same numbers with the same thread counts in both processes, so the results
are those of one after the other, bit for bit (tested).

**Off by default: it does not pay enough.** Measured on 2 cores (benchmarks/RESULTS.md §13): 1.06× on the
benchmark's LLaMA-7B-shaped random base (whose weak updates need ~340 Lanczos steps), and slower than without it
(0.30 s against 0.24 s for 32 cores) on a base with a decaying spectrum, where ARPACK needs ~7 ms per 4096² core
and sending each core (~1 MB of float64 coordinates) to the helper costs as much as it saves. A helper also
re-imports the caller's ``__main__`` (spawn): a script without an ``if __name__ == "__main__":`` guard cannot use
it. ``INTRUDIM_TOPK_HELPERS=1`` turns it on for the in-process engine; the helper is started on first use and
kept for the life of the process, and used only for a stack of at least :data:`MIN_STACK` cores on the CPU.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from intrudim.spectral.structured import CoreTopK, GramCore, LoraCore, core_top_k

MIN_STACK = 8
"""Fewer cores than this are taken here, one after the other: the helper's hand-off would not pay."""

_POOL: ProcessPoolExecutor | None = None


def helper_processes() -> int:
    """How many helper processes the in-process engine uses: 0 unless ``INTRUDIM_TOPK_HELPERS`` is a positive
    number and this process may run on at least two CPU cores (then 1)."""
    setting = os.environ.get("INTRUDIM_TOPK_HELPERS", "").strip()
    if not (setting.isdigit() and int(setting) > 0):
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if cores >= 2 else 0


def stack_top_k(cores: list[LoraCore | GramCore], k: int, device: str, helpers: int) -> list[CoreTopK | Exception]:
    """Each core's :func:`core_top_k` (``k``, ``device``), or the exception it raised; with ``helpers`` > 0 and a
    stack of at least :data:`MIN_STACK` cores on the CPU, every other core is taken by the helper process."""
    if helpers < 1 or device != "cpu" or len(cores) < MIN_STACK:
        return [_own_top_k(core, k, device) for core in cores]
    theirs = list(range(1, len(cores), 2))
    future: Future = _pool().submit(_top_k_payloads, [_payload(cores[i]) for i in theirs], k)
    results: list[CoreTopK | Exception | None] = [None] * len(cores)
    for i in range(0, len(cores), 2):
        results[i] = _own_top_k(cores[i], k, device)
    try:
        done = future.result()
    except Exception:  # noqa: BLE001 - the helper died (killed, out of memory): its cores are taken here
        _discard_pool()
        done = [None] * len(theirs)
    for i, item in zip(theirs, done, strict=True):
        if item is None:
            results[i] = _own_top_k(cores[i], k, device)
        elif isinstance(item, str):
            results[i] = RuntimeError(item)
        else:
            results[i] = CoreTopK(S=torch.from_numpy(item[0]), Y=torch.from_numpy(item[1]))
    return results  # type: ignore[return-value]


def _own_top_k(core: LoraCore | GramCore, k: int, device: str) -> CoreTopK | Exception:
    try:
        return core_top_k(core, k, device=device)
    except Exception as exc:  # noqa: BLE001 - this core's error, reported on its own input
        return exc


def _payload(core: LoraCore | GramCore) -> tuple[Any, ...]:
    """What the top-k reads of a core, as numpy arrays (pickled to the helper by value)."""
    if isinstance(core, GramCore):
        return ("gram", core.p, core.S0.numpy(), core.B_coords.numpy(), core.C.numpy(), core.AAt.numpy())
    return ("lora", core.p, core.S0.numpy(), core.B_coords.numpy(), core.A_coords.numpy())


def _core(payload: tuple[Any, ...]) -> LoraCore | GramCore:
    kind, p, *arrays = payload
    tensors = [torch.from_numpy(array) for array in arrays]
    if kind == "gram":
        S0, B_coords, C, AAt = tensors
        return GramCore(S0=S0, B_coords=B_coords, C=C, AAt=AAt, p=p)
    S0, B_coords, A_coords = tensors
    return LoraCore(S0=S0, B_coords=B_coords, A_coords=A_coords, p=p)


def _top_k_payloads(payloads: list[tuple[Any, ...]], k: int) -> list[tuple[np.ndarray, np.ndarray] | str]:
    """In the helper: each core's top-k (σ, left vectors) as numpy arrays, or its error's message."""
    out: list[tuple[np.ndarray, np.ndarray] | str] = []
    for payload in payloads:
        try:
            top = core_top_k(_core(payload), k, device="cpu")
            out.append((top.S.numpy(), top.Y.numpy()))
        except Exception as exc:  # noqa: BLE001 - sent back as this core's error
            out.append(f"{type(exc).__name__}: {exc}")
    return out


def _one_thread() -> None:
    """The helper's torch on one thread and its BLAS on :func:`~intrudim.threads.small_blas_threads`, as this
    process's scan analyses a stack (one torch thread per core, :func:`~intrudim.threads.analysis_threads`)."""
    from intrudim.threads import small_blas_threads

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=small_blas_threads(), user_api="blas")
    except ImportError:  # threadpoolctl is a dependency; without it only the speed differs
        pass


def _pool() -> ProcessPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), initializer=_one_thread)
    return _POOL


def _discard_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
        _POOL = None

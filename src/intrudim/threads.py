"""Thread settings that make the default fast: small BLAS calls on one thread, large SVDs on all cores.

The structured LoRA path (:mod:`intrudim.spectral.structured`) makes many small numpy/scipy BLAS calls:
ARPACK's matrix-vector products on a core of a few thousand entries. With OpenBLAS's default of one
thread per core each such call pays for waking and spin-waiting threads, which made a warm ``analyze``
5× slower on 2 cores than with one thread (benchmarks/bench_vs_peft.py). The large dense SVDs of the cold
path run in torch (MKL/LAPACK through OpenMP), a different pool, and keep every core.

On a shared machine (another training run, a test suite, a second analysis on the same cores) OpenMP's default
of spin-waiting at every barrier is the problem: threads that spin burn the cores the other process needs, and
a 2-core machine with two such processes ran MiniLM training steps 6-7x slower than with passive waiting
(benchmarks/bench_shared.py). So intrudim sets ``OMP_WAIT_POLICY=PASSIVE`` when it is imported before torch
and the variable is unset (:func:`prefer_passive_openmp`); set it yourself (e.g. ``ACTIVE``) to choose otherwise.

So intrudim limits numpy/scipy's BLAS pools (``user_api="blas"`` in threadpoolctl: OpenBLAS or MKL as
loaded by numpy and scipy; torch's statically linked MKL is not one of them) to one thread while it
analyses matrices, and leaves torch's threads alone. ``INTRUDIM_BLAS_THREADS`` overrides the limit.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

BLAS_THREADS_ENV = "INTRUDIM_BLAS_THREADS"
OPENMP_WAIT_ENV = "OMP_WAIT_POLICY"


def prefer_passive_openmp() -> bool:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user set it; True when it takes effect (OpenMP not loaded yet).

    OpenMP reads the variable once, when the runtime loads (with torch): later calls change nothing.
    """
    import sys

    if OPENMP_WAIT_ENV in os.environ:
        return False
    os.environ[OPENMP_WAIT_ENV] = "PASSIVE"
    return "torch" not in sys.modules


def limit_threads(threads: int) -> None:
    """At most ``threads`` threads for torch and for numpy/scipy's BLAS, for the rest of the process (``--threads``).

    The limit of :func:`analysis_threads` (one BLAS thread for the small products) still applies within it.
    """
    from intrudim.errors import InvalidConfigError

    if threads < 1:
        raise InvalidConfigError(f"--threads must be at least 1; got {threads}.")
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # a dependency; without it only torch is limited
        return
    threadpool_limits(limits=threads, user_api="blas")


def small_blas_threads() -> int:
    """Threads for numpy/scipy BLAS during matrix analysis: 1, or ``$INTRUDIM_BLAS_THREADS``."""
    value = os.environ.get(BLAS_THREADS_ENV, "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return 1


@contextlib.contextmanager
def analysis_threads() -> Iterator[None]:
    """numpy/scipy BLAS on :func:`small_blas_threads` threads for the block; torch's threads unchanged."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl is a dependency; without it intrudim is only slower
        yield
        return
    with threadpool_limits(limits=small_blas_threads(), user_api="blas"):
        yield

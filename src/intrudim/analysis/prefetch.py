"""Reading the next matrix while this one is analysed (issue 15, "Threads": the warm path's floor).

With a warm base SVD cache, a third of `analyze`'s time went to reading each base matrix W₀, hashing it for the
cache key (BLAKE2b, :func:`intrudim.weights.svd_cache.matrix_hash`) and loading its cached factors, while the
second core sat idle: the analysis itself runs numpy/scipy BLAS on one thread (:mod:`intrudim.threads`).
hashlib, safetensors and torch release the GIL on large buffers, so one background thread reading a job ahead
takes that work off the analysing thread.

Bounded: one job is read ahead of the one being analysed, so at most two jobs' inputs are held at once, whatever
the number of layers (DESIGN.md, "Streaming"). Reading has no effect on values (what is read, hashed and
checked is the same bytes, whichever thread does it), and the analysis itself stays on the calling thread with
its thread settings; an error while reading a job is raised, unchanged, when the loop reaches that job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Read = TypeVar("Read")

READ_AHEAD_ENV = "INTRUDIM_READ_AHEAD"
READ_AHEAD = 1
"""Jobs read ahead of the one being analysed (0: read each job when it is reached, in the calling thread).
One is enough to keep the reads off the analysing thread; each more holds another matrix's inputs in memory.
``$INTRUDIM_READ_AHEAD`` overrides it (``0`` turns the background thread off)."""


def jobs_read_ahead() -> int:
    """:data:`READ_AHEAD`, or ``$INTRUDIM_READ_AHEAD`` when it is a whole number."""
    value = os.environ.get(READ_AHEAD_ENV, "").strip()
    return int(value) if value.isdigit() else READ_AHEAD


def read_ahead(items: Sequence[Item], read: Callable[[Item], Read], ahead: int | None = None) -> Iterator[Read]:
    """``read(item)`` for each item, in order; up to ``ahead`` (default :func:`jobs_read_ahead`) items are read in a
    background thread while the caller works on the current one.

    The caller should drop its reference to a yielded value before asking for the next one (``del``), so that
    no more than ``ahead + 1`` values are alive at once. An exception raised by ``read`` is raised here when its
    item is reached (items after it are never read); closing the iterator early waits for the read in flight.
    """
    ahead = jobs_read_ahead() if ahead is None else ahead
    if ahead < 1 or len(items) < 2:
        for item in items:
            yield read(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="intrudim-read") as pool:
        pending: list[Future[Read]] = [pool.submit(read, item) for item in items[:ahead]]
        following = ahead
        try:
            for _ in range(len(items)):
                future = pending.pop(0)
                value = future.result()  # re-raises the reader's exception, with its message and traceback
                del future
                if following < len(items):
                    pending.append(pool.submit(read, items[following]))
                    following += 1
                yield value
                del value
        finally:
            for future in pending:
                future.cancel()

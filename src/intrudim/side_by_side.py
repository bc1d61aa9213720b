"""Independent jobs side by side in worker processes, their progress reported back to this one.

A CPU training run of a small model keeps 2 cores only ~70 % busy (tokenising, the optimizer's many small tensors,
evaluation, saving), so two such runs in two processes finish in about 2/3 of the time of one after the other.
A run's numbers depend on its torch thread count (the order of floating-point sums), not on what runs beside it:
the workers use this process's thread count, so side by side gives the results of one after the other, bit for
bit (tests/test_side_by_side.py trains the same runs both ways).

Each job is a picklable top-level function called as ``function(*args, report=report)`` in a spawned process
(never a fork of a process that holds torch's threads); ``report(event)`` sends any picklable event back, and
:func:`run_side_by_side` hands it to ``on_event(key, event)`` here, in this process, as it arrives. An error in
a job is raised here, after the other jobs stop. With ``workers`` 1 (or one job) the jobs run here, one after the
other, at ``threads`` too.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any

Job = tuple[Callable[..., Any], tuple[Any, ...]]
"""A job: a top-level function and its positional arguments (it also receives ``report=``)."""


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class _Reporter:
    """``report(event)`` inside a worker: puts (key, event) on the shared queue (picklable, unlike a closure)."""

    def __init__(self, key: Hashable, events: Any) -> None:
        self.key, self.events = key, events

    def __call__(self, event: Any) -> None:
        self.events.put((self.key, event))


def _call(key: Hashable, function: Callable[..., Any], args: tuple[Any, ...], events: Any) -> Any:
    return function(*args, report=_Reporter(key, events))


def run_side_by_side(
    jobs: dict[Hashable, Job],
    *,
    workers: int = 2,
    on_event: Callable[[Hashable, Any], None] | None = None,
    threads: int | None = None,
) -> dict[Hashable, Any]:
    """``{key: (function, args)}`` → ``{key: function(*args, report=...)}``, at most ``workers`` at a time, each
    worker with ``threads`` torch threads (default: this process's count)."""
    import torch

    notify = on_event or (lambda key, event: None)
    own = torch.get_num_threads()
    threads = threads or own
    if workers <= 1 or len(jobs) <= 1:  # here, one after the other, at the same thread count a worker would have
        torch.set_num_threads(threads)
        try:
            return {key: function(*args, report=lambda event, key=key: notify(key, event))
                    for key, (function, args) in jobs.items()}  # fmt: skip
        finally:
            torch.set_num_threads(own)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        events = manager.Queue()

        def drain() -> None:
            while True:
                try:
                    key, event = events.get_nowait()
                except queue_module.Empty:
                    return
                notify(key, event)

        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_start_worker,
                                 initargs=(threads,)) as pool:  # fmt: skip
            futures: dict[Future[Any], Hashable] = {
                pool.submit(_call, key, function, args, events): key for key, (function, args) in jobs.items()
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                drain()
                failed = [future for future in finished if future.exception() is not None]
                if failed:
                    for future in pending:
                        future.cancel()
                    raise failed[0].exception()  # type: ignore[misc]
            drain()
            return {key: future.result() for future, key in futures.items()}

"""The top-k of a matrix-major stack with a helper process (issue 28): the same numbers as one after the other, bit
for bit; a core's error stays its own; a helper that dies costs nothing but time."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
from test_core_batch import planted_base, planted_factors

from intrudim.analysis import top_k_pool
from intrudim.analysis.top_k_pool import MIN_STACK, helper_processes, stack_top_k
from intrudim.scan.units import torch_threads
from intrudim.spectral.core_batch import lora_cores
from intrudim.threads import analysis_threads

K = 10


def stack(shape: tuple[int, int], right_vectors: bool) -> list:
    """14 cores of planted adapters (ranks 1-16, PEFT's init, one inside span(U₀)) on a base large enough for ARPACK."""
    W0, base = planted_base(*shape, seed=3, right_vectors=right_vectors)
    factors = planted_factors(W0, base, seed=4) + planted_factors(W0, base, seed=5)
    return lora_cores(base, factors, W0=W0.to(torch.float32))


def both_ways(cores: list) -> tuple[list, list]:
    with torch_threads(1), analysis_threads():  # as the scan's stack runs
        return stack_top_k(cores, K, "cpu", helpers=0), stack_top_k(cores, K, "cpu", helpers=1)


def assert_identical(alone: list, beside: list) -> None:
    assert len(alone) == len(beside)
    for i, (a, b) in enumerate(zip(alone, beside, strict=True)):
        assert torch.equal(a.S, b.S) and torch.equal(a.Y, b.Y), f"core {i} differs"


@pytest.mark.parametrize("shape,right_vectors", [((320, 240), True), ((240, 320), False)])  # LoraCore, GramCore
def test_the_helper_gives_every_core_the_same_top_k_bit_for_bit(shape, right_vectors):
    cores = stack(shape, right_vectors)
    assert len(cores) >= MIN_STACK
    alone, beside = both_ways(cores)
    assert top_k_pool._POOL is not None  # the helper took every other core
    assert_identical(alone, beside)


def test_a_broken_core_gets_its_own_error_on_either_side_and_the_others_their_top_k():
    cores = stack((320, 240), True)
    for i in (2, 5):  # one taken here, one by the helper
        cores[i] = dataclasses.replace(cores[i], A_coords=cores[i].A_coords[:-7])  # products no longer fit
    alone, beside = both_ways(cores)
    for i in (2, 5):
        assert isinstance(alone[i], Exception) and isinstance(beside[i], Exception)
        assert type(alone[i]).__name__ in str(beside[i]) or type(beside[i]) is type(alone[i])
    good = [i for i in range(len(cores)) if i not in (2, 5)]
    assert_identical([alone[i] for i in good], [beside[i] for i in good])


def test_a_helper_that_dies_leaves_its_cores_to_this_process():
    cores = stack((320, 240), True)
    alone, _ = both_ways(cores)  # starts the helper
    pool = top_k_pool._pool()
    for pid in list(pool._processes):  # what an out-of-memory kill does
        os.kill(pid, signal.SIGKILL)
    with torch_threads(1), analysis_threads():
        again = stack_top_k(cores, K, "cpu", helpers=1)
    assert_identical(alone, again)
    assert top_k_pool._POOL is not pool  # a dead pool is dropped; the next stack starts a new helper


def test_small_stacks_and_the_off_switch_use_no_helper(monkeypatch):
    top_k_pool._discard_pool()
    cores = stack((320, 240), True)[: MIN_STACK - 1]
    with torch_threads(1), analysis_threads():
        stack_top_k(cores, K, "cpu", helpers=1)
    assert top_k_pool._POOL is None
    monkeypatch.setenv("INTRUDIM_TOPK_HELPERS", "0")
    assert helper_processes() == 0
    monkeypatch.setenv("INTRUDIM_TOPK_HELPERS", "1")
    assert helper_processes() == (1 if len(os.sched_getaffinity(0)) >= 2 else 0)
    monkeypatch.delenv("INTRUDIM_TOPK_HELPERS")
    assert helper_processes() == 0  # opt-in: it does not pay enough to be the default (the module's docstring)

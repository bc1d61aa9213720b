"""One planned matrix as a job: read from disk (W₀ hashed, its cache entry, factors or W_t), then analysed."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.matrix import _unchanged, analyze_dense_matrix, analyze_lora_matrix
from intrudim.analysis.planning import AnalysisInputs, MatrixJob
from intrudim.analysis.results import MatrixResult
from intrudim.analysis.rounded import analyze_rounded_dense, analyze_rounded_lora
from intrudim.analysis.top_k_pool import stack_top_k
from intrudim.spectral.core_batch import lora_cores
from intrudim.weights.peft_adapter import LoraFactors
from intrudim.weights.sources import WeightSource
from intrudim.weights.svd_cache import BaseSVDCache, CacheLookup, file_stat


@dataclass
class ReadJob:
    """What one planned matrix needs from disk: W₀, its cache lookup, and the LoRA factors or W_t."""

    job: MatrixJob
    W0: torch.Tensor
    cached: CacheLookup
    factors: LoraFactors | None = None
    Wt: torch.Tensor | None = None


def read_job(inputs: AnalysisInputs, job: MatrixJob, cache: BaseSVDCache, config: AnalyzeConfig) -> ReadJob:
    """Read one planned matrix: W₀ (checked finite), its base SVD's cache entry (hashed and loaded, not computed),
    the factors or W_t. No analysis: it may run in a background thread (:mod:`intrudim.analysis.prefetch`).

    On a cache hit the structured LoRA path needs W₀ only as mapped from the file: the W₀ that was read and hashed
    is let go, so that a job read ahead holds no more of W₀ in memory than the sequential loop did. Its values are
    read from the mapping when the analysis needs them (a wide or square matrix whose cached SVD has no right
    vectors: :class:`~intrudim.spectral.structured.GramCore`), else never."""
    structured = job.module is not None and config.method != "dense"  # LoRA factors (not a weight saved whole)
    if structured:
        key = remembered_key(cache, inputs.base, job.base_key, job.transpose)
        if key is not None:
            cached = cache.lookup_key(key)
            if cached.factors is not None:  # W₀ unchanged since it was hashed (and checked finite): not read
                return ReadJob(job, _mapped_base(inputs, job), cached, factors=inputs.lora_factors(job))
    W0, cached = hashed_lookup(cache, inputs.base, job.base_key, job.transpose, lambda: inputs.base_matrix(job))
    if job.module is None:  # a dense TUNED, a weight the adapter saved whole, or its trainable tokens on W₀
        return ReadJob(job, W0, cached, Wt=inputs.tuned_matrix(job, W0))
    if cached.factors is not None and structured:
        del W0
        W0 = _mapped_base(inputs, job)
    return ReadJob(job, W0, cached, factors=inputs.lora_factors(job))


def remembered_key(cache: BaseSVDCache, source: WeightSource, tensor: str, transposed: bool) -> str | None:
    """The cache key of base matrix ``tensor`` (in the orientation analysed) from the cache's key memo, when its
    file provably has not changed since it was hashed; None when it has to be read and hashed (or no memo)."""
    if cache.memo is None or source.is_pickle or source.in_memory:
        return None
    return cache.memo.get(source.files[tensor], tensor, transposed)


def hashed_lookup(
    cache: BaseSVDCache, source: WeightSource, tensor: str, transposed: bool, read: Callable[[], torch.Tensor],
    *, load: bool = True,
) -> tuple[torch.Tensor, CacheLookup]:
    """``read()`` base matrix ``tensor``, hash it and look its SVD up in the cache (computing nothing), and remember
    the key in the memo unless the file changed while it was read: the next run then needs no hash. ``load=False``:
    the entry's factors are not loaded (``factors`` None; whether it exists is :meth:`BaseSVDCache.path_for`'s)."""
    memo = cache.memo if not (source.is_pickle or source.in_memory) else None
    file = source.files[tensor]
    read_ns, stat_before = time.time_ns(), file_stat(file) if memo is not None else None
    W0 = read()
    cached = cache.lookup(W0, load=load)
    if memo is not None and cached.key is not None:
        memo.put(file, tensor, transposed, cached.key, stat_before, read_ns)
    return W0, cached


def _mapped_base(inputs: AnalysisInputs, job: MatrixJob) -> torch.Tensor:
    """W₀ as mapped from its file, not read: the structured path reads its values only for a GramCore."""
    W0 = inputs.base.load(job.base_key)
    return W0.T if job.transpose else W0


def analyze_read(read: ReadJob, cache: BaseSVDCache, config: AnalyzeConfig) -> MatrixResult:
    """Analyse a read matrix: its base SVD (from the cache, or computed and stored on a miss), then the structured
    LoRA path or the dense one.

    Factors a half-precision cache stored decide only what their certified error cannot change
    (:mod:`intrudim.analysis.rounded`); a matrix with any other decision is analysed again with the float64 SVD
    that --no-cache computes, and its result says ``redecided``."""
    base_svd = cache.resolve(read.W0, read.cached)
    if base_svd.rounding is None:
        return _analyze_with(read, base_svd, config)
    if read.factors is not None:
        f = read.factors
        result = analyze_rounded_lora(read.job, read.W0, base_svd, f.A, f.B, f.scale, config)
    else:
        assert read.Wt is not None
        if torch.equal(read.W0, read.Wt):
            return _unchanged(read.job, base_svd, config)  # no decision depends on the base factors
        result = analyze_rounded_dense(read.job, read.W0, base_svd, read.Wt, config)
    if result is None:
        result = _analyze_with(read, cache.exact_factors(read.W0), config)
        result.redecided = True
    return result


def analyze_reads(
    reads: list[ReadJob], cache: BaseSVDCache, config: AnalyzeConfig,
    each: Callable[[], AbstractContextManager] = nullcontext, top_k_helpers: int = 0,
) -> list[MatrixResult | Exception]:
    """Several read matrices of one base matrix, one per TUNED input (a matrix-major scan's run of units): each as
    :func:`analyze_read` analyses it, the LoRA factors' products with the base factors stacked into one product per
    run of adapters (:func:`~intrudim.spectral.core_batch.lora_cores`; the same numbers to float rounding).

    Batched only where every read holds LoRA factors on one float32/float64 cache entry; otherwise, and for any
    read whose batch fails, each read is analysed alone, so that a bad input's error stays its own. The result at
    each position is the read's result or the exception its analysis raised. ``each()``: a context each read's own
    analysis runs in (the scan's: one torch thread, as its per-matrix units run). ``top_k_helpers``: helper processes
    that take part of the stack's top-k (:mod:`intrudim.analysis.top_k_pool`; the same numbers, bit for bit)."""
    if len(reads) < 2 or not batchable(reads, config):
        return [_alone(read, cache, config) for read in reads]
    try:
        base_svd = cache.resolve(reads[0].W0, reads[0].cached)
        cores = lora_cores(base_svd, [(r.factors.B, r.factors.A, r.factors.scale) for r in reads],  # type: ignore[union-attr]
                           W0=reads[0].W0)  # fmt: skip
    except Exception:  # noqa: BLE001 - e.g. one input's factors do not fit: each read alone finds which
        return [_alone(read, cache, config) for read in reads]
    with each():
        tops = stack_top_k(cores, config.k, config.device, top_k_helpers)
    results: list[MatrixResult | Exception] = []
    for read, core, top in zip(reads, cores, tops, strict=True):
        f = read.factors
        assert f is not None
        try:
            if isinstance(top, Exception):
                raise top
            with each():
                results.append(analyze_lora_matrix(read.job, read.W0, base_svd, f.A, f.B, f.scale, config, core=core,
                                                   top=top))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - this input's error, the others go on
            results.append(exc)
    return results


def batchable(reads: list[ReadJob], config: AnalyzeConfig) -> bool:
    """Whether :func:`analyze_reads` stacks these reads: LoRA factors on the same cached float32/float64 base factors
    (a half-precision entry's decisions go through :mod:`intrudim.analysis.rounded`, one matrix at a time)."""
    if config.method == "dense" or any(read.factors is None or read.cached.factors is None for read in reads):
        return False
    if any(read.cached.factors.rounding is not None for read in reads):  # type: ignore[union-attr]
        return False
    keys = {read.cached.key for read in reads}
    return len(keys) == 1 and None not in keys


def _alone(read: ReadJob, cache: BaseSVDCache, config: AnalyzeConfig) -> MatrixResult | Exception:
    try:
        return analyze_read(read, cache, config)
    except Exception as exc:  # noqa: BLE001 - the caller reports it as this read's error
        return exc


def _analyze_with(read: ReadJob, base_svd, config: AnalyzeConfig) -> MatrixResult:
    job, W0 = read.job, read.W0
    if read.factors is not None:
        factors = read.factors
        return analyze_lora_matrix(job, W0, base_svd, factors.A, factors.B, factors.scale, config)
    assert read.Wt is not None
    if torch.equal(W0, read.Wt):
        return _unchanged(job, base_svd, config)
    return analyze_dense_matrix(job, W0, base_svd, read.Wt, config)


def analyze_job(inputs: AnalysisInputs, job: MatrixJob, cache: BaseSVDCache, config: AnalyzeConfig) -> MatrixResult:
    """One planned matrix: read W₀ (and the factors or W_t), get the base SVD, analyse."""
    return analyze_read(read_job(inputs, job, cache, config), cache, config)

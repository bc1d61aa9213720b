"""Running: each planned matrix through :mod:`intrudim.spectral`, into a :class:`MatrixResult` (Sec. 3–4).

For each analysed matrix W₀ (base) and W_t (tuned), the top-k left singular vectors of W_t are compared
with *all* left singular vectors of W₀ (thin U₀); vector j is an intruder iff its max |cos| < ε.
LoRA adapters are analysed from their factors (structured top-k, :mod:`intrudim.spectral.structured`);
dense tuned models through a top-k Lanczos SVD. Base SVDs come from the on-disk cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from intrudim.analysis.config import CACHE_DTYPES, AnalyzeConfig
from intrudim.analysis.planning import AnalysisInputs, MatrixJob, open_inputs
from intrudim.analysis.prefetch import read_ahead
from intrudim.analysis.results import AnalysisResult, MatrixResult
from intrudim.errors import IntrudimError
from intrudim.spectral.intruders import (
    count_intruders,
    epsilon_sweep,
    intruder_energy_share,
    intruder_pressure,
    intruder_ranks,
    max_abs_cosine,
    update_alignment,
)
from intrudim.spectral.structured import (
    GramCore,
    core_full_spectrum,
    core_top_k,
    lora_core,
    projected_full_spectrum,
)
from intrudim.spectral.svd import (
    dense_top_direction,
    effective_rank,
    low_rank_singular_values,
    low_rank_svd,
    singular_values,
    thin_svd,
    top_k_svd,
)
from intrudim.threads import analysis_threads
from intrudim.weights.peft_adapter import LoraFactors
from intrudim.weights.selection import layer_index, module_type
from intrudim.weights.sources import WeightSource
from intrudim.weights.svd_cache import BaseSVDCache, CacheLookup, default_cache_dir, file_stat


def _k_sweep_labels(p: int, k: int, fractions: tuple[float, ...]) -> list[tuple[str, int]]:
    labels = [(f"k={k}", min(k, p))]
    labels += [(f"{round(f * 100)}%", max(1, round(f * p))) for f in fractions]
    return labels


def _finish(
    job: MatrixJob,
    config: AnalyzeConfig,
    S_t: torch.Tensor,
    max_cos: torch.Tensor,
    S0: torch.Tensor,
    frobenius_sq: float,
    delta_sigma: torch.Tensor | None,
    similarity: torch.Tensor,
    max_cos_all: torch.Tensor | None,
    lora_rank: int | None,
    update: tuple[float, torch.Tensor] | None = None,
    base_U: torch.Tensor | None = None,
) -> MatrixResult:
    ranks = intruder_ranks(max_cos, config.epsilon)
    pressure = alignment = sigma1 = None
    if update is not None and base_U is not None:
        sigma1 = update[0]
        pressure = intruder_pressure(sigma1, S0, config.k)
        alignment = update_alignment(update[1], base_U, config.k) if sigma1 > 0 else 0.0
    largest = ranks[0] if ranks else None
    k_sweep_counts = None
    if max_cos_all is not None:
        p = int(S0.shape[0])
        k_sweep_counts = {
            label: count_intruders(max_cos_all, config.epsilon, K)
            for label, K in _k_sweep_labels(p, config.k, config.k_fractions)
        }
    return MatrixResult(
        name=job.base_key,
        shape=job.shape,
        layer=layer_index(job.base_key),
        module_type=module_type(job.base_key),
        transposed=job.transpose,
        intruders=len(ranks),
        intruder_ranks=ranks,
        max_abs_cos=[float(x) for x in max_cos],
        singular_values=[float(x) for x in S_t],
        base_singular_values=[float(x) for x in S0[: config.k]],
        effective_rank_delta=None if delta_sigma is None else effective_rank(delta_sigma),
        intruder_energy_share=intruder_energy_share(S_t, ranks, frobenius_sq),
        largest_intruder_rank=largest,
        largest_intruder_sigma_ratio=None if largest is None else float(S_t[largest - 1] / S0[0]),
        epsilon_sweep=epsilon_sweep(max_cos, config.epsilons),
        k_sweep=k_sweep_counts,
        lora_rank=lora_rank,
        update_sigma1=sigma1,
        intruder_pressure=pressure,
        update_alignment=alignment,
        similarity=similarity.tolist(),
    )


def analyze_lora_matrix(
    job: MatrixJob, W0: torch.Tensor, base_svd, A: torch.Tensor, B: torch.Tensor, scale: float, config: AnalyzeConfig
) -> MatrixResult:
    """Structured path: top-k of W₀ + s·B·A from the cached base SVD and the factors (no dense SVD)."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    if config.method == "dense":
        return analyze_dense_matrix(
            job, W0, base_svd, W0.to(torch.float64) + scale * (B.to(torch.float64) @ A.to(torch.float64)), config,
            delta_sigma=low_rank_singular_values(B, A, scale) if config.effective_rank else None, lora_rank=int(A.shape[0]),
        )  # fmt: skip
    core = lora_core(base_svd, B, A, scale, W0=W0)  # W₀'s values are read only by a GramCore (no Vh cached)
    top = core_top_k(core, config.k, device=config.device)
    max_cos = top.max_abs_cosine(core.p)
    similarity = top.Y[:n_sim].abs().T
    max_cos_all = None
    if config.k_sweep:
        full = (
            projected_full_spectrum(base_svd.U, W0, B, A, scale) if isinstance(core, GramCore)
            else core_full_spectrum(core)
        )  # fmt: skip
        max_cos_all = full.max_abs_cosine(core.p)
    update_sigma, update_U = low_rank_svd(B, A, scale)  # ΔW's spectrum: effective rank and pressure
    delta_sigma = update_sigma if config.effective_rank else None
    return _finish(
        job, config, top.S, max_cos, base_svd.S, core.frobenius_sq(), delta_sigma, similarity, max_cos_all,
        lora_rank=int(A.shape[0]), update=(float(update_sigma[0]), update_U[:, 0]), base_U=base_svd.U,
    )  # fmt: skip


def analyze_dense_matrix(
    job: MatrixJob,
    W0: torch.Tensor,
    base_svd,
    Wt: torch.Tensor,
    config: AnalyzeConfig,
    *,
    delta_sigma: torch.Tensor | None = None,
    lora_rank: int | None = None,
) -> MatrixResult:
    """Dense path: top-k SVD of W_t (Lanczos), compared with all base left singular vectors."""
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    U0 = base_svd.U
    W0_64, Wt_64 = W0.to(torch.float64), Wt.to(torch.float64)
    if config.k_sweep:
        full = thin_svd(Wt_64)
        top_U, top_S = full.U[:, : config.k], full.S[: config.k]
        max_cos_all = max_abs_cosine(full.U, U0)
    else:
        top = top_k_svd(Wt_64, config.k)
        top_U, top_S = top.U, top.S
        max_cos_all = None
    max_cos = max_abs_cosine(top_U, U0)
    similarity = (top_U.T @ U0[:, :n_sim].to(torch.float64)).abs()
    if delta_sigma is None and config.effective_rank:
        delta_sigma = singular_values(Wt_64 - W0_64)
    return _finish(
        job, config, top_S, max_cos, base_svd.S, float((Wt_64**2).sum()), delta_sigma, similarity, max_cos_all,
        lora_rank=lora_rank, update=dense_top_direction(Wt_64 - W0_64), base_U=U0,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# The job


ProgressCallback = Callable[[int, int, str], None]


def resolve_config(config: AnalyzeConfig | None, overrides: dict[str, Any]) -> AnalyzeConfig:
    """``config`` with keyword overrides applied (or a config built from them); checks that a GPU exists."""
    if config is None:
        config = AnalyzeConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    check_device(config.device)
    return config


def check_device(device: str) -> None:
    """A clear error when ``cuda`` is asked for on a machine without a CUDA GPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IntrudimError(f"--device {device} was asked for, but no CUDA GPU is available here. Use --device cpu.")


def open_cache(config: AnalyzeConfig, cache_dir: str | Path | None, use_cache: bool) -> BaseSVDCache:
    """The base SVD cache every matrix verb reads (``cache_dir`` or the default; none with ``use_cache=False``)."""
    directory = (cache_dir if cache_dir is not None else default_cache_dir()) if use_cache else None
    return BaseSVDCache(directory, dtype=CACHE_DTYPES[config.cache_dtype], device=config.device)


def analyze(
    base: Any = None,
    tuned: Any = None,
    config: AnalyzeConfig | None = None,
    *,
    adapter_name: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | ProgressCallback = False,
    **overrides: Any,
) -> AnalysisResult:
    """Find intruder dimensions of TUNED against BASE, per matrix (Sec. 3–4; Figs. 1–6 and 11).

    For every selected weight matrix: the top-k left singular vectors of the tuned matrix W_t, each one's max |cos|
    to every left singular vector of the base W₀, and the intruders among them (max |cos| < ε; Sec. 4,
    Definition 1), with the ε-sweep (Fig. 5), optionally the k-sweep (Fig. 11), the effective rank of ΔW (Fig. 6)
    and the intruders' energy share. A LoRA adapter is analysed from its factors and the base SVD (cached on disk,
    keyed by content; used for weights in memory too), never merged. ``analyze(peft_model)`` alone works.

    Args:
        base: The pre-trained model W₀ comes from: an embedded name (``"minilm"``, ``"smollm2"``), a Hugging Face
            folder, a ``.safetensors`` file, a Hub repo id ``org/name[@revision]``, an intrudim run directory, a
            Trainer checkpoint, or an ``nn.Module``. None (default): the base a PEFT adapter records
            (``base_model_name_or_path``), or, for a ``PeftModel``, the weight inside each LoRA layer (nothing is
            merged or saved). Given alone (``analyze(x)``), the one argument is TUNED.
        tuned: The fine-tuned model: a PEFT LoRA adapter (a folder, a Hub repo id, or a ``PeftModel`` in memory),
            an intrudim run directory (its ``final/``), a Trainer output_dir (its latest checkpoint) or checkpoint,
            or a fully fine-tuned model (a folder, a file, a Hub id or an ``nn.Module``).
        config: What to measure (default: ``AnalyzeConfig()``, the paper's k = 10 and ε = 0.5). Keyword
            ``overrides`` change single fields instead.
        adapter_name: For a ``PeftModel``: the adapter to analyse (default: its active adapter).
        cache_dir: The base SVD cache directory (default: ``$INTRUDIM_CACHE/svd``, else ``~/.cache/intrudim/svd``).
        use_cache: Read and write the base SVD cache (default True). False computes every base SVD in memory.
        progress: True shows progress on stderr (a bar on a terminal, plain lines otherwise); a callable
            ``(done, total, matrix_name)`` is called after each matrix; False (default) is silent.
        **overrides: Fields of ``AnalyzeConfig`` (``k=20``, ``epsilon=0.3``, ``modules="q_proj"``, …),
            applied to ``config``.

    Returns:
        The ``AnalysisResult``, with one ``MatrixResult`` per analysed matrix, the skipped matrices and why, the
        totals (``total_intruders``) and ``to_json()``, the document ``intrudim analyze --json`` prints.

    Raises:
        IntrudimError: An input that cannot be analysed (a missing file, an adapter of another base, a non-LoRA
            adapter, a pickle file without ``allow_pickle``, …), with a message saying what to do.

    Example:
        ```python
        result = intrudim.analyze("minilm", "my_adapter/", k=10, epsilon=0.5)
        print(result.total_intruders, result.to_json()["matrices"][0]["intruder_ranks"])
        result = intrudim.analyze(peft_model)  # a PeftModel in a notebook
        ```
    """
    if tuned is None:
        if base is None:
            raise IntrudimError("analyze needs TUNED: an adapter, a fine-tuned model, or a PeftModel in memory.")
        base, tuned = None, base  # analyze(adapter) / analyze(peft_model)
    config = resolve_config(config, overrides)
    started = time.perf_counter()
    with open_inputs(base, tuned, config, adapter_name=adapter_name, progress=bool(progress)) as inputs:
        result = _run(inputs, config, open_cache(config, cache_dir, use_cache), progress)
    result.seconds = time.perf_counter() - started
    return result


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
    cache: BaseSVDCache, source: WeightSource, tensor: str, transposed: bool, read: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, CacheLookup]:
    """``read()`` base matrix ``tensor``, hash it and look its SVD up in the cache (computing nothing), and remember
    the key in the memo unless the file changed while it was read: the next run then needs no hash."""
    memo = cache.memo if not (source.is_pickle or source.in_memory) else None
    file = source.files[tensor]
    read_ns, stat_before = time.time_ns(), file_stat(file) if memo is not None else None
    W0 = read()
    cached = cache.lookup(W0)
    if memo is not None and cached.key is not None:
        memo.put(file, tensor, transposed, cached.key, stat_before, read_ns)
    return W0, cached


def _mapped_base(inputs: AnalysisInputs, job: MatrixJob) -> torch.Tensor:
    """W₀ as mapped from its file, not read: the structured path reads its values only for a GramCore."""
    W0 = inputs.base.load(job.base_key)
    return W0.T if job.transpose else W0


def analyze_read(read: ReadJob, cache: BaseSVDCache, config: AnalyzeConfig) -> MatrixResult:
    """Analyse a read matrix: its base SVD (from the cache, or computed and stored on a miss), then the structured
    LoRA path or the dense one."""
    job, W0 = read.job, read.W0
    base_svd = cache.resolve(W0, read.cached)
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


def _run(
    inputs: AnalysisInputs, config: AnalyzeConfig, cache: BaseSVDCache, progress: bool | ProgressCallback
) -> AnalysisResult:
    jobs = inputs.jobs
    results: list[MatrixResult] = []
    reporter = make_reporter(progress, len(jobs), "analyze")
    try:
        with analysis_threads():
            # The next job is read (W₀ hashed, its cache entry loaded) in a background thread while this one is
            # analysed here; the values are those of a plain loop over analyze_job.
            for i, read in enumerate(read_ahead(jobs, lambda job: read_job(inputs, job, cache, config))):
                if reporter is not None:
                    reporter(i, len(jobs), read.job.base_key)
                results.append(analyze_read(read, cache, config))
                del read  # at most the next job's inputs stay in memory besides this one's
        if reporter is not None:
            reporter(len(jobs), len(jobs), "done")
    finally:
        if hasattr(reporter, "close"):
            reporter.close()  # type: ignore[union-attr]
    return AnalysisResult(
        base=inputs.base_spec, tuned=inputs.tuned_spec, tuned_kind=inputs.tuned_kind,
        config=config, matrices=results, skipped=inputs.skipped, seconds=0.0,
        cache_hits=cache.hits, cache_misses=cache.misses,
    )  # fmt: skip


def _unchanged(job: MatrixJob, base_svd, config: AnalyzeConfig) -> MatrixResult:
    """A matrix left exactly as in BASE: its top vectors are the base's own (max |cos| = 1, no intruders)."""
    k = config.k
    n_sim = min(config.similarity_size, base_svd.rank_dim)
    p = base_svd.rank_dim
    similarity = torch.zeros(k, n_sim, dtype=torch.float64)
    idx = torch.arange(min(k, n_sim))
    similarity[idx, idx] = 1.0
    ones = torch.ones(k, dtype=torch.float64)
    return _finish(
        job, config, base_svd.S[:k], ones, base_svd.S, float((base_svd.S**2).sum()),
        torch.zeros(p, dtype=torch.float64) if config.effective_rank else None, similarity,
        torch.ones(p, dtype=torch.float64) if config.k_sweep else None, lora_rank=None,
        update=(0.0, torch.zeros(job.shape[0], dtype=torch.float64)), base_U=base_svd.U,
    )  # fmt: skip


LINE_EVERY_SECONDS = 10.0
"""Without a terminal (a log file, CI), a progress line is printed at most this often, and at the end."""


def make_reporter(progress: bool | ProgressCallback, total: int, label: str = "analyze", what: str = "matrices"):
    """A progress callback ``(done, total, name)``: a rich bar on a terminal, plain lines otherwise (counting
    ``what``)."""
    if callable(progress):
        return progress
    if not progress:
        return None
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return _LineReporter(console, label, what)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.description}"), console=console, transient=True,
    )  # fmt: skip
    bar.start()
    task = bar.add_task("", total=total)

    class _Reporter:
        def __call__(self, done: int, _total: int, name: str) -> None:
            bar.update(task, completed=done, description=name)

        def close(self) -> None:
            bar.stop()

    return _Reporter()


class _LineReporter:
    """Progress as plain lines on stderr (no terminal): the first matrix, then at most one line per
    ``LINE_EVERY_SECONDS``, and the end."""

    def __init__(self, console: Any, label: str, what: str = "matrices") -> None:
        from intrudim.plain_progress import PlainProgress

        self.lines = PlainProgress(console, label, LINE_EVERY_SECONDS)
        self.what = what

    def __call__(self, done: int, total: int, name: str) -> None:
        if done == total or self.lines.due():
            what = "done" if done == total else name
            self.lines(f"{done}/{total} {self.what}, {self.lines.elapsed:.0f} s ({what})", force=True)


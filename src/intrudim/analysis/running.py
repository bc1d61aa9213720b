"""Running: each planned matrix through :mod:`intrudim.spectral`, into a :class:`MatrixResult` (Sec. 3–4).

For each analysed matrix W₀ (base) and W_t (tuned), the top-k left singular vectors of W_t are compared
with *all* left singular vectors of W₀ (thin U₀); vector j is an intruder iff its max |cos| < ε.
LoRA adapters are analysed from their factors (structured top-k, :mod:`intrudim.spectral.structured`);
dense tuned models through a top-k Lanczos SVD. Base SVDs come from the on-disk cache.

This module runs an analysis (:func:`analyze`): the planned matrices in order, each next one read ahead. The
steps have modules of their own: :mod:`~intrudim.analysis.setup` (config, device, cache),
:mod:`~intrudim.analysis.jobs` (reading one matrix and analysing it), :mod:`~intrudim.analysis.matrix` (the
structured and dense paths), :mod:`~intrudim.analysis.progress` (bar or plain lines).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.jobs import analyze_read, read_job
from intrudim.analysis.planning import AnalysisInputs, open_inputs
from intrudim.analysis.prefetch import read_ahead
from intrudim.analysis.progress import ProgressCallback, make_reporter
from intrudim.analysis.results import AnalysisResult, MatrixResult
from intrudim.analysis.setup import open_cache, resolve_config
from intrudim.errors import IntrudimError
from intrudim.threads import analysis_threads
from intrudim.weights.svd_cache import BaseSVDCache


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

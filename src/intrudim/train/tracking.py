"""Intruder dimensions of each checkpoint, measured while training runs (Fig. 7).

Each checkpoint is analysed against the base model with :func:`intrudim.analyze.analyze`, whose base
SVDs are cached on disk after the first checkpoint; LoRA checkpoints are analysed from their factors
(the structured path), so tracking costs a small fraction of the steps between checkpoints.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any


def intruder_summary(result: Any) -> dict[str, Any]:
    """The per-checkpoint record written to metrics.jsonl: totals, and per matrix ranks, σ, max |cos| and the
    intruder pressure σ₁(ΔW)/σ_k(W₀) with the update's alignment (tracked so that a sweep can fit and score the
    prediction, :mod:`intrudim.train.prediction`)."""
    matrices = []
    for matrix in result.matrices:
        matrices.append(
            {
                "name": matrix.name,
                "intruders": int(matrix.intruders),
                "intruder_ranks": [int(rank) for rank in _as_list(matrix.intruder_ranks)],
                "singular_values": [float(value) for value in _as_list(matrix.singular_values)],
                "max_abs_cos": [float(value) for value in _as_list(matrix.max_abs_cos)],
                "effective_rank_delta": matrix.effective_rank_delta,
                "intruder_pressure": _finite_or_none(matrix.intruder_pressure),
                "update_alignment": matrix.update_alignment,
            }
        )
    return {"total_intruders": int(result.total_intruders), "matrices": matrices}


def _finite_or_none(value: float | None) -> float | None:
    """JSON has no infinity: a pressure over a zero base σ_k is recorded as None (not measured)."""
    return None if value is None or not math.isfinite(value) else float(value)


def _as_list(values: Any) -> list[Any]:
    if values is None:
        return []
    if hasattr(values, "tolist"):
        return list(values.tolist())
    return list(values)


def analysis_available() -> bool:
    """Whether ``intrudim.analyze`` can be imported (tracking is skipped, and said so, if not)."""
    try:
        from intrudim.analyze import AnalyzeConfig, analyze  # noqa: F401
    except ImportError:
        return False
    return True


def track_intruders(
    base_model: Path, tuned: Path, *, k: int, epsilon: float, cache_dir: Path, effective_rank: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, Any], float]:
    """Analyse ``tuned`` (an adapter or model folder) against ``base_model``; return (record, seconds).

    During training only the top-k is needed (``effective_rank=False`` skips the spectrum of ΔW, which
    for full fine-tuning is a dense SVD per matrix); the final model gets the effective rank too.
    """
    from intrudim.analyze import AnalyzeConfig, analyze

    start = time.perf_counter()
    config = AnalyzeConfig(k=k, epsilon=epsilon, effective_rank=effective_rank, similarity_size=1, device=device)
    result = analyze(str(base_model), str(tuned), config, cache_dir=cache_dir, progress=False)
    record = intruder_summary(result)
    return record, time.perf_counter() - start

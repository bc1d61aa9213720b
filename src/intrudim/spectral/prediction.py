"""Predicting intruder-prone matrices from their intruder pressure (beyond the paper, Sec. 5's toy model).

A matrix is *predicted* when σ₁(ΔW)/σ_k(W₀) > threshold (:func:`intrudim.spectral.intruders.intruder_pressure`).
:func:`score_threshold` measures a threshold against the intruders found; :func:`fit_threshold` picks the
threshold with the best F1 over a set of observations (the matrices of a sweep's runs, at every tracked step).
Pure arithmetic on floats and booleans: no I/O, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_PRESSURE_THRESHOLD = 0.85
"""Predict an intruder when σ₁(ΔW)/σ_k(W₀) > 0.85. Sec. 5's toy model puts the point at which a rank-one update
enters the top k near 1; refitted with `intrudim predict` over 10 MiniLM runs (LoRA r = 1, 4, 16 and full FT,
seeds 0 and 1; B-only r = 1, 16; 1,080 tracked matrices) the F1-best threshold was 0.83 (leave-one-run-out
folds: 0.83–0.91). There, 0.85 gives precision 0.50, recall 0.88 (in-sample), and 1.0 recall 0.12
(docs/train.md). `intrudim sweep` and `intrudim predict` refit it on the user's own runs."""


@dataclass(frozen=True)
class ThresholdScore:
    """How "pressure > threshold" predicts "the matrix has an intruder" over ``matrices`` observations.

    ``precision``/``recall``/``f1`` are None where undefined (nothing predicted, or nothing found).
    """

    threshold: float
    matrices: int
    predicted: int
    found: int
    predicted_and_found: int
    precision: float | None
    recall: float | None
    f1: float | None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["threshold"] = _json_float(self.threshold)
        return data


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def is_predicted(pressure: float | None, threshold: float) -> bool:
    """Whether a matrix with this pressure is predicted intruder-prone (None: not measured, never predicted)."""
    return pressure is not None and pressure > threshold


def score_threshold(pressures: Sequence[float | None], found: Sequence[bool], threshold: float) -> ThresholdScore:
    """Precision, recall and F1 of ``pressure > threshold`` against ``found`` (one entry per observation)."""
    if len(pressures) != len(found):
        raise ValueError(f"{len(pressures)} pressures but {len(found)} found flags; give one of each per matrix.")
    predicted = [is_predicted(p, threshold) for p in pressures]
    n_predicted = sum(predicted)
    n_found = sum(bool(f) for f in found)
    both = sum(p and bool(f) for p, f in zip(predicted, found, strict=True))
    precision = both / n_predicted if n_predicted else None
    recall = both / n_found if n_found else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 0.0 if both == 0 else 2 * precision * recall / (precision + recall)
    return ThresholdScore(threshold, len(pressures), n_predicted, n_found, both, precision, recall, f1)


def fit_threshold(pressures: Sequence[float | None], found: Sequence[bool]) -> ThresholdScore | None:
    """The threshold with the highest F1 (ties: the higher precision, then the lower threshold); None when no
    observation has an intruder or no pressure was measured.

    Candidates lie between consecutive distinct measured pressures (the geometric mean of the two: pressures
    are ratios, spread over decades), plus one below the smallest, so every distinct split of the sorted
    pressures is tried once.
    """
    values = sorted({p for p in pressures if p is not None and math.isfinite(p)})
    if not values or not any(found):
        return None
    candidates = [values[0] / 2 if values[0] > 0 else -1.0]
    for low, high in zip(values, values[1:], strict=False):
        candidates.append(math.sqrt(low * high) if low > 0 else (low + high) / 2)
    scores = [score_threshold(pressures, found, t) for t in candidates]
    scored = [s for s in scores if s.f1 is not None]
    if not scored:
        return None
    return max(scored, key=lambda s: (s.f1, s.precision or 0.0, -s.threshold))

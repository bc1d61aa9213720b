"""Intruder pressure as a prediction (beyond the paper): scoring and refitting the threshold, planted cases with
known answers and a brute-force reference; the run-folder side (tracking, sweep.json, `intrudim predict`) is in
test_train.py."""

from __future__ import annotations

import math
import random

import pytest

from intrudim.spectral.prediction import fit_threshold, is_predicted, score_threshold


def test_score_counts_a_planted_case() -> None:
    score = score_threshold([0.5, 2.0, 3.0, None], [False, True, False, True], 1.0)
    assert (score.matrices, score.predicted, score.found, score.predicted_and_found) == (4, 2, 2, 1)
    assert (score.precision, score.recall, score.f1) == (0.5, 0.5, 0.5)
    assert not is_predicted(None, 0.0) and not is_predicted(1.0, 1.0) and is_predicted(1.01, 1.0)  # strictly above


def test_undefined_scores_are_none_not_zero() -> None:
    nothing_predicted = score_threshold([0.1, 0.2], [True, False], 5.0)
    assert nothing_predicted.precision is None and nothing_predicted.recall == 0.0 and nothing_predicted.f1 is None
    nothing_found = score_threshold([3.0, 0.2], [False, False], 1.0)
    assert nothing_found.recall is None and nothing_found.precision == 0.0
    with pytest.raises(ValueError, match="3 pressures but 2 found"):
        score_threshold([1.0, 2.0, 3.0], [True, False], 1.0)


def test_fit_separates_a_separable_set_between_the_two_groups() -> None:
    fitted = fit_threshold([0.1, 0.2, 0.3, 5.0, 6.0], [False, False, False, True, True])
    assert fitted is not None
    assert fitted.threshold == pytest.approx(math.sqrt(0.3 * 5.0))  # geometric midpoint of the gap
    assert (fitted.precision, fitted.recall, fitted.f1) == (1.0, 1.0, 1.0)


def test_fit_is_none_without_intruders_or_pressures() -> None:
    assert fit_threshold([0.5, 3.0], [False, False]) is None
    assert fit_threshold([None, None], [True, False]) is None
    assert fit_threshold([], []) is None


def test_fit_finds_the_best_f1_of_every_threshold() -> None:
    """Reference: brute force over every measured pressure as the threshold (and below all), the same F1
    arithmetic written out here; the fit must reach the best F1 found."""
    rng = random.Random(7)
    for trial in range(20):
        n = rng.randint(5, 60)
        found = [rng.random() < 0.4 for _ in range(n)]
        found[0] = True
        # intruder-bearing matrices tend to have higher pressure, with overlap
        pressures = [math.exp(rng.gauss(0.8 if f else -0.3, 0.9)) for f in found]
        best = 0.0
        for t in [0.0, *pressures]:
            tp = sum(p > t and f for p, f in zip(pressures, found, strict=True))
            pp = sum(p > t for p in pressures)
            n_found = sum(f for f in found)
            if pp and tp:
                best = max(best, 2 * tp / (pp + n_found))
        fitted = fit_threshold(pressures, found)
        assert fitted is not None and fitted.f1 == pytest.approx(best), trial
        assert fitted.to_json()["threshold"] == fitted.threshold



def test_held_out_score_fits_on_the_other_runs() -> None:
    from intrudim.train.prediction import Observation, held_out_score, prediction_report

    def obs(run: str, pressure: float, intruders: int) -> Observation:
        return Observation(run, "lora", 1, 0, 10, "final", f"m{pressure}", pressure, 0.1, intruders)

    data = [obs("a", 1.0, 0), obs("a", 4.0, 1), obs("b", 2.0, 0), obs("b", 5.0, 2), obs("c", 1.5, 1), obs("c", 0.5, 0)]
    held = held_out_score(data)
    assert held is not None
    # by hand: without a, b+c fit √(0.5·1.5) ≈ 0.87 (F1 0.8), so a predicts 1.0 (wrong) and 4.0 (right);
    # without b, a+c fit √(1·1.5) ≈ 1.22 (F1 1), so b predicts 2.0 (wrong) and 5.0 (right);
    # without c, a+b fit √(2·4) ≈ 2.83, so c's intruder at 1.5 is missed and 0.5 is not predicted
    assert (held["predicted"], held["found"], held["predicted_and_found"]) == (4, 3, 2)
    assert held["precision"] == 0.5 and held["recall"] == pytest.approx(2 / 3)
    assert held["thresholds"] == [pytest.approx(math.sqrt(0.75)), pytest.approx(math.sqrt(8))]
    assert held_out_score(data[:2]) is None  # one run: nothing to hold out
    report = prediction_report(data)
    assert report["fitted"]["recall"] == 1.0 and report["held_out"] == held
    assert report["misses"] == [] and report["observations"] == 6

"""How well intruder pressure predicts intruders over training runs: the observations tracked in each run's
metrics.jsonl (every matrix at every checkpoint and at the end), a fitted threshold, and where it fails.

`intrudim sweep` writes :func:`prediction_report` of its runs into sweep.json; `intrudim predict` combines any
run and sweep folders (several ranks, seeds and methods) and prints the same report.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.spectral.prediction import (
    DEFAULT_PRESSURE_THRESHOLD,
    fit_threshold,
    is_predicted,
    score_threshold,
)
from intrudim.train.run_dir import CONFIG_FILE, METRICS_FILE

FAILURES_SHOWN = 8  # misses and false alarms listed in the report, the most confident first


@dataclass(frozen=True)
class Observation:
    """One matrix of one tracked checkpoint of one run."""

    run: str
    method: str
    rank: int | None
    seed: int | None
    step: int
    event: str  # "checkpoint" or "final"
    matrix: str
    pressure: float | None
    alignment: float | None
    intruders: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders (with metrics.jsonl) of ``paths``; a sweep folder stands for its run folders."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / METRICS_FILE).is_file():
            found.append(path)
        elif (path / "sweep.json").is_file():
            found.extend(sorted(child for child in path.iterdir() if (child / METRICS_FILE).is_file()))
        elif not path.exists():
            raise IntrudimError(f"'{path}' does not exist; give run folders (`intrudim train --out`) or sweep folders.")
        else:
            raise IntrudimError(
                f"'{path}' is neither a training run folder (no {METRICS_FILE}) nor a sweep folder (no sweep.json); "
                f"give the folders `intrudim train --out` or `intrudim sweep --out` wrote."
            )
    return list(dict.fromkeys(found))


def _describe(run_dir: Path) -> tuple[str, int | None, int | None]:
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "unknown", None, None
    config = config.get("config", config)
    method = str(config.get("method", "unknown"))
    rank = None if method == "full" else config.get("rank")
    return method, rank, config.get("seed")


def observations(paths: Iterable[str | Path]) -> list[Observation]:
    """Every tracked (run, step, matrix) of the run and sweep folders ``paths`` that has a pressure record.

    Runs trained before pressure was tracked contribute nothing (their records lack ``intruder_pressure``). The
    final weights are usually the last checkpoint's too: a (run, step, matrix) is counted once, as its last record.
    """
    result: dict[tuple[str, int, str], Observation] = {}
    for run_dir in _run_dirs(paths):
        method, rank, seed = _describe(run_dir)
        for line in (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run
            tracked = record.get("intruders")
            if record.get("event") not in ("checkpoint", "final") or not isinstance(tracked, dict):
                continue
            for matrix in tracked.get("matrices", []):
                if "intruder_pressure" not in matrix:
                    continue
                key = (str(run_dir), int(record["step"]), matrix["name"])
                result.pop(key, None)  # re-inserted last: the order stays that of the records
                result[key] = Observation(
                    run=str(run_dir), method=method, rank=rank, seed=seed, step=int(record["step"]),
                    event=record["event"], matrix=matrix["name"], pressure=matrix["intruder_pressure"],
                    alignment=matrix.get("update_alignment"), intruders=int(matrix["intruders"]),
                )  # fmt: skip
    return list(result.values())


def _score(obs: Sequence[Observation], threshold: float) -> dict[str, Any]:
    return score_threshold([o.pressure for o in obs], [o.intruders > 0 for o in obs], threshold).to_json()


def prediction_report(obs: Sequence[Observation], threshold: float = DEFAULT_PRESSURE_THRESHOLD) -> dict[str, Any]:
    """Precision and recall of ``pressure > threshold`` over ``obs``, the F1-best threshold refitted on them, the
    same per run (at the default threshold), and the misses and false alarms at the fitted threshold."""
    fitted = fit_threshold([o.pressure for o in obs], [o.intruders > 0 for o in obs])
    at = fitted.threshold if fitted is not None else threshold
    misses = sorted((o for o in obs if o.intruders and not is_predicted(o.pressure, at)),
                    key=lambda o: -(o.intruders))  # fmt: skip
    alarms = sorted((o for o in obs if not o.intruders and is_predicted(o.pressure, at)),
                    key=lambda o: -(o.pressure or 0.0))  # fmt: skip
    runs = list(dict.fromkeys(o.run for o in obs))
    return {
        "rule": "a matrix is predicted intruder-prone when sigma1(dW)/sigma_k(W0) > threshold",
        "observations": len(obs),
        "runs": len(runs),
        "default": _score(obs, threshold),
        "fitted": None if fitted is None else fitted.to_json(),
        "held_out": held_out_score(obs),
        "final_only": _score([o for o in obs if o.event == "final"], at),
        "per_run": [{"run": run, **_score([o for o in obs if o.run == run], threshold)} for run in runs],
        "misses": [o.to_json() for o in misses[:FAILURES_SHOWN]],
        "false_alarms": [o.to_json() for o in alarms[:FAILURES_SHOWN]],
        "failure_notes": failure_notes(obs, at),
    }


def held_out_score(obs: Sequence[Observation]) -> dict[str, Any] | None:
    """Leave one run out: the threshold fitted on the other runs, scored on the left-out run, counts summed over
    runs. The fitted score above is in-sample (fitted and scored on the same matrices); this one is not. None
    with fewer than two runs; a run whose training set has no intruders is scored at the default threshold."""
    runs = list(dict.fromkeys(o.run for o in obs))
    if len(runs) < 2:
        return None
    totals = {"predicted": 0, "found": 0, "predicted_and_found": 0}
    thresholds: list[float] = []
    for run in runs:
        train = [o for o in obs if o.run != run]
        fitted = fit_threshold([o.pressure for o in train], [o.intruders > 0 for o in train])
        threshold = fitted.threshold if fitted is not None else DEFAULT_PRESSURE_THRESHOLD
        thresholds.append(threshold)
        test = [o for o in obs if o.run == run]
        score = score_threshold([o.pressure for o in test], [o.intruders > 0 for o in test], threshold)
        for key in totals:
            totals[key] += getattr(score, key)
    both = totals["predicted_and_found"]
    precision = both / totals["predicted"] if totals["predicted"] else None
    recall = both / totals["found"] if totals["found"] else None
    return {"method": "leave one run out", "matrices": len(obs), **totals, "precision": precision, "recall": recall,
            "thresholds": [min(thresholds), max(thresholds)]}  # fmt: skip


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def failure_notes(obs: Sequence[Observation], threshold: float) -> list[str]:
    """Where the prediction fails, in words: the alignment of false alarms (an update inside the base's top space
    makes no intruder however large) and the pressure of misses (intruders from updates below the threshold)."""
    notes: list[str] = []
    alarms = [o for o in obs if not o.intruders and is_predicted(o.pressure, threshold)]
    hits = [o for o in obs if o.intruders and is_predicted(o.pressure, threshold)]
    misses = [o for o in obs if o.intruders and not is_predicted(o.pressure, threshold)]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    alarm_align = mean([o.alignment for o in alarms if o.alignment is not None])
    hit_align = mean([o.alignment for o in hits if o.alignment is not None])
    if alarms and alarm_align is not None and hit_align is not None:
        notes.append(
            f"{_plural(len(alarms), 'false alarm')}: mean alignment of ΔW's top direction with the base's top-k space "
            f"{alarm_align:.2f}, against {hit_align:.2f} for correct predictions"
        )
    if misses:
        pressures = sorted(o.pressure for o in misses if o.pressure is not None)
        if pressures:
            notes.append(
                f"{_plural(len(misses), 'miss', 'misses')}: intruders in matrices whose pressure was "
                f"{pressures[0]:.2f}–{pressures[-1]:.2f}, "
                f"below the threshold {threshold:.2f} (a small update can rotate base singular vectors whose singular "
                f"values lie close together, so that the rotated vector matches no single base vector)"
            )
    by_method: dict[str, list[Observation]] = {}
    for o in obs:
        by_method.setdefault(o.method, []).append(o)
    for method, group in by_method.items():
        score = score_threshold([o.pressure for o in group], [o.intruders > 0 for o in group], threshold)
        if score.found == 0 and score.predicted:
            notes.append(f"{method}: {score.predicted} matrices predicted but none has an intruder")
    return notes

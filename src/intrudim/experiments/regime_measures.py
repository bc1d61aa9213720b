"""The regime experiment's measurements: each run's forgetting and regime, and the repair λ-sweep of each LoRA run.

Forgetting is ``intrudim forgetting``'s measurement (:class:`~intrudim.evaluate.forgetting.ForgettingProbe`: the
text cut into the same windows for every model, BASE scored once, tuned − base with its paired bootstrap interval
over windows); each run's per-window losses are kept so that two runs can be compared window by window. The repair
is ``intrudim repair --sweep … --control all`` (:func:`~intrudim.repair.sweep.repair_sweep`) on the run's final
adapter, its outputs (report.html, JSON, CSV, figure) in OUT/seed-S/repair/RUN/. Each measurement is a JSON file in
OUT/seed-S/measurements/, reused by a second run with the same settings.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.experiments.claims import forgetting_regime
from intrudim.experiments.regime_config import RegimeConfig
from intrudim.fileio import write_json_atomic


def forgetting_config(config: RegimeConfig) -> ForgettingConfig:
    """The forgetting measurement of every run (and of the repair sweep: the same text, tokens and windows)."""
    return ForgettingConfig(text=config.text, max_tokens=config.max_tokens)


class Forgetting:
    """The text tokenized once for BASE (prepared before any training, so that a model or text it cannot score fails
    at once), BASE's per-window losses computed on first use."""

    def __init__(self, config: RegimeConfig) -> None:
        from intrudim.evaluate.forgetting import ForgettingProbe

        self.config = config
        self.probe = ForgettingProbe.prepare(config.model, config.text, forgetting_config(config))
        if self.probe.measure != "perplexity":
            raise IntrudimError(
                f"--model '{config.model}' is not a causal language model (its forgetting measure would be "
                f"{self.probe.measure}): the regime experiment fine-tunes a causal LM on running text and states each "
                f"run's regime as a perplexity ratio. Give a causal LM: smollm2 (embedded) or a *ForCausalLM folder."
            )
        self._base: Any = None

    def base_scores(self) -> Any:
        if self._base is None:
            self._base = self.probe.scores(self.probe.load_base_model())
        return self._base

    def measure(self, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One seed's forgetting: a row per run (tuned − base, its 95% interval, losses, perplexities, per-window
        losses) and each run's regime (tuned perplexity / base perplexity, destructive above 2)."""
        base = self.base_scores()
        rows = {}
        for name, run in runs.items():
            model, _ = self.probe.load_tuned_model(Path(run["run_dir"]) / "final")
            tuned = self.probe.scores(model)
            result = self.probe.summarize(base, tuned)
            rows[name] = {
                "delta": result.delta, "ci95": list(result.ci95), "base_loss": result.base.loss,
                "tuned_loss": result.tuned.loss, "base_perplexity": result.base.perplexity,
                "tuned_perplexity": result.tuned.perplexity, "accuracy": run["accuracy"],
                "reached_target": run["reached_target"], "intruders": run["intruders"], "steps": run["steps"],
                "window_losses": [float(x) for x in tuned.losses],
            }  # fmt: skip
        data = {"model": self.config.model, "measure": self.probe.measure, "text": self.probe.text.to_json(),
                "tokens": self.probe.tokens, "sequences": self.probe.sequences, "seq_len": self.probe.config.seq_len,
                "base_window_losses": [float(x) for x in base.losses], "rows": rows}  # fmt: skip
        data["regime"] = forgetting_regime(data)
        return data


def recovered_fraction(base_loss: float, tuned_loss: float, loss: float) -> float | None:
    """The share of TUNED's forgetting (tuned − base loss) that a repaired model takes back: (tuned − repaired) /
    (tuned − base). 1: back to BASE's loss; 0: none; < 0: worse than TUNED. None when TUNED did not forget."""
    forgot = tuned_loss - base_loss
    if not forgot > 0:
        return None
    return (tuned_loss - loss) / forgot


def recovered_table(sweep: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """method → λ (as text) → the recovered fraction of a repair sweep's JSON."""
    base, tuned = sweep.get("base_loss"), sweep.get("tuned_loss")
    table: dict[str, dict[str, float | None]] = {}
    for point in sweep.get("points", []):
        loss = point.get("forgetting_loss")
        value = None if None in (base, tuned, loss) else recovered_fraction(base, tuned, loss)
        table.setdefault(point["method"], {})[f"{point['lambda']:g}"] = value
    return table


def measure_repair(config: RegimeConfig, run: dict[str, Any], out: Path, cache_dir: Path | None,
                   say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """The λ-sweep of one LoRA run's intruders against both controls (task accuracy and forgetting per point), with
    the recovered fraction of each; a run with no intruders (counted at the end of its training, k=10, ε=0.5, as the
    repair counts them) has nothing to scale and is not swept."""
    if run["intruders"] == 0:
        return {"skipped": "the run has no intruder dimensions (k=10, ε=0.5, counted at the end of training): "
                           "nothing to scale, so the repair sweep was not run", "total_intruders": 0}  # fmt: skip
    from intrudim.repair.sweep import repair_sweep, write_sweep_outputs
    from intrudim.repair.sweep_result import SWEEP_CONTROLS

    final = Path(run["run_dir"]) / "final"
    result = repair_sweep(config.model, final, config.lambdas, SWEEP_CONTROLS, task=config.task, text=config.text,
                          max_tokens=config.max_tokens, max_examples=config.max_examples, cache_dir=cache_dir,
                          progress=say)  # fmt: skip
    lambdas = ",".join(f"{lam:g}" for lam in config.lambdas)
    command = (f"intrudim repair {config.model} {final} --sweep {lambdas} --control all --task {config.task} "
               f"--text {config.text} --max-tokens {config.max_tokens} --max-examples {config.max_examples} --out {out}")  # fmt: skip
    write_sweep_outputs(result, out, command=command)
    data = result.to_json()
    data["recovered"] = recovered_table(data)
    return data


def reuse_or_measure(path: Path, measure: Callable[[], dict[str, Any]], reused: list[str], label: str) -> dict[str, Any]:
    """The JSON at ``path`` if an earlier run with the same settings wrote it, else ``measure()`` written there."""
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            reused.append(label)
            return data
    data = measure()
    write_json_atomic(path, data)
    return data

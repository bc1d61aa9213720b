"""`intrudim regime`: forgetting and repair in the paper's regime, over seeds (issue 27, part 3).

The paper's forgetting (Fig. 9, and v2's LLaMA runs) is a modest rise of the pre-training loss at equal task
accuracy, and v2's claim is that this forgetting is largely localised in the intruder dimensions. This experiment
tests both where they apply: a causal LM (default the embedded SmolLM2-135M) fine-tuned as a language model on a task
whose target is running text (``review-summary``: the loss over the whole answer sentence, as instruction tuning
does), at learning rates chosen by a rule written down before any claim is evaluated (:meth:`RegimeConfig.rule`:
the smallest candidate at which LoRA r=1 reaches the target accuracy within the step budget; full fine-tuning's η
the same way). Then, per seed: LoRA r=1, a higher rank (α = 2r) and full fine-tuning trained to the target; each
run's forgetting on pre-training-like text and its regime (tuned / base perplexity, "destructive" above 2); the
repair λ-sweep of each LoRA run's intruders against the non-intruder control and the norm-matched shrink, with the
fraction of forgetting each recovers. The questions (is r=1's forgetting above the higher rank's? is full fine-tuning
above or below LoRA? do the intruders recover more than each control at each λ?) are decided per seed and over the
seeds (held / fragile / not held / not measured, n / N), each with its regime (:mod:`.regime_claims`).

OUT holds regime.json (the settings and the rule), lr-choice/ (the rule's runs and choice.json), seed-S/runs/NAME
(the other runs), seed-S/measurements/*.json, seed-S/repair/RUN/ (each sweep's report), summary.json and report.html.
A second run with the same settings reuses every finished run and measurement (and adds seeds); other settings in
the same OUT are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.experiments.demo_progress import DemoProgress
from intrudim.experiments.regime_claims import aggregate, decide_seed
from intrudim.experiments.regime_config import (
    FULL,
    REGIME_FILE,
    REGIME_KIND,
    SUMMARY_FILE,
    RegimeConfig,
    lora_name,
    seed_folder,
)
from intrudim.experiments.regime_measures import Forgetting, measure_repair, reuse_or_measure
from intrudim.experiments.regime_runs import (
    CHOICE_FOLDER,
    choose_rates,
    planned_choice_units,
    planned_seed_units,
    train_seeds,
)
from intrudim.fileio import ensure_writable_directory, write_json_atomic

FORGETTING_UNITS = 10
REPAIR_UNITS = 30
"""Progress units (step equivalents, roughly) of one seed's forgetting and of one repair sweep."""


def check_out(out: Path, config: RegimeConfig, *, overwrite: bool) -> bool:
    """Whether OUT is to be replaced. OUT is new or empty, or holds a regime experiment with the same settings
    (reused); with other settings it is refused unless ``overwrite`` (True: replace it, once the inputs are checked);
    a non-empty folder that is not a regime experiment is refused, ``overwrite`` or not."""
    if not out.exists() or not any(out.iterdir()):
        return False
    path = out / REGIME_FILE
    stored: Any = None
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            stored = None
    if not isinstance(stored, dict) or stored.get("kind") != REGIME_KIND:
        raise IntrudimError(
            f"--out '{out}' exists, is not empty and holds no regime experiment ({REGIME_FILE} is missing or not "
            f"one); nothing was touched{', not even with --overwrite' if overwrite else ''}. Choose a new or empty "
            f"folder."
        )
    if overwrite:
        return True
    wanted = json.loads(json.dumps(config.settings_json()))
    settings = stored.get("settings", {})
    differences = [f"{key}: stored {settings.get(key)!r}, now {value!r}" for key, value in wanted.items()
                   if settings.get(key) != value]  # fmt: skip
    if differences:
        raise IntrudimError(
            f"--out '{out}' holds a regime experiment made with other settings ({'; '.join(differences)}); nothing was "
            f"changed. Its runs are reused only with the same settings (other seeds may be added): choose another "
            f"--out, pass the stored settings, or --overwrite to replace it."
        )
    return False


def recipe_text(config: RegimeConfig, lora_lr: float, full_lr: float) -> str:
    return (f"{config.model} as a language model on '{config.task}' (loss over the whole answer), at most "
            f"{config.steps} steps × batch {config.batch_size}, stopped at held-out accuracy ≥ "
            f"{config.target_accuracy:g} ({config.max_examples} examples); LoRA α=2r at α·η={lora_lr:g} "
            f"({config.schedule}, norms η={config.other_lr:g}), full FT η={full_lr:g}; forgetting: next-token loss on "
            f"{config.max_tokens} tokens of {config.text}")  # fmt: skip


def planned_units(config: RegimeConfig) -> int:
    per_seed = FORGETTING_UNITS + 2 * REPAIR_UNITS
    return planned_choice_units(config) + planned_seed_units(config) + per_seed * len(config.seeds)


def _without_windows(forgetting: dict[str, Any]) -> dict[str, Any]:
    """A seed's forgetting for summary.json: the per-window losses stay in seed-S/measurements/forgetting.json."""
    rows = {name: {k: v for k, v in row.items() if k != "window_losses"} for name, row in forgetting["rows"].items()}
    return {**{k: v for k, v in forgetting.items() if k != "base_window_losses"}, "rows": rows}


def run_regime(
    config: RegimeConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
    console: Any = None,
    workers: int = 2,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run the experiment into OUT (reusing what an earlier run with the same settings finished); return the summary.

    Writes OUT/summary.json (the recipe, the rule and its outcome, every seed's runs, forgetting, regime, repair
    sweeps and claims, the aggregates over seeds) and OUT/report.html. ``workers``: runs trained side by side (1: one
    after the other here; the same numbers either way). ``cache_dir``: the base-SVD cache (default: the one every verb
    shares).
    """
    from intrudim.report.regime_report import write_regime_report
    from intrudim.tasks import get_task

    out = Path(out)
    cache = Path(cache_dir) if cache_dir is not None else None
    replace_out = check_out(out, config, overwrite=overwrite)
    get_task(config.task, seed=config.choice_seed, max_train_examples=1, max_validation_examples=1)  # a bad name fails now
    forgetting = Forgetting(config)  # a model or text forgetting cannot score fails before any training
    if replace_out:
        shutil.rmtree(out)
    out = ensure_writable_directory(out)
    write_json_atomic(out / REGIME_FILE, {"kind": REGIME_KIND, "settings": config.settings_json(),
                                          "config": config.to_json(), "rule": config.rule()})  # fmt: skip
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    reused: list[str] = []
    r1, high = lora_name(1), lora_name(config.high_rank)
    with DemoProgress(planned_units(config), enabled=progress, console=console, label="regime") as bar:
        bar.set_stage(f"the rule: LoRA r=1's α·η and full FT's η on seed {config.choice_seed}")
        choices = choose_rates(config, out, cache, bar, workers)
        outcome = {run: choice.to_json() for run, choice in choices.items()}
        write_json_atomic(out / CHOICE_FOLDER / "choice.json", {"rule": config.rule(), "outcome": outcome})
        seconds["rule"] = round(time.perf_counter() - started, 1)
        bar.set_stage("every seed's runs at the chosen rates")
        step = time.perf_counter()
        runs = train_seeds(config, out, choices, cache, bar, workers, reused)
        reused[:0] = [f"rule run {run} at {t['lr']:g}" for run, c in choices.items() for t in c.tried if t.get("reused")]
        seconds["runs"] = round(time.perf_counter() - step, 1)
        recipe = recipe_text(config, choices[r1].chosen, choices[FULL].chosen)
        per_seed: dict[int, dict[str, Any]] = {}
        for seed in config.seeds:
            folder = out / seed_folder(seed)
            step = time.perf_counter()
            bar.set_stage(f"seed {seed}: forgetting on {config.text}")
            measured = reuse_or_measure(folder / "measurements" / "forgetting.json",
                                        lambda seed=seed: forgetting.measure(runs[seed]), reused,
                                        f"forgetting (seed {seed})")  # fmt: skip
            bar.advance(FORGETTING_UNITS)
            repairs = {}
            for run in (r1, high):
                bar.set_stage(f"seed {seed}: repair sweep of {run}")

                def say(message: str, seed: int = seed, run: str = run) -> None:
                    bar.advance(0, f"seed {seed} {run}: {message}")

                repairs[run] = reuse_or_measure(
                    folder / "measurements" / f"repair-{run}.json",
                    lambda seed=seed, run=run, say=say: measure_repair(config, runs[seed][run],
                                                                       out / seed_folder(seed) / "repair" / run, cache, say),
                    reused, f"repair {run} (seed {seed})")  # fmt: skip
                bar.advance(REPAIR_UNITS)
            per_seed[seed] = {"runs": runs[seed], "forgetting": measured, "repairs": repairs,
                              "claims": decide_seed(config, measured, repairs, recipe)}  # fmt: skip
            seconds[f"seed {seed} measurements"] = round(time.perf_counter() - step, 1)
        bar.set_stage("claims and report")
        combined = aggregate(config, per_seed)
        first = per_seed[config.seeds[0]]["forgetting"]
        summary: dict[str, Any] = {
            "kind": "intrudim-regime-summary", "config": config.to_json(), "rule": config.rule(), "rule_outcome": outcome,
            "chosen": {"lora_total_lr": choices[r1].chosen, "full_lr": choices[FULL].chosen,
                       "reached": {run: choice.reached for run, choice in choices.items()}},
            "recipe": recipe, "seeds": list(config.seeds),
            "seed_folders": {str(seed): seed_folder(seed) for seed in config.seeds},
            "forgetting_measure": {"measure": first["measure"], "text": first["text"], "tokens": first["tokens"],
                                   "sequences": first["sequences"], "seq_len": first["seq_len"],
                                   "base_loss": next(iter(first["rows"].values()))["base_loss"],
                                   "base_perplexity": next(iter(first["rows"].values()))["base_perplexity"]},
            "per_seed": {str(seed): {**data, "forgetting": _without_windows(data["forgetting"])}
                         for seed, data in per_seed.items()},
            **combined,
        }  # fmt: skip
        claims = summary["claims"]
        summary.update({key: sum(1 for c in claims if c["verdict"] == verdict)
                        for key, verdict in (("held", "held"), ("fragile", "fragile"), ("not_held", "not held"),
                                             ("not_measured", "not measured"))})  # fmt: skip
        summary["seconds"] = {**seconds, "total": round(time.perf_counter() - started, 1)}
        summary["reused"] = reused
        write_json_atomic(out / SUMMARY_FILE, summary)
        summary["report"] = str(write_regime_report(summary, out))
        bar.advance(bar.total)
    return summary

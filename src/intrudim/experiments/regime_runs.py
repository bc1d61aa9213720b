"""The regime experiment's training: the rule that chooses the learning rates, then every seed's runs.

The rule (:meth:`RegimeConfig.rule`) walks each method's candidates in ascending order on the first seed and stops
at the first whose run reaches the target accuracy (:func:`smallest_reaching`). LoRA r=1's search and full
fine-tuning's run side by side in two worker processes, and so do the seeds' runs
(:mod:`intrudim.side_by_side`: the same weights as one after the other). A finished run (its result.json) is reused,
an interrupted one resumed, as ``train --resume`` does; the first seed's r=1 and full runs are the runs of the rule
that chose their rates (OUT/lr-choice/…), not trained twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrudim.experiments.demo_progress import DemoProgress
from intrudim.experiments.regime_config import FULL, RegimeConfig, lora_name, seed_folder

CHOICE_FOLDER = "lr-choice"


@dataclass(frozen=True)
class RateChoice:
    """What the rule found for one method: the candidates tried (in order), the chosen rate, whether it reached."""

    run: str  # lora-r1 | full
    candidates: tuple[float, ...]
    tried: tuple[dict[str, Any], ...]  # {lr, accuracy, steps, reached, run_dir}
    chosen: float
    reached: bool

    @property
    def run_dir(self) -> str:
        """The run at the chosen rate (the first seed's run of this method)."""
        return next(t["run_dir"] for t in self.tried if t["lr"] == self.chosen)

    def outcome(self) -> str:
        what = "α·η" if self.run != FULL else "η"
        tried = ", ".join(f"{t['lr']:g} → {t['accuracy']:.3f} in {t['steps']} steps" for t in self.tried)
        if self.reached:
            return f"{self.run}: {what} = {self.chosen:g} (tried {tried})."
        return (f"{self.run}: no candidate reached the target accuracy (tried {tried}); continuing with the largest, "
                f"{what} = {self.chosen:g}: comparisons at equal accuracy are not measured.")  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"run": self.run, "candidates": list(self.candidates), "tried": list(self.tried),
                "chosen": self.chosen, "reached": self.reached, "outcome": self.outcome()}  # fmt: skip


def smallest_reaching(
    candidates: Sequence[float], target: float, outcome: Callable[[float], dict[str, Any]]
) -> tuple[float, bool, list[dict[str, Any]]]:
    """The rule: ``outcome(lr)`` (a run's ``accuracy`` and more) for each candidate in ascending order until one's
    accuracy is ≥ ``target``; (that candidate, True, what was tried), or (the largest, False, all tried)."""
    tried: list[dict[str, Any]] = []
    for lr in sorted(candidates):
        found = {"lr": lr, **outcome(lr)}
        found["reached"] = found.get("accuracy") is not None and found["accuracy"] >= target
        tried.append(found)
        if found["reached"]:
            return lr, True, tried
    return max(candidates), False, tried


def choice_dir(out: Path, run: str, lr: float) -> Path:
    return out / CHOICE_FOLDER / f"{run}-lr-{lr:g}"


def _run_summary(run: str, config: Any, result: Any) -> dict[str, Any]:
    return {"run": run, "run_dir": str(result.run_dir), "method": config.method,
            "rank": config.rank if config.method != "full" else None, "alpha": config.resolved_alpha,
            "lr": config.total_lr if config.method != "full" else config.learning_rate,
            "learning_rate": config.learning_rate, "steps": result.steps, "accuracy": result.final_accuracy,
            "reached_target": result.reached_target, "intruders": result.final_intruders,
            "seconds": round(result.seconds, 2)}  # fmt: skip


def _train_or_reuse(config: Any, run_dir: Path, cache_dir: Path | None,
                    on_step: Callable[[int], None]) -> tuple[Any, bool]:  # fmt: skip
    """(the run's TrainResult, whether a finished run in ``run_dir`` was reused); an interrupted one is resumed."""
    from intrudim.train.engine import train
    from intrudim.train.sweep import _completed

    done = _completed(run_dir)
    if done is not None:
        return done, True
    return train(config, run_dir, resume=run_dir.exists(), progress=False, cache_dir=cache_dir, on_step=on_step), False


def choose_rate_job(config: RegimeConfig, out: Path, run: str, cache_dir: Path | None, *,
                    report: Callable[[Any], None]) -> RateChoice:  # fmt: skip
    """One method's search (a side-by-side job): its candidates trained on the first seed in ascending order until
    one reaches the target; every step reported as ``report((lr, step))``, every finished candidate as
    ``report((lr, "done"))``."""
    candidates = config.full_lrs if run == FULL else config.lrs

    def outcome(lr: float) -> dict[str, Any]:
        train_config = config.train_config(config.choice_seed, run, lr)
        result, reused = _train_or_reuse(train_config, choice_dir(out, run, lr), cache_dir,
                                         lambda step: report((lr, step)))  # fmt: skip
        report((lr, "done"))
        return {**_run_summary(run, train_config, result), "reused": reused}

    chosen, reached, tried = smallest_reaching(candidates, config.target_accuracy, outcome)
    return RateChoice(run, tuple(candidates), tuple(tried), chosen, reached)


def choose_rates(config: RegimeConfig, out: Path, cache_dir: Path | None, progress: DemoProgress,
                 workers: int) -> dict[str, RateChoice]:  # fmt: skip
    """LoRA r=1's α·η and full fine-tuning's η by the rule, the two searches side by side."""
    from intrudim.side_by_side import run_side_by_side

    r1 = lora_name(1)
    done_steps: dict[tuple[str, float], int] = {}

    def on_event(run: Any, event: Any) -> None:
        lr, step = event
        seen = done_steps.get((run, lr), 0)
        if step == "done":  # a reused or early-stopped run: the rest of its budget
            progress.advance(config.steps - seen, f"{run} at {lr:g} done")
            done_steps[(run, lr)] = config.steps
        else:
            progress.advance(step - seen, f"{run} at {lr:g}, step {step}/{config.steps}")
            done_steps[(run, lr)] = step

    jobs = {run: (choose_rate_job, (config, out, run, cache_dir)) for run in (r1, FULL)}
    choices = run_side_by_side(jobs, workers=workers, on_event=on_event)
    for run, choice in choices.items():  # candidates above the chosen one are never trained: their budget is done
        untried = len(choice.candidates) - len(choice.tried)
        progress.advance(untried * config.steps, f"{run}: rate chosen")
    return {run: choices[run] for run in (r1, FULL)}


def planned_choice_units(config: RegimeConfig) -> int:
    return (len(config.lrs) + len(config.full_lrs)) * config.steps


def train_seeds(config: RegimeConfig, out: Path, choices: dict[str, RateChoice], cache_dir: Path | None,
                progress: DemoProgress, workers: int, reused: list[str]) -> dict[int, dict[str, dict[str, Any]]]:  # fmt: skip
    """Every seed's three runs at the chosen rates (the first seed's r=1 and full: the rule's own runs), trained or
    reused (named in ``reused``); seed → run → its summary."""
    from intrudim.train.side_by_side import train_side_by_side
    from intrudim.train.sweep import _completed

    r1 = lora_name(1)
    rate = {r1: choices[r1].chosen, lora_name(config.high_rank): choices[r1].chosen, FULL: choices[FULL].chosen}
    summaries: dict[int, dict[str, dict[str, Any]]] = {}
    todo: dict[tuple[int, str], tuple[Any, Path]] = {}
    for seed in config.seeds:
        summaries[seed] = {}
        for run in config.run_names:
            train_config = config.train_config(seed, run, rate[run])
            if seed == config.choice_seed and run in choices:
                run_dir = Path(choices[run].run_dir)
            else:
                run_dir = out / seed_folder(seed) / "runs" / run
            done = _completed(run_dir)
            if done is not None:
                if not (seed == config.choice_seed and run in choices):
                    progress.advance(config.steps, f"seed {seed} {run} (reused)")
                    reused.append(f"run {run} (seed {seed})")
                summaries[seed][run] = _run_summary(run, train_config, done)
            else:
                todo[(seed, run)] = (train_config, run_dir)
    last: dict[Any, int] = {}

    def on_step(key: Any, step: int) -> None:
        progress.advance(step - last.get(key, 0), f"seed {key[0]} {key[1]}, step {step}/{config.steps}")
        last[key] = step

    results = train_side_by_side(todo, cache_dir, workers=workers, on_step=on_step)
    for key, (train_config, _) in todo.items():
        progress.advance(config.steps - last.get(key, 0), f"seed {key[0]} {key[1]} done")
        summaries[key[0]][key[1]] = _run_summary(key[1], train_config, results[key])
    return {seed: {run: summaries[seed][run] for run in config.run_names} for seed in config.seeds}


def planned_seed_units(config: RegimeConfig) -> int:
    """Training steps of the seeds' runs (the first seed's r=1 and full are the rule's)."""
    return (3 * len(config.seeds) - 2) * config.steps

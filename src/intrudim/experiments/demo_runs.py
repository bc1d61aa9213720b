"""The demo's training runs (MiniLM on one task; SmolLM2 for the full demo), trained side by side or reused in
OUT/seed-S/runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from intrudim.experiments.demo_config import SMOLLM2_RECIPE, DemoRecipe
from intrudim.experiments.demo_state import Demo


def _train_config(recipe: DemoRecipe, seed: int, *, method: str, rank: int = 1, checkpoints: int = 0):
    from intrudim.train import TrainConfig

    steps = recipe.steps
    extra: dict[str, Any] = {"method": method}
    if method != "full":
        extra.update(rank=rank, total_lr=recipe.total_lr)
    return TrainConfig(
        model="minilm", task=recipe.task, max_steps=steps, eval_every=steps, max_length=recipe.max_length,
        schedule=recipe.schedule, max_validation_examples=recipe.validation_examples, seed=seed,
        checkpoint_every=max(1, steps // checkpoints) if checkpoints else None, **extra,
    )  # fmt: skip


def minilm_runs(recipe: DemoRecipe, seed: int) -> dict[str, Any]:
    """name → TrainConfig of the MiniLM runs on one task (Sec. 3, rank sweep, Fig. 7, Fig. 10)."""
    return {
        "lora-r1": _train_config(recipe, seed, method="lora", rank=1, checkpoints=recipe.checkpoints),
        f"lora-r{recipe.high_rank}": _train_config(recipe, seed, method="lora", rank=recipe.high_rank),
        "full": _train_config(recipe, seed, method="full"),
        "b-only-r1": _train_config(recipe, seed, method="lora-b-only", rank=1),
    }


def causal_runs(recipe: DemoRecipe, seed: int) -> dict[str, Any]:
    """name → TrainConfig of the SmolLM2 runs (forgetting and repair of the full demo)."""
    from intrudim.train import TrainConfig

    steps = recipe.causal_steps
    return {
        f"smollm2-r{rank}": TrainConfig(**SMOLLM2_RECIPE, rank=rank, seed=seed, max_steps=steps, eval_every=steps,
                                        checkpoint_every=None)  # type: ignore[arg-type]
        for rank in (1, 8)
    }


def _summary(run_dir: Path, config: Any, result: Any) -> dict[str, Any]:
    return {"run_dir": str(run_dir), "config": config.to_json(), "steps": result.steps,
            "accuracy": result.final_accuracy, "intruders": result.final_intruders}  # fmt: skip


def train_runs(demo: Demo, configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Train (or reuse) each run under OUT/seed-S/runs/NAME, ``demo.workers`` side by side
    (:func:`intrudim.train.side_by_side.train_side_by_side`: the same weights as one after the other); their
    summaries for the claims, in the order of ``configs``."""
    from intrudim.train.side_by_side import train_side_by_side
    from intrudim.train.sweep import _completed

    summaries: dict[str, dict[str, Any]] = {}
    todo: dict[str, tuple[Any, Path]] = {}
    for name, config in configs.items():
        run_dir = demo.out / "runs" / name
        done = _completed(run_dir)
        if done is not None:
            demo.progress.advance(config.max_steps, f"{name} (reused)")
            demo.reused.append(f"run {name}")
            summaries[name] = _summary(run_dir, config, done)
        else:
            todo[name] = (config, run_dir)
    last: dict[str, int] = {}

    def on_step(name: str, step: int) -> None:
        demo.progress.advance(step - last.get(name, 0), f"{name} step {step}/{todo[name][0].max_steps}")
        last[name] = step

    started = time.perf_counter()
    results = train_side_by_side(todo, demo.cache_dir, workers=demo.workers, device=demo.device, on_step=on_step)
    for name, (config, run_dir) in todo.items():
        demo.progress.advance(config.max_steps - last.get(name, 0), name)
        demo.seconds[f"train {name}"] = round(results[name].seconds, 2)
        summaries[name] = _summary(run_dir, config, results[name])
    if todo:
        demo.seconds[f"train {' + '.join(todo)} (wall-clock)"] = round(time.perf_counter() - started, 2)
    return {name: summaries[name] for name in configs}

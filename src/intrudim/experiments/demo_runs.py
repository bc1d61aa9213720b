"""The demo's training runs (MiniLM on one task; SmolLM2 for the full demo), trained or reused in OUT/runs."""

from __future__ import annotations

import time
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


def _train(demo: Demo, name: str, config: Any) -> dict[str, Any]:
    """Train (or reuse) one run under OUT/runs/NAME; its summary for the claims."""
    from intrudim.train import train
    from intrudim.train.sweep import _completed

    run_dir = demo.out / "runs" / name
    steps = config.max_steps
    done = _completed(run_dir)
    if done is not None:
        demo.progress.advance(steps, f"{name} (reused)")
        demo.reused.append(f"run {name}")
        result = done
    else:
        state = {"last": 0}

        def on_step(step: int) -> None:
            demo.progress.advance(step - state["last"], f"{name} step {step}/{steps}")
            state["last"] = step

        started = time.perf_counter()
        result = train(config, run_dir, resume=run_dir.exists(), progress=False, cache_dir=demo.cache_dir,
                       on_step=on_step)  # fmt: skip
        demo.progress.advance(steps - state["last"], name)
        demo.seconds[f"train {name}"] = round(time.perf_counter() - started, 2)
    return {"run_dir": str(run_dir), "config": config.to_json(), "steps": result.steps,
            "accuracy": result.final_accuracy, "intruders": result.final_intruders}  # fmt: skip

"""The demo's measurements: analyses, tracked intruders, the toy model, forgetting, repair, continual."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from intrudim.experiments.demo_config import MapRecipe
from intrudim.experiments.demo_runs import _train_config
from intrudim.experiments.demo_state import Demo


def _analysis_summary(result: Any) -> dict[str, Any]:
    matrices = result.matrices
    ranks = [m.effective_rank_delta for m in matrices if m.effective_rank_delta is not None]
    return {
        "total_intruders": result.total_intruders,
        "matrices": len(matrices),
        "matrices_with_intruders": sum(1 for m in matrices if m.intruders),
        "energy_share": sum(m.intruder_energy_share for m in matrices),  # to_json's intruder_energy_share_sum
        "epsilon_sweep": {str(eps): n for eps, n in result.epsilon_sweep().items()},
        "k_sweep": result.k_sweep(),
        "effective_rank_mean": sum(ranks) / len(ranks) if ranks else None,
        "effective_ranks": ranks,
    }


def analyse_run(demo: Demo, name: str, run: dict[str, Any], base: str) -> dict[str, Any]:
    """`analyze` of a run's final weights with the ε and k sweeps (Figs. 5, 11) and effective rank (Fig. 6)."""
    from intrudim.analysis import AnalyzeConfig, analyze
    from intrudim.report.analysis_report import write_analysis_outputs

    result = analyze(base, Path(run["run_dir"]) / "final", AnalyzeConfig(k_sweep=True, device=demo.device),
                     cache_dir=demo.cache_dir)
    write_analysis_outputs(result, demo.out / "analysis" / name,
                           command=f"intrudim analyze {base} {run['run_dir']}/final --k-sweep")  # fmt: skip
    return _analysis_summary(result)


def tracked_intruders(run_dir: Path) -> list[dict[str, int]]:
    """Intruders at every tracked checkpoint and at the end of a run (Fig. 7), from its metrics.jsonl."""
    from intrudim.train import read_metrics

    points = [{"step": 0, "intruders": 0}]  # the base model itself
    for record in read_metrics(run_dir):
        if record.get("event") in ("checkpoint", "final") and isinstance(record.get("intruders"), dict):
            point = {"step": int(record["step"]), "intruders": int(record["intruders"]["total_intruders"])}
            if points[-1]["step"] == point["step"]:
                points[-1] = point  # the final weights of a run that ended on a checkpoint step: one point
            else:
                points.append(point)
    return points


def measure_toy(seed: int, out: Path) -> dict[str, Any]:
    """Sec. 5's λ sweep and App. C's random baseline; the toy report (toy.html, figures) goes to OUT."""
    from dataclasses import asdict

    from intrudim.report.analysis_report import write_toy_outputs
    from intrudim.spectral.toy import random_vector_baseline, toy_findings, toy_lambda_sweep

    sweep = toy_lambda_sweep(seed=seed)
    baseline = random_vector_baseline(seed=seed)
    write_toy_outputs(sweep, baseline, out)
    return {
        "n": sweep.n, "k": sweep.k, "epsilon": sweep.epsilon, "sigma_max": sweep.sigma_max,
        "first_intruder_ratio": sweep.first_intruder_ratio, "v_top_ratio": sweep.v_top_ratio,
        "v_intruder_ratio": sweep.v_intruder_ratio, "findings": toy_findings(sweep),
        "points": [{"ratio": p.lam_over_sigma_max, "intruders": p.intruders, "v_rank": p.v_rank,
                    "v_is_intruder": p.v_is_intruder} for p in sweep.points],  # fmt: skip
        "random_baseline": [asdict(p) for p in baseline],
    }  # fmt: skip


def measure_forgetting_rows(demo: Demo, base: str, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Forgetting of each run on the recipe's text: one prepared probe, BASE scored once."""
    from intrudim.evaluate.forgetting import ForgettingProbe
    from intrudim.evaluate.forgetting_config import ForgettingConfig

    recipe = demo.recipe
    probe = ForgettingProbe.prepare(base, recipe.forgetting_text, ForgettingConfig(max_tokens=recipe.forgetting_tokens,
                                                                                    device=demo.device))
    base_scores = probe.scores(probe.load_base_model())
    rows = {}
    for name, run in runs.items():
        model, _ = probe.load_tuned_model(Path(run["run_dir"]) / "final")
        result = probe.summarize(base_scores, probe.scores(model))
        rows[name] = {"delta": result.delta, "ci95": list(result.ci95), "base_loss": result.base.loss,
                      "tuned_loss": result.tuned.loss, "accuracy": run["accuracy"], "intruders": run["intruders"]}  # fmt: skip
    return {"model": base, "measure": probe.measure, "text": probe.text.to_json(), "sequences": probe.sequences,
            "rows": rows}  # fmt: skip


def measure_repair(demo: Demo, base: str, run: dict[str, Any]) -> dict[str, Any]:
    """The v2 intervention on the r = 1 run: intruders scaled by λ against both controls, accuracy and forgetting."""
    from intrudim.repair.config import RepairConfig
    from intrudim.repair.sweep import repair_sweep
    from intrudim.repair.sweep_result import SWEEP_CONTROLS

    recipe = demo.recipe
    result = repair_sweep(base, Path(run["run_dir"]) / "final", (recipe.repair_lambda,), SWEEP_CONTROLS,
                          config=RepairConfig(device=demo.device), task=recipe.task, text=recipe.forgetting_text,
                          max_tokens=recipe.forgetting_tokens, max_examples=recipe.validation_examples,
                          cache_dir=demo.cache_dir)  # fmt: skip
    from intrudim.repair.sweep import write_sweep_outputs

    write_sweep_outputs(result, demo.out / "repair")
    return result.to_json()


def measure_continual(demo: Demo) -> dict[str, Any]:
    """Sequential tasks, LoRA merged between stages; intruders against the ORIGINAL base (Fig. 8, v2)."""
    from intrudim.experiments.continual import ContinualConfig, run_continual

    recipe = demo.recipe
    template = replace(_train_config(recipe, demo.seed, method="lora"), max_steps=recipe.continual_steps,
                       eval_every=recipe.continual_steps, checkpoint_every=None, track_intruders=False)  # fmt: skip
    config = ContinualConfig(tasks=recipe.continual_tasks, ranks=recipe.continual_ranks, train=template)
    labels: dict[str, int] = {}

    def on_step(label: str, step: int, max_steps: int) -> None:
        demo.progress.advance(step - labels.get(label, 0), f"{label} step {step}/{max_steps}")
        labels[label] = step

    out = demo.out / "continual"
    result = run_continual(config, out, resume=out.exists(), progress=False, cache_dir=demo.cache_dir,
                           on_step=on_step, workers=demo.workers, device=demo.device)  # fmt: skip
    return result.to_json()


def measure_map(demo: Demo, recipe_map: MapRecipe) -> dict[str, Any]:
    """One learning-rate × rank map (issue 27, part 2) into OUT/map-MODEL, ``demo.workers`` runs side by side; a
    finished cell (and its forgetting, measured on the same text and tokens) is reused. Its map.json, with the
    folder and figure, relative to OUT."""
    from intrudim.train.lr_map import lr_rank_map

    out = demo.root / recipe_map.folder
    total = recipe_map.runs() * recipe_map.steps
    advanced: dict[Any, int] = {}

    def on_step(key: Any, step: int) -> None:
        lr, rank = key
        demo.progress.advance(step - advanced.get(key, 0), f"map {recipe_map.name}: r={rank} at {lr:g}, step {step}")
        advanced[key] = step

    result = lr_rank_map(recipe_map.train_config(demo.seed), out, recipe_map.lrs, recipe_map.ranks,
                         full_lrs=recipe_map.full_lrs, resume=True, progress=False, cache_dir=demo.cache_dir,
                         forgetting=recipe_map.forgetting(),
                         workers=demo.workers, device=demo.device, on_step=on_step)  # fmt: skip
    demo.progress.advance(total - sum(advanced.values()), f"map {recipe_map.name}")
    return {"model": recipe_map.name, "seed": demo.seed, "folder": recipe_map.folder,
            "figure": f"{recipe_map.folder}/figures/lr_rank_map.png", **result.to_json()}  # fmt: skip

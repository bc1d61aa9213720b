"""`intrudim demo`: the paper's experiments on the embedded models, offline, in one report (issues 14, 27).

The demo trains, analyses and measures, once per seed (``--seeds``); then it decides each of the paper's claims
per seed from what it measured and combines the seeds (:mod:`intrudim.experiments.claims`): a claim is *held*
when it held in every seed, *fragile* when the seeds disagree (held in a majority or not: n / N is shown), *not
held* when it held in none. It writes ``summary.json`` (the claims, every seed's numbers) and a self-contained
``report.html``. Nothing is hard-coded: a claim that was not measured is ``held: null`` with the reason.

Two recipes. ``--quick`` (what ``make demo`` runs, one seed by default) fits in about five minutes on 2 CPU cores:
MiniLM only, short runs of 32 tokens. The full demo (three seeds by default, about 16 minutes per seed on 2 cores
plus 21 for the learning-rate × rank maps, drawn once) trains longer, runs the continual experiment on four tasks
and three methods, and measures forgetting and repair on the embedded causal LM SmolLM2-135M.

Every finished piece is reused: each seed's runs are intrudim run directories in OUT/seed-S/runs (a finished one
is kept, a half-finished one resumed, as ``train --resume`` does) and every measurement is a JSON file in
OUT/seed-S/measurements; a second ``demo`` with the same ``--out`` and mode only computes what is missing (a new
seed, say) and the report. Another mode in the same ``--out`` is refused, naming the difference.

This module checks ``--out``, plans the work and runs the steps (:func:`run_demo`); the steps live by concern:
``demo_config`` (recipes, settings), ``demo_state`` (what the steps share, reuse), ``demo_runs`` (training),
``demo_measures`` (analyses, toy, forgetting, repair, continual), ``demo_progress`` (the progress display).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from intrudim.experiments.demo_config import (
    DEMO_FILE,
    SUMMARY_FILE,
    DemoConfig,
    DemoRecipe,
    DemoSettingsError,
    expected_minutes,
    seed_folder,
)
from intrudim.experiments.demo_measures import (
    analyse_run,
    measure_continual,
    measure_forgetting_rows,
    measure_map,
    measure_repair,
    measure_toy,
    tracked_intruders,
)
from intrudim.experiments.demo_progress import DemoProgress
from intrudim.experiments.demo_runs import causal_runs, minilm_runs, train_runs
from intrudim.experiments.demo_state import Demo
from intrudim.fileio import ensure_writable_directory, write_json_atomic
from intrudim.train.devices import resolve_training_device


def _duration(minutes: float) -> str:
    whole = max(1, round(minutes))
    return f"{whole} min" if whole < 60 else f"{whole // 60} h {whole % 60:02d} min"


def plan_text(config: DemoConfig, device: str) -> str:
    """What a demo is about to do, how long it takes on 2 CPU cores, and what runs where (``device``: resolved,
    "cpu" or "cuda"), for the terminal before it starts."""
    seeds = config.seeds or ()
    what = (f"{config.recipe.name} demo, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}: about "
            f"{_duration(expected_minutes(config))} on 2 CPU cores from nothing (docs/demo.md; less when an "
            f"earlier demo in --out finished some of it).")  # fmt: skip
    if device == "cuda":
        runs = "the maps, each seed's runs" if config.recipe.maps else "each seed's runs"
        return (f"{what} On the GPU here: every training run ({runs}, continual's stages), forgetting's "
                f"perplexity and the base SVDs; on the CPU: the toy model, intruder matching, the repair's "
                f"evaluations, the report.")  # fmt: skip
    return (f"{what} Everything runs on the CPU{' (no GPU is visible here)' if not _gpu_visible() else ''}; on a "
            f"machine with a GPU, --device auto (the default) trains every run there and computes forgetting and "
            f"the base SVDs there.")  # fmt: skip


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_settings(out: Path, config: DemoConfig) -> None:
    """A demo in OUT is reused only with the same mode and recipe (each seed's folder is reused on its own, so
    other seeds may be added); otherwise the differences are named."""
    path = out / DEMO_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise DemoSettingsError(f"'{path}' is not valid JSON; remove it or choose another --out.") from None
        if "seeds" not in stored:
            raise DemoSettingsError(
                f"--out '{out}' holds a one-seed demo of an earlier intrudim version (its runs sit at the top of the "
                f"folder, not in seed-S/); nothing was touched. Choose another --out, or remove that folder."
            )
        wanted = json.loads(json.dumps(config.to_json()))  # tuples as the stored lists
        differences = [f"{key}: stored {stored.get(key)!r}, now {wanted[key]!r}" for key in ("quick",)
                       if stored.get(key) != wanted[key]]  # fmt: skip
        if not differences and stored.get("recipe") != wanted["recipe"]:
            differences.append("the recipe of this intrudim version differs from the stored one")
        if differences:
            raise DemoSettingsError(
                f"--out '{out}' holds a demo made with other settings ({'; '.join(differences)}). Its runs are "
                f"reused only with the same settings: choose another --out, or pass the stored settings."
            )
    elif out.exists() and any(out.iterdir()):
        raise DemoSettingsError(
            f"--out '{out}' exists, is not empty and holds no demo ({DEMO_FILE} is missing); nothing was touched. "
            f"Choose a new or empty folder."
        )


MEASUREMENT_UNITS = 10
"""Progress units counted for one measurement (toy, forgetting, repair, continual's merges and counts)."""


def continual_units(recipe: DemoRecipe) -> int:
    """Training steps of the continual experiment: every rank trains every task for ``continual_steps``."""
    return len(recipe.continual_tasks) * len(recipe.continual_ranks) * recipe.continual_steps


def planned_units(config: DemoConfig) -> int:
    """Progress units of a whole demo: training steps plus a rough step-equivalent for each measurement, per seed."""
    recipe = config.recipe
    units = sum(c.max_steps for c in minilm_runs(recipe, 0).values())
    units += continual_units(recipe)
    units += 4 * MEASUREMENT_UNITS + 2 * MEASUREMENT_UNITS  # analyses, toy, forgetting, repair, continual
    if recipe.forgetting_model == "smollm2":
        units += 2 * recipe.causal_steps
    return units * len(config.seeds or ()) + map_units(recipe)


def map_units(recipe: DemoRecipe) -> int:
    """Training steps of the learning-rate × rank maps (once per demo) plus each map's forgetting measurement."""
    return sum(m.runs() * m.steps + MEASUREMENT_UNITS for m in recipe.maps)


def _run_maps(config: DemoConfig, out: Path, bar: DemoProgress, workers: int,
              device: str) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """Each learning-rate × rank map of the recipe, once, on the first seed: OUT/map-MODEL (reused cell by cell)."""
    maps: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    seed = (config.seeds or (0,))[0]
    for recipe_map in config.recipe.maps:
        bar.set_stage(f"learning-rate × rank map on {recipe_map.name} ({recipe_map.runs()} runs, seed {seed})")
        started = time.perf_counter()
        demo = Demo(config, seed, out, out / recipe_map.folder, bar, workers=workers, device=device)
        maps[recipe_map.name] = measure_map(demo, recipe_map)
        bar.advance(MEASUREMENT_UNITS, f"map {recipe_map.name}")
        seconds[f"map {recipe_map.name}"] = round(time.perf_counter() - started, 1)
    return maps, seconds


def _run_seed(demo: Demo) -> dict[str, Any]:
    """Every experiment of one seed into OUT/seed-S; its measurements."""
    recipe, seed, out, bar = demo.recipe, demo.seed, demo.out, demo.progress
    bar.set_stage(f"seed {seed}: toy model (Sec. 5, App. C)")
    demo.reuse_or_measure("toy", MEASUREMENT_UNITS, lambda: measure_toy(seed, out / "toy"))

    bar.set_stage(f"seed {seed}: MiniLM runs on {recipe.task}")
    runs = train_runs(demo, minilm_runs(recipe, seed))
    demo.measurements["runs"] = runs
    bar.set_stage(f"seed {seed}: analyze the runs (Figs. 1, 4, 5, 6, 11)")
    for name, run in runs.items():
        run["analysis"] = demo.reuse_or_measure(f"analysis-{name}", MEASUREMENT_UNITS // 2,
                                                lambda name=name, run=run: analyse_run(demo, name, run, "minilm"))  # fmt: skip
    runs["lora-r1"]["tracked"] = tracked_intruders(Path(runs["lora-r1"]["run_dir"]))

    if recipe.forgetting_model == "smollm2":
        bar.set_stage(f"seed {seed}: SmolLM2 runs (forgetting and repair)")
        forgetting_runs = train_runs(demo, causal_runs(recipe, seed))
        repair_run, base = forgetting_runs["smollm2-r1"], "smollm2"
    else:
        forgetting_runs = {name: runs[name] for name in ("lora-r1", f"lora-r{recipe.high_rank}", "full")}
        repair_run, base = runs["lora-r1"], "minilm"
    demo.measurements["forgetting_runs"] = forgetting_runs
    bar.set_stage(f"seed {seed}: forgetting on {recipe.forgetting_text} (Fig. 9)")
    demo.reuse_or_measure("forgetting", MEASUREMENT_UNITS,
                          lambda: measure_forgetting_rows(demo, base, forgetting_runs))  # fmt: skip
    bar.set_stage(f"seed {seed}: repair at λ={recipe.repair_lambda:g} with both controls (v2)")
    demo.reuse_or_measure("repair", MEASUREMENT_UNITS, lambda: measure_repair(demo, base, repair_run))
    bar.set_stage(f"seed {seed}: continual learning (Fig. 8)")
    demo.reuse_or_measure("continual", MEASUREMENT_UNITS, lambda: measure_continual(demo),
                          units_inside=continual_units(recipe))  # fmt: skip
    return demo.measurements


def run_demo(
    config: DemoConfig, out: str | Path, *, progress: bool = True, console: Any = None, workers: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    """Run every experiment of the demo, once per seed, into OUT (reusing what a previous demo there finished);
    return the summary.

    Each seed's runs and measurements go to OUT/seed-S/ (one base-SVD cache, OUT/svd_cache, for all). Writes
    OUT/summary.json (``claims``: id, statement, figure, verdict, held in n of N seeds, every seed's numbers,
    rule, recipe) and OUT/report.html. ``workers``: runs trained side by side (1: one after the other; the same
    numbers either way, :mod:`intrudim.train.side_by_side`). ``device``: auto (a visible GPU, else the CPU), cpu
    or cuda: where the runs train and where forgetting and the base SVDs are computed; summary.json's ``device``
    says which it was.
    """
    from intrudim.experiments.claims import combine_seeds, decide_claims
    from intrudim.report.demo_report import write_demo_report

    device = resolve_training_device(device)
    out = Path(out)
    _check_settings(out, config)
    out = ensure_writable_directory(out)
    write_json_atomic(out / DEMO_FILE, config.to_json())
    seeds = tuple(config.seeds or ())
    started = time.perf_counter()
    measurements: dict[str, Any] = {}
    seconds: dict[str, Any] = {}
    reused: list[str] = []
    per_seed: dict[int, list[dict[str, Any]]] = {}
    with DemoProgress(planned_units(config), enabled=progress, console=console) as bar:
        for seed in seeds:
            demo = Demo(config, seed, out, out / seed_folder(seed), bar, workers=workers, device=device)
            measurements[str(seed)] = _run_seed(demo)
            seconds[str(seed)] = demo.seconds
            reused.extend(f"{item} (seed {seed})" for item in demo.reused)
            per_seed[seed] = decide_claims(demo.measurements, config)
        maps, seconds["maps"] = _run_maps(config, out, bar, workers, device)
        bar.set_stage("claims and report")
        claims = combine_seeds(per_seed)
        summary = {
            "demo": config.to_json(),
            "seeds": list(seeds),
            "seed_folders": {str(seed): seed_folder(seed) for seed in seeds},
            "claims": claims,
            **{key: sum(1 for c in claims if c["verdict"] == verdict) for key, verdict in SUMMARY_COUNTS.items()},
            "measurements": measurements,
            "maps": maps,
            "seconds": {**seconds, "total": round(time.perf_counter() - started, 1)},
            "device": device, "workers": workers,
            "reused": reused,
        }
        write_json_atomic(out / SUMMARY_FILE, summary)
        paths = write_demo_report(summary, out)
        summary["report"] = str(paths["html"])
        bar.advance(bar.total)
    return summary


SUMMARY_COUNTS = {"held": "held", "fragile": "fragile", "not_held": "not held", "not_measured": "not measured"}
"""summary.json's counts of claims by overall verdict."""

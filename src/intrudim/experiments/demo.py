"""`intrudim demo`: the paper's experiments on the embedded models, offline, in one report (issue 14).

The demo trains, analyses and measures; then it decides each of the paper's claims from what it measured
(:mod:`intrudim.experiments.claims`) and writes ``summary.json`` (the claims and every number behind them) and a
self-contained ``report.html``. Nothing is hard-coded: a claim that was not measured is ``held: null`` with the
reason.

Two recipes. ``--quick`` (what ``make demo`` runs) fits in about five minutes on 2 CPU cores: MiniLM only, short
runs of 32 tokens. The full demo (about half an hour on 2 cores) trains longer, runs the continual experiment
on four tasks and three methods, and measures forgetting and repair on the embedded causal LM SmolLM2-135M.

Every finished piece is reused: the runs are intrudim run directories (a finished one is kept, a half-finished one
resumed, as ``train --resume`` does) and every measurement is a JSON file in ``--out``; a second ``demo`` with the
same ``--out`` and settings only re-renders what is missing and the report. Other settings in the same ``--out``
are refused, naming the difference.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.fileio import ensure_writable_directory, write_json_atomic

DEMO_FILE = "demo.json"
SUMMARY_FILE = "summary.json"


class DemoSettingsError(IntrudimError):
    """--out holds a demo made with other settings."""


@dataclass(frozen=True)
class DemoRecipe:
    """Everything a demo mode trains and measures. Two instances: :data:`QUICK` and :data:`FULL`."""

    name: str
    steps: int  # training steps of each MiniLM run (batch 16)
    max_length: int  # tokens per example
    total_lr: float  # LoRA's α·η (App. A: 2.4e-3; compressed, see docs/demo.md)
    schedule: str
    high_rank: int  # the higher LoRA rank compared with r = 1 (α = 2r)
    validation_examples: int
    checkpoints: int  # tracked checkpoints of the r = 1 run (Fig. 7)
    continual_tasks: tuple[str, ...]
    continual_ranks: tuple[int | str, ...]
    continual_steps: int
    forgetting_model: str  # "minilm" (contrastive objective) or "smollm2" (perplexity)
    forgetting_text: str
    forgetting_tokens: int
    causal_steps: int = 100  # smollm2 runs (full demo): batch 8, 32 tokens, α·η = 2e-2 (docs/repair.md)
    repair_lambda: float = 0.5
    task: str = "sentiment"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


QUICK = DemoRecipe(
    name="quick", steps=150, max_length=32, total_lr=6e-3, schedule="constant", high_rank=8,
    validation_examples=200, checkpoints=3, continual_tasks=("sentiment", "topic"), continual_ranks=(1, "full"),
    continual_steps=100, forgetting_model="minilm", forgetting_text="news", forgetting_tokens=6000,
)  # fmt: skip
FULL = DemoRecipe(
    name="full", steps=300, max_length=64, total_lr=6e-3, schedule="constant", high_rank=64,
    validation_examples=200, checkpoints=6, continual_tasks=("sentiment", "topic", "pair-match", "agreement"),
    continual_ranks=(1, 8, "full"), continual_steps=150, forgetting_model="smollm2", forgetting_text="news",
    forgetting_tokens=2048,
)  # fmt: skip
SMOLLM2_RECIPE = dict(
    model="smollm2", task="sentiment", method="lora", total_lr=2e-2, other_lr=1e-5, schedule="linear",
    batch_size=8, max_length=32, max_validation_examples=100,
)  # fmt: skip
"""The causal-LM recipe of docs/repair.md's science check (steps from the demo recipe)."""


@dataclass(frozen=True)
class DemoConfig:
    """What the user chose: the mode and the seed. Everything else follows from the recipe."""

    quick: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise IntrudimError(f"--seed {self.seed!r} must be a non-negative integer.")

    @property
    def recipe(self) -> DemoRecipe:
        return QUICK if self.quick else FULL

    def to_json(self) -> dict[str, Any]:
        return {"quick": self.quick, "seed": self.seed, "recipe": self.recipe.to_json()}


# ----------------------------------------------------------------------------------------------- progress


class DemoProgress:
    """One progress display for the whole demo: stage, run, step, ETA (rich on a terminal, plain lines otherwise).

    Work is counted in units: one unit per training step, and a fixed estimate for each measurement.
    """

    def __init__(self, total: int, *, enabled: bool = True, console: Any = None) -> None:
        self.total = max(1, total)
        self.done = 0
        self.stage = ""
        self.enabled = enabled
        self._rich = None
        self._plain = None
        if not enabled:
            return
        from rich.console import Console

        console = console or Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(TextColumn("[bold]demo[/]"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.description}"),
                                  console=console, transient=False)  # fmt: skip
            self._task = self._rich.add_task("", total=self.total)
        else:
            from intrudim.plain_progress import PlainProgress

            self._plain = PlainProgress(console, "demo", every=10.0)

    def __enter__(self) -> DemoProgress:
        if self._rich is not None:
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)

    def set_stage(self, stage: str) -> None:
        self.stage = stage
        self._show(stage, force=True)

    def advance(self, units: int, detail: str = "") -> None:
        self.done = min(self.total, self.done + units)
        self._show(f"{self.stage} · {detail}" if detail else self.stage, force=False)

    def _show(self, text: str, *, force: bool) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=text)
        elif self._plain is not None:
            percent = 100.0 * self.done / self.total
            self._plain(f"{percent:5.1f}% ({self.done}/{self.total} units, {self._plain.elapsed:.0f} s) {text}",
                        force=force)


# ----------------------------------------------------------------------------------------------- the pieces


@dataclass
class Demo:
    """State shared by the steps of one demo."""

    config: DemoConfig
    out: Path
    progress: DemoProgress
    measurements: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # runs and measurements a previous demo in OUT had finished

    @property
    def recipe(self) -> DemoRecipe:
        return self.config.recipe

    @property
    def cache_dir(self) -> Path:
        return self.out / "svd_cache"

    def reuse_or_measure(
        self, key: str, units: int, measure: Callable[[], dict[str, Any]], *, units_inside: int = 0
    ) -> dict[str, Any]:
        """The JSON of one measurement: read from OUT/measurements/KEY.json if a previous demo wrote it.

        ``units_inside``: progress units that ``measure`` advances itself (training steps), skipped at once on reuse.
        """
        path = self.out / "measurements" / f"{key}.json"
        started = time.perf_counter()
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            self.progress.advance(units + units_inside, f"{key} (reused)")
            self.reused.append(key)
        else:
            data = measure()
            write_json_atomic(path, data)
            self.progress.advance(units, key)
        self.measurements[key] = data
        self.seconds[key] = round(time.perf_counter() - started, 2)
        return data


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

    result = analyze(base, Path(run["run_dir"]) / "final", AnalyzeConfig(k_sweep=True), cache_dir=demo.cache_dir)
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
    probe = ForgettingProbe.prepare(base, recipe.forgetting_text, ForgettingConfig(max_tokens=recipe.forgetting_tokens))
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
    from intrudim.repair.sweep import repair_sweep
    from intrudim.repair.sweep_result import SWEEP_CONTROLS

    recipe = demo.recipe
    result = repair_sweep(base, Path(run["run_dir"]) / "final", (recipe.repair_lambda,), SWEEP_CONTROLS,
                          task=recipe.task, text=recipe.forgetting_text, max_tokens=recipe.forgetting_tokens,
                          max_examples=recipe.validation_examples, cache_dir=demo.cache_dir)  # fmt: skip
    from intrudim.repair.sweep import write_sweep_outputs

    write_sweep_outputs(result, demo.out / "repair")
    return result.to_json()


def measure_continual(demo: Demo) -> dict[str, Any]:
    """Sequential tasks, LoRA merged between stages; intruders against the ORIGINAL base (Fig. 8, v2)."""
    from intrudim.experiments.continual import ContinualConfig, run_continual

    recipe = demo.recipe
    template = replace(_train_config(recipe, demo.config.seed, method="lora"), max_steps=recipe.continual_steps,
                       eval_every=recipe.continual_steps, checkpoint_every=None, track_intruders=False)  # fmt: skip
    config = ContinualConfig(tasks=recipe.continual_tasks, ranks=recipe.continual_ranks, train=template)
    labels: dict[str, int] = {}

    def on_step(label: str, step: int, max_steps: int) -> None:
        demo.progress.advance(step - labels.get(label, 0), f"{label} step {step}/{max_steps}")
        labels[label] = step

    out = demo.out / "continual"
    result = run_continual(config, out, resume=out.exists(), progress=False, cache_dir=demo.cache_dir,
                           on_step=on_step)  # fmt: skip
    return result.to_json()


# ----------------------------------------------------------------------------------------------- the demo


def _check_settings(out: Path, config: DemoConfig) -> None:
    """A demo in OUT is reused only with the same settings; otherwise the differences are named."""
    path = out / DEMO_FILE
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            raise DemoSettingsError(f"'{path}' is not valid JSON; remove it or choose another --out.") from None
        wanted = json.loads(json.dumps(config.to_json()))  # tuples as the stored lists
        differences = [f"{key}: stored {stored.get(key)!r}, now {wanted[key]!r}" for key in wanted
                       if stored.get(key) != wanted[key] and key != "recipe"]  # fmt: skip
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
    """Progress units of a whole demo: training steps plus a rough step-equivalent for each measurement."""
    recipe = config.recipe
    units = sum(c.max_steps for c in minilm_runs(recipe, config.seed).values())
    units += continual_units(recipe)
    units += 4 * MEASUREMENT_UNITS + 2 * MEASUREMENT_UNITS  # analyses, toy, forgetting, repair, continual
    if recipe.forgetting_model == "smollm2":
        units += 2 * recipe.causal_steps
    return units


def run_demo(
    config: DemoConfig, out: str | Path, *, progress: bool = True, console: Any = None
) -> dict[str, Any]:
    """Run every experiment of the demo into OUT (reusing what a previous demo there finished); return the summary.

    Writes OUT/summary.json (``claims``: id, statement, figure, held, numbers, recipe) and OUT/report.html.
    """
    from intrudim.experiments.claims import decide_claims
    from intrudim.report.demo_report import write_demo_report

    out = Path(out)
    _check_settings(out, config)
    out = ensure_writable_directory(out)
    write_json_atomic(out / DEMO_FILE, config.to_json())
    recipe = config.recipe
    started = time.perf_counter()
    with DemoProgress(planned_units(config), enabled=progress, console=console) as bar:
        demo = Demo(config, out, bar)
        bar.set_stage("toy model (Sec. 5, App. C)")
        demo.reuse_or_measure("toy", MEASUREMENT_UNITS, lambda: measure_toy(config.seed, out / "toy"))

        bar.set_stage(f"MiniLM runs on {recipe.task}")
        runs = {name: _train(demo, name, cfg) for name, cfg in minilm_runs(recipe, config.seed).items()}
        demo.measurements["runs"] = runs
        bar.set_stage("analyze the runs (Figs. 1, 4, 5, 6, 11)")
        for name, run in runs.items():
            run["analysis"] = demo.reuse_or_measure(f"analysis-{name}", MEASUREMENT_UNITS // 2,
                                                    lambda name=name, run=run: analyse_run(demo, name, run, "minilm"))  # fmt: skip
        runs["lora-r1"]["tracked"] = tracked_intruders(Path(runs["lora-r1"]["run_dir"]))

        if recipe.forgetting_model == "smollm2":
            bar.set_stage("SmolLM2 runs (forgetting and repair)")
            forgetting_runs = {name: _train(demo, name, cfg) for name, cfg in causal_runs(recipe, config.seed).items()}
            repair_run, base = forgetting_runs["smollm2-r1"], "smollm2"
        else:
            forgetting_runs = {name: runs[name] for name in ("lora-r1", f"lora-r{recipe.high_rank}", "full")}
            repair_run, base = runs["lora-r1"], "minilm"
        demo.measurements["forgetting_runs"] = forgetting_runs
        bar.set_stage(f"forgetting on {recipe.forgetting_text} (Fig. 9)")
        demo.reuse_or_measure("forgetting", MEASUREMENT_UNITS,
                              lambda: measure_forgetting_rows(demo, base, forgetting_runs))  # fmt: skip
        bar.set_stage(f"repair at λ={recipe.repair_lambda:g} with both controls (v2)")
        demo.reuse_or_measure("repair", MEASUREMENT_UNITS, lambda: measure_repair(demo, base, repair_run))
        bar.set_stage("continual learning (Fig. 8)")
        demo.reuse_or_measure("continual", MEASUREMENT_UNITS, lambda: measure_continual(demo),
                              units_inside=continual_units(recipe))  # fmt: skip
        bar.set_stage("claims and report")
        claims = decide_claims(demo.measurements, config)
        summary = {
            "demo": config.to_json(),
            "claims": claims,
            "held": sum(1 for c in claims if c["held"] is True),
            "not_held": sum(1 for c in claims if c["held"] is False),
            "not_measured": sum(1 for c in claims if c["held"] is None),
            "measurements": demo.measurements,
            "seconds": {**demo.seconds, "total": round(time.perf_counter() - started, 1)},
            "reused": demo.reused,
        }
        write_json_atomic(out / SUMMARY_FILE, summary)
        paths = write_demo_report(summary, out)
        summary["report"] = str(paths["html"])
        bar.advance(bar.total)
    return summary

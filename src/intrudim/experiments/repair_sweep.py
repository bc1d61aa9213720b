"""`intrudim repair --sweep`: task accuracy and forgetting against λ, for the intruder repair and its controls (v2).

For each λ and each method (``none`` = the intruders, ``non-intruder``, ``shrink``), the repaired weights are
set in memory (W_t + (λ − 1)·Σ σ_j u_j v_jᵀ, or W₀ + c·ΔW), then the task's held-out accuracy (``task``)
and the loss on pre-training-like text (``text``, the ``forgetting`` measure of the model) are measured.
The planning (top triplets, intruders) is done once; every setting is a few rank-|I| additions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.analysis.planning import AnalysisInputs, open_inputs
from intrudim.analysis.running import open_cache
from intrudim.errors import IntrudimError
from intrudim.models.loading import load_base_model, load_causal_lm, resolve_objective
from intrudim.models.references import resolve_local_path, resolve_model_folder
from intrudim.models.tuned import merge_adapter_with_peft
from intrudim.repair.config import RepairConfig, check_lambda
from intrudim.repair.core import MatrixRepairPlan, plan_repairs, set_aside_token_rows
from intrudim.weights.matching import KeyMatcher
from intrudim.weights.peft_adapter import is_adapter_dir

DEFAULT_SWEEP: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
SWEEP_CONTROLS: tuple[str, ...] = ("none", "non-intruder", "shrink")
METHOD_LABELS = {"none": "intruders", "non-intruder": "non-intruder control", "shrink": "shrink control"}


def parse_lambdas(text: str) -> tuple[float, ...]:
    """``"0,0.25,0.5"`` → (0.0, 0.25, 0.5); a clear error for anything else."""
    parts = [part.strip() for part in str(text).split(",")]
    if not parts or any(not part for part in parts):
        raise IntrudimError(f"--sweep must be a comma-separated list of λ values ≥ 0, e.g. 0,0.25,0.5,0.75,1; got {text!r}.")
    values = []
    for part in parts:
        try:
            values.append(check_lambda(part, "every value of --sweep"))
        except IntrudimError:
            raise IntrudimError(
                f"--sweep must be a comma-separated list of λ values ≥ 0, e.g. 0,0.25,0.5,0.75,1; {part!r} in {text!r} "
                f"is not one."
            ) from None
    return tuple(sorted(set(values)))


def parse_controls(control: str) -> tuple[str, ...]:
    """``all`` → every method; ``none`` → the intruder repair alone; a control → the repair and that control."""
    if control == "all":
        return SWEEP_CONTROLS
    if control == "none":
        return ("none",)
    if control in SWEEP_CONTROLS:
        return ("none", control)
    raise IntrudimError(f"--control must be none, non-intruder, shrink or all; got {control!r}.")


@dataclass
class SweepPoint:
    lam: float
    method: str  # none | non-intruder | shrink
    accuracy: float | None
    forgetting_loss: float | None
    removed_frobenius: float

    def to_json(self) -> dict[str, Any]:
        return {"lambda": self.lam, "method": self.method, "accuracy": self.accuracy,
                "forgetting_loss": self.forgetting_loss, "removed_frobenius": self.removed_frobenius}  # fmt: skip


@dataclass
class RepairSweepResult:
    """Accuracy and forgetting per (λ, method); ``base_loss`` is BASE's loss on the same text."""

    base: str
    tuned: str
    task: str | None
    text: dict[str, Any] | None
    measure: str | None
    k: int
    epsilon: float
    total_intruders: int
    matrices_with_intruders: int
    base_loss: float | None
    points: list[SweepPoint] = field(default_factory=list)
    seconds: float = 0.0

    def point(self, lam: float, method: str) -> SweepPoint:
        return next(p for p in self.points if p.lam == lam and p.method == method)

    @property
    def tuned_loss(self) -> float | None:
        """The un-repaired TUNED model's loss (λ = 1)."""
        ones = [p for p in self.points if p.lam == 1.0]
        return ones[0].forgetting_loss if ones else None

    def to_json(self) -> dict[str, Any]:
        return {
            "base": self.base, "tuned": self.tuned, "task": self.task, "text": self.text, "measure": self.measure,
            "k": self.k, "epsilon": self.epsilon, "total_intruders": self.total_intruders,
            "matrices_with_intruders": self.matrices_with_intruders, "base_loss": self.base_loss,
            "tuned_loss": self.tuned_loss, "points": [p.to_json() for p in self.points],
            "seconds": round(self.seconds, 3),
            "methods": {m: METHOD_LABELS[m] for m in sorted({p.method for p in self.points})},
        }  # fmt: skip


class _InMemoryRepair:
    """Sets the repaired weights of the planned matrices in a loaded model, and restores them."""

    def __init__(self, model: nn.Module, plans: list[MatrixRepairPlan], inputs: AnalysisInputs):
        params = dict(model.named_parameters())
        matcher = KeyMatcher(params)
        self.targets: list[tuple[MatrixRepairPlan, nn.Parameter, torch.Tensor, torch.Tensor]] = []
        for plan in plans:
            if not plan.intruders:
                continue
            name = matcher.base_key(plan.job.base_key)
            if name is None:
                raise IntrudimError(
                    f"The loaded model has no parameter for '{plan.job.base_key}'; cannot repair it in memory. Is the "
                    f"model the architecture of BASE?"
                )
            param = params[name]
            delta = self._delta(plan, inputs)  # ΔW, analysed orientation, float64
            self.targets.append((plan, param, param.detach().clone(), delta))

    @staticmethod
    def _delta(plan: MatrixRepairPlan, inputs: AnalysisInputs) -> torch.Tensor:
        if plan.factors is not None:
            return plan.factors.delta()
        return inputs.tuned_matrix(plan.job).to(torch.float64) - inputs.base_matrix(plan.job).to(torch.float64)

    @torch.no_grad()
    def apply(self, lam: float, method: str) -> float:
        """Set every planned matrix to its repaired value; returns the total removed Frobenius norm."""
        removed_sq = 0.0
        for plan, param, original, delta in self.targets:
            if method == "shrink":
                c, _ = plan.shrink(lam)
                change = -(1.0 - c) * delta
            else:
                update = plan.update(lam, method)
                change = torch.zeros_like(delta) if update is None else update.dense()
            removed_sq += float((change**2).sum())
            stored = change.T if plan.job.transpose else change
            param.copy_((original.to(torch.float64) + stored).to(param.dtype))
        return removed_sq**0.5

    @torch.no_grad()
    def restore(self) -> None:
        for _, param, original, _ in self.targets:
            param.copy_(original)


def _task_model(base_path: Path, tuned: Path, task_name: str, seed: int):
    """(model with TUNED's weights and head, tokenizer, task, prompt format or None) for task accuracy."""
    from intrudim.tasks import get_task
    from intrudim.tasks.prompts import prompt_format

    task = get_task(task_name, seed=seed)
    objective = resolve_objective("auto", base_path)
    if is_adapter_dir(tuned):
        if objective == "causal-lm":
            model, tokenizer = load_causal_lm(base_path)
        else:
            model, tokenizer = load_base_model(base_path, task.head_outputs)
        model = merge_adapter_with_peft(model, tuned)
    else:
        if objective == "causal-lm":
            model, tokenizer = load_causal_lm(tuned)
        else:
            model, tokenizer = load_base_model(tuned, task.head_outputs)
    fmt = prompt_format(task) if objective == "causal-lm" else None
    return model.eval(), tokenizer, task, fmt


def _run_seed(tuned: Path) -> int:
    """The seed of an intrudim run (its generated tasks' validation split), else 0."""
    import json

    for config in (tuned / "config.json", tuned.parent / "config.json"):
        if config.exists():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            train = data.get("train_config", data)
            if isinstance(train, dict) and isinstance(train.get("seed"), int) and "task" in train:
                return int(train["seed"])
    return 0


def repair_sweep(
    base: str | Path,
    tuned: str | Path,
    lambdas: Sequence[float] = DEFAULT_SWEEP,
    controls: Sequence[str] = SWEEP_CONTROLS,
    *,
    config: RepairConfig | None = None,
    task: str | None = None,
    text: str | None = None,
    max_tokens: int = 20_000,
    max_examples: int | None = 400,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] | None = None,
) -> RepairSweepResult:
    """Measure task accuracy (``task``) and forgetting (``text``) for every λ and method; at least one of the two."""
    if task is None and text is None:
        raise IntrudimError("--sweep measures task accuracy (--task NAME) and/or forgetting (--text wiki|news|FILE): give at least one.")
    config = config or RepairConfig()
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    lambdas = sorted(set(float(lam) for lam in lambdas) | {1.0})
    analyze_config = config.analyze_config
    from intrudim.evaluate.forgetting import ForgettingConfig, ForgettingProbe

    base_path = resolve_model_folder(base, role="base", what="BASE")
    tuned_path = resolve_local_path(tuned, role="tuned", allow_pickle=analyze_config.allow_pickle)
    with open_inputs(base, tuned, analyze_config) as inputs:
        set_aside_token_rows(inputs)
        say("planning: top singular triplets and intruders of every matrix")
        plans = plan_repairs(inputs, open_cache(analyze_config, cache_dir, use_cache), config, with_control=True)
        result = RepairSweepResult(
            base=str(base), tuned=str(tuned), task=task, text=None, measure=None, k=config.k, epsilon=config.epsilon,
            total_intruders=sum(len(p.intruders) for p in plans),
            matrices_with_intruders=sum(1 for p in plans if p.intruders), base_loss=None,
        )  # fmt: skip
        evaluators: list[tuple[str, nn.Module, _InMemoryRepair, Callable[[nn.Module], float]]] = []
        if text is not None:
            say("forgetting: tokenizing the text and scoring BASE")
            probe = ForgettingProbe.prepare(base_path, text, ForgettingConfig(max_tokens=max_tokens))
            result.text, result.measure = probe.text.to_json(), probe.measure
            base_model = probe.load_base_model()
            result.base_loss = float(probe.losses(base_model).mean())
            lm, _ = probe.load_tuned_model(tuned_path, model=base_model)
            evaluators.append(("forgetting", lm, _InMemoryRepair(lm, plans, inputs),
                               lambda model: float(probe.losses(model).mean())))  # fmt: skip
        if task is not None:
            from intrudim.evaluate.accuracy import accuracy

            say(f"task: loading TUNED with its head for '{task}'")
            model, tokenizer, task_obj, fmt = _task_model(base_path, tuned_path, task, _run_seed(tuned_path))
            examples = task_obj.validation[:max_examples] if max_examples else task_obj.validation
            evaluators.append(("accuracy", model, _InMemoryRepair(model, plans, inputs),
                               lambda m: accuracy(m, tokenizer, examples, task_obj.kind, prompt_format=fmt)))  # fmt: skip
        for method in controls:
            for lam in lambdas:
                if lam == 1.0 and method != controls[0]:
                    continue  # λ = 1 is TUNED itself for every method: measured once
                values: dict[str, float] = {}
                removed = 0.0
                say(f"{METHOD_LABELS[method]}, λ={lam:g}")
                for kind, model, setter, measure in evaluators:
                    removed = setter.apply(lam, method)
                    try:
                        values[kind] = measure(model)
                    finally:
                        setter.restore()
                point = SweepPoint(lam, method, values.get("accuracy"), values.get("forgetting"), removed)
                result.points.append(point)
        # λ = 1 belongs to every method's line
        first = next(p for p in result.points if p.lam == 1.0)
        for method in controls[1:]:
            result.points.append(SweepPoint(1.0, method, first.accuracy, first.forgetting_loss, 0.0))
    result.points.sort(key=lambda p: (controls.index(p.method), p.lam))
    result.seconds = time.perf_counter() - started
    return result


def write_sweep_outputs(result: RepairSweepResult, out: Path) -> dict[str, Path]:
    """repair_sweep.json, repair_sweep.csv and the v2 figure (forgetting and accuracy against λ, per method)."""
    import csv
    import io

    from intrudim.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic

    paths = {"json": write_json_atomic(out / "repair_sweep.json", result.to_json())}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "lambda", "accuracy", "forgetting_loss", "removed_frobenius"])
    for p in result.points:
        writer.writerow([p.method, p.lam, "" if p.accuracy is None else f"{p.accuracy:.6f}",
                         "" if p.forgetting_loss is None else f"{p.forgetting_loss:.6f}", f"{p.removed_frobenius:.6g}"])  # fmt: skip
    paths["csv"] = write_text_atomic(out / "repair_sweep.csv", buffer.getvalue())
    paths["png"] = write_bytes_atomic(out / "repair_sweep.png", sweep_figure(result))
    return paths


def sweep_figure(result: RepairSweepResult) -> bytes:
    """PNG: forgetting loss and task accuracy against λ, one line per method (the v2 figure)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("forgetting_loss", f"loss on {result.measure or 'text'} (lower = less forgetting)"),
              ("accuracy", f"task accuracy ({result.task})")]  # fmt: skip
    panels = [(key, label) for key, label in panels if any(getattr(p, key) is not None for p in result.points)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    styles = {"none": ("C3", "o"), "non-intruder": ("C0", "s"), "shrink": ("C2", "^")}
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for method in dict.fromkeys(p.method for p in result.points):
            points = [p for p in result.points if p.method == method]
            color, marker = styles[method]
            ax.plot([p.lam for p in points], [getattr(p, key) for p in points], marker=marker, color=color,
                    label=METHOD_LABELS[method])  # fmt: skip
        if key == "forgetting_loss" and result.base_loss is not None:
            ax.axhline(result.base_loss, color="grey", linestyle=":", label="BASE")
        ax.set_xlabel("λ (1 = TUNED as trained)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Repair sweep: {result.total_intruders} intruders in {result.matrices_with_intruders} matrices "
                 f"(k={result.k}, ε={result.epsilon})", fontsize=10)  # fmt: skip
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()

"""`intrudim repair --sweep`: task cost and forgetting against λ, for the intruder repair and its controls (v2).

For each λ and each method (``none`` = the intruders, ``non-intruder``, ``shrink``), the repaired weights are
set in memory (W_t + (λ − 1)·Σ σ_j u_j v_jᵀ, or W₀ + c·ΔW), then measured:

- ``task``: held-out accuracy on a task of the built-in registry (higher is better);
- ``task_text``: the loss on the user's own held-out task text (lower is better), with the same definition and
  code as ``forgetting``'s (:class:`~intrudim.evaluate.forgetting.ForgettingProbe`): for a causal LM the mean
  next-token cross-entropy in nats/token, for a masked LM the pseudo-loss, for a sentence encoder the
  contrastive loss (:data:`LOSS_MEASURES`);
- ``text``: the same loss on pre-training-like text, the ``forgetting`` measure (lower = less forgetting).

The planning (top triplets, intruders) is done once; every setting is a few rank-|I| additions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.analysis.planning import AnalysisInputs, open_inputs
from intrudim.analysis.setup import open_cache
from intrudim.errors import IntrudimError
from intrudim.models.loading import load_base_model, load_causal_lm, resolve_objective
from intrudim.models.references import resolve_local_path, resolve_model_folder
from intrudim.models.tuned import merge_adapter_with_peft
from intrudim.repair.config import RepairConfig
from intrudim.repair.plan import MatrixRepairPlan, plan_repairs, set_aside_token_rows
from intrudim.repair.sweep_result import (
    DEFAULT_SWEEP,
    SWEEP_CONTROLS,
    RepairSweepResult,
    SweepPoint,
)
from intrudim.report.repair_figures import sweep_figure
from intrudim.spectral.repair import METHOD_LABELS
from intrudim.weights.matching import KeyMatcher
from intrudim.weights.peft_adapter import is_adapter_dir


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


class SweepProgress:
    """Where a sweep says what it is doing: a rich status line on a terminal; plain lines on stderr otherwise (a log
    file, a pipe, CI: each phase, and the planning at most every ``LINE_EVERY_SECONDS``); or a callback."""

    def __init__(self, progress: bool | Callable[[str], None] | None) -> None:
        self.callback = progress if callable(progress) else None
        self.status: Any = None
        self.lines: Any = None
        if progress is True:
            from rich.console import Console

            console = Console(stderr=True)
            if console.is_terminal:
                self.status = console.status("repair sweep")
                self.status.start()
            else:
                from intrudim.analysis.progress import LINE_EVERY_SECONDS
                from intrudim.plain_progress import PlainProgress

                self.lines = PlainProgress(console, "repair sweep", LINE_EVERY_SECONDS)

    def phase(self, message: str) -> None:
        """A new phase (always shown)."""
        if self.callback is not None:
            self.callback(message)
        elif self.status is not None:
            self.status.update(f"repair sweep: {message}")
        elif self.lines is not None:
            self.lines(f"{message} ({self.lines.elapsed:.0f} s)", force=True)

    def planning(self, done: int, total: int, _name: str) -> None:
        """The planning's progress over matrices (plan_repairs' callback; plain lines throttled)."""
        message = f"planning: {done}/{total} matrices"
        if self.callback is not None:
            self.callback(message)
        elif self.status is not None:
            self.status.update(f"repair sweep: {message}")
        elif self.lines is not None and (done == total or self.lines.due()):
            self.lines(f"{message} ({self.lines.elapsed:.0f} s)", force=True)

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


def _prepare_probe(base_path: Path, spec: str, max_tokens: int, option: str):
    """A ForgettingProbe of ``spec`` (the same definition as ``forgetting``); errors name ``option``."""
    from intrudim.evaluate.forgetting import ForgettingProbe
    from intrudim.evaluate.forgetting_config import ForgettingConfig

    try:
        return ForgettingProbe.prepare(base_path, spec, ForgettingConfig(max_tokens=max_tokens))
    except IntrudimError as error:
        if option == "--text":
            raise
        raise type(error)(str(error).replace("--text", option)) from None


def repair_sweep(
    base: str | Path,
    tuned: str | Path,
    lambdas: Sequence[float] = DEFAULT_SWEEP,
    controls: Sequence[str] = SWEEP_CONTROLS,
    *,
    config: RepairConfig | None = None,
    task: str | None = None,
    text: str | None = None,
    task_text: str | None = None,
    max_tokens: int = 20_000,
    max_examples: int | None = 400,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: bool | Callable[[str], None] | None = None,
) -> RepairSweepResult:
    """Measure task accuracy (``task``: a task of the registry), the loss on the user's own held-out task text
    (``task_text``: a file, a folder of .txt or a saved dataset; lower is better) and forgetting (``text``) for
    every λ and method; at least one of the three.

    ``progress``: True shows it on stderr (a status line on a terminal, plain lines otherwise); a callable gets
    each message."""
    if task is None and text is None and task_text is None:
        raise IntrudimError("--sweep measures task accuracy (--task NAME), the loss on your own task text (--task-text "
                            "FILE|DIR|dataset) and/or forgetting (--text wiki|news|FILE): give at least one.")  # fmt: skip
    config = config or RepairConfig()
    reporter = SweepProgress(progress)
    try:
        return _sweep(base, tuned, lambdas, controls, config, task, text, task_text, max_tokens, max_examples,
                      cache_dir, use_cache, reporter)  # fmt: skip
    finally:
        reporter.close()


def _sweep(
    base: str | Path,
    tuned: str | Path,
    lambdas: Sequence[float],
    controls: Sequence[str],
    config: RepairConfig,
    task: str | None,
    text: str | None,
    task_text: str | None,
    max_tokens: int,
    max_examples: int | None,
    cache_dir: str | Path | None,
    use_cache: bool,
    reporter: SweepProgress,
) -> RepairSweepResult:
    say = reporter.phase
    started = time.perf_counter()
    lambdas = sorted(set(float(lam) for lam in lambdas) | {1.0})
    analyze_config = config.analyze_config

    base_path = resolve_model_folder(base, role="base", what="BASE")
    tuned_path = resolve_local_path(tuned, role="tuned", allow_pickle=analyze_config.allow_pickle)
    # The texts are read and tokenized first: a text that does not exist fails before the planning.
    probe = task_probe = None
    if text is not None:
        say("tokenizing the forgetting text")
        probe = _prepare_probe(base_path, text, max_tokens, "--text")
    if task_text is not None:
        say("tokenizing the task text")
        task_probe = _prepare_probe(base_path, task_text, max_tokens, "--task-text")
    with open_inputs(base, tuned, analyze_config) as inputs:
        set_aside_token_rows(inputs)
        say(f"planning: top singular triplets and intruders of {len(inputs.jobs)} matrices")
        plans = plan_repairs(inputs, open_cache(analyze_config, cache_dir, use_cache), config, with_control=True,
                             progress=reporter.planning)  # fmt: skip
        result = RepairSweepResult(
            base=str(base), tuned=str(tuned), task=task, text=None, measure=None, k=config.k, epsilon=config.epsilon,
            total_intruders=sum(len(p.intruders) for p in plans),
            matrices_with_intruders=sum(1 for p in plans if p.intruders), base_loss=None,
        )  # fmt: skip
        # (model, its in-memory repair, {what: how it is measured}): every measure of one model under one setting
        groups: list[tuple[nn.Module, _InMemoryRepair, dict[str, Callable[[nn.Module], float]]]] = []
        first_probe = probe or task_probe
        if first_probe is not None:
            say("scoring BASE on the text" if task_probe is None else "scoring BASE on the texts")
            result.measure = first_probe.measure
            base_model = first_probe.load_base_model()
            lm_measures: dict[str, Callable[[nn.Module], float]] = {}
            if probe is not None:
                result.text, result.tokens = probe.text.to_json(), probe.tokens
                result.base_loss = float(probe.losses(base_model).mean())
                lm_measures["forgetting"] = lambda model: float(probe.losses(model).mean())
            if task_probe is not None:
                result.task_text, result.task_tokens = task_probe.text.to_json(), task_probe.tokens
                result.base_task_loss = float(task_probe.losses(base_model).mean())
                lm_measures["task_loss"] = lambda model: float(task_probe.losses(model).mean())
            lm, _ = first_probe.load_tuned_model(tuned_path, model=base_model)  # TUNED's weights, in place
            groups.append((lm, _InMemoryRepair(lm, plans, inputs), lm_measures))
        if task is not None:
            from intrudim.evaluate.accuracy import accuracy

            say(f"task: loading TUNED with its head for '{task}'")
            model, tokenizer, task_obj, fmt = _task_model(base_path, tuned_path, task, _run_seed(tuned_path))
            examples = task_obj.validation[:max_examples] if max_examples else task_obj.validation
            result.task_examples = len(examples)
            groups.append((model, _InMemoryRepair(model, plans, inputs),
                           {"accuracy": lambda m: accuracy(m, tokenizer, examples, task_obj.kind, prompt_format=fmt)}))  # fmt: skip
        settings = [(method, lam) for method in controls for lam in lambdas if lam != 1.0 or method == controls[0]]
        for i, (method, lam) in enumerate(settings):  # λ = 1 is TUNED itself for every method: measured once
            values: dict[str, float] = {}
            removed = 0.0
            say(f"{i + 1}/{len(settings)}: {METHOD_LABELS[method]}, λ={lam:g}")
            for model, setter, measures in groups:
                removed = setter.apply(lam, method)
                try:
                    for kind, measure in measures.items():
                        values[kind] = measure(model)
                finally:
                    setter.restore()
            result.points.append(SweepPoint(lam, method, values.get("accuracy"), values.get("forgetting"), removed,
                                            values.get("task_loss")))  # fmt: skip
        # λ = 1 belongs to every method's line
        first = next(p for p in result.points if p.lam == 1.0)
        for method in controls[1:]:
            result.points.append(SweepPoint(1.0, method, first.accuracy, first.forgetting_loss, 0.0, first.task_loss))
    result.points.sort(key=lambda p: (controls.index(p.method), p.lam))
    result.seconds = time.perf_counter() - started
    say(f"done: {len(settings)} settings measured")
    return result


def write_sweep_outputs(result: RepairSweepResult, out: Path, *, command: str = "") -> dict[str, Path]:
    """repair_sweep.json, repair_sweep.csv, the v2 figure repair_sweep.png (task cost and forgetting against λ, per
    method) and the self-contained report.html (:mod:`intrudim.report.repair_report`)."""
    import csv
    import io

    from intrudim.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
    from intrudim.report.repair_report import write_sweep_report

    out = Path(out)
    paths = {"json": write_json_atomic(out / "repair_sweep.json", result.to_json())}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["method", "lambda", "accuracy", "task_loss", "forgetting_loss", "removed_frobenius"])

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    for p in result.points:
        writer.writerow([p.method, p.lam, cell(p.accuracy), cell(p.task_loss), cell(p.forgetting_loss),
                         f"{p.removed_frobenius:.6g}"])  # fmt: skip
    paths["csv"] = write_text_atomic(out / "repair_sweep.csv", buffer.getvalue())
    png = sweep_figure(result)
    paths["png"] = write_bytes_atomic(out / "repair_sweep.png", png)
    paths["html"] = write_sweep_report(result, out, figure=png, command=command)
    return paths

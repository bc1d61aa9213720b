"""Continual learning (Fig. 8 / 17, v2 abstract): tasks trained one after another, intruders accumulating.

For every method (a LoRA rank, or full fine-tuning) the tasks are trained in order. Stage t starts from the
weights after stage t − 1; a LoRA adapter is merged into the weights before the next stage, and the next stage
trains a fresh adapter on them (Sec. 4.2: "we merge the LoRA weights into the model and reinitialize them").
After every stage:

- every task's held-out accuracy is measured: the **accuracy matrix** (stage × task). An encoder keeps one
  head per task (BERT's pooler and the classifier, the modules intrudim trains as the head), saved right after
  the task's own stage and put back on the current weights to evaluate it later; a task not trained yet has no
  head, so its entry is None. A causal LM scores each label's answer text with its own LM head, so every task
  is measured at every stage, stage 0 being the base model.
- the intruder dimensions of the current (merged) weights are counted against the ORIGINAL base model, so that
  they accumulate over stages, together with their share of each matrix's energy.

A task's **baseline** is the accuracy it reached right after its own stage (measured on the merged weights with
its head); its **forgetting** is the baseline minus its accuracy after the last stage. The paper retrains each
task's classification head at every stage and draws the pre-trained model's accuracy as the baseline; keeping
the head measures the change of the shared weights alone, without a probe fitted per stage (docs/continual.md).

Layout of ``out_dir``::

    config.json                      the ContinualConfig (``--resume`` compares against it)
    continual.json, continual.csv    the accuracy matrices, baselines, intruders per stage, per method
    figures/continual_accuracy.png   Fig. 8: accuracy per task over stages, one panel per task
    figures/continual_intruders.png  intruders (and energy share) against the original base, per stage
    <method>/stage-0.json            the base model's accuracies (causal LM), or none (encoder)
    <method>/stage-<t>-<task>/       run/ (the `train` run), merged/ (weights after the stage, heads removed),
                                     head.safetensors (encoder: the task's head), stage.json (written last:
                                     a stage with a stage.json is finished and is skipped by ``--resume``)

This module runs it (:func:`run_continual`); its pieces, one concern each: ``continual_config`` (settings),
``continual_context`` (what the stages share), ``continual_stages`` (one method's stages in order),
``continual_heads`` (the weights after a stage), ``continual_measure`` (accuracies, intruders),
``continual_results`` (what was measured), ``continual_outputs`` (the out_dir and its files).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.experiments.continual_config import RESULT_FILE, ContinualConfig, OnStep, method_label
from intrudim.experiments.continual_context import _Context, _load_task, _run_label
from intrudim.experiments.continual_outputs import _prepare_out, _write_outputs
from intrudim.experiments.continual_results import ContinualResult, MethodResult
from intrudim.experiments.continual_stages import _method_job, _run_method
from intrudim.train.devices import check_training_device
from intrudim.weights.svd_cache import default_cache_dir


def continual_plan(config: ContinualConfig) -> list[tuple[str, int]]:
    """(run label, max steps) of every stage in the order they run: what ``on_step`` will report.

    A run label is ``<method>/stage-<t>-<task>`` (e.g. ``r-1/stage-2-topic``).
    """
    from intrudim.train.recipe import total_training_steps

    plan = []
    for rank in config.ranks:
        for index, name in enumerate(config.tasks, start=1):
            task = _load_task(config.train, name)
            plan.append((_run_label(rank, index, name), total_training_steps(replace(config.train, task=name),
                                                                             len(task.train))[0]))  # fmt: skip
    return plan


def run_continual(
    config: ContinualConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    on_step: OnStep | None = None,
    keep_weights: bool = True,
    workers: int = 1,
    device: str = "auto",
) -> ContinualResult:
    """Train ``config.tasks`` in order for every entry of ``config.ranks`` and measure the stages (Fig. 8).

    Writes ``out_dir`` (see the module docstring) and returns the accuracy matrices, baselines and intruders.
    ``resume``: continue an interrupted run in ``out_dir`` (finished stages are kept, a half-trained stage
    continues from its last checkpoint); refused when the stored settings differ (each difference is named).
    ``cache_dir``: the original base's SVD cache (default: the cache every verb shares). ``on_step(run_label, step,
    max_steps)`` is called after every training step of every stage (labels as in :func:`continual_plan`; a
    stage finished earlier reports once, at its last step). ``progress``: status lines and each stage's
    training bar on stderr. ``keep_weights=False`` deletes a stage's merged weights (and the run's best/)
    once the next stage is finished: the last stage's weights are always kept. ``workers`` > 1: the methods
    (ranks) train side by side in that many worker processes (:mod:`intrudim.side_by_side`; the same numbers as
    one after the other; their status lines are not printed, ``on_step`` still reports every step). ``device``:
    where every stage trains (auto, cpu or cuda, as ``train --device``).
    """
    from rich.console import Console

    from intrudim.models.loading import resolve_objective
    from intrudim.models.references import resolve_model_folder

    check_training_device(device)
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    base_model = resolve_model_folder(config.train.model, progress=progress, what="--model")
    objective = resolve_objective(config.train.objective, base_model)
    tasks = {name: _load_task(config.train, name) for name in config.tasks}  # a task that cannot load: refused here
    for name, rank in ((config.tasks[0], rank) for rank in config.ranks):  # bad recipe values: refused here
        config.stage_config(rank, name, str(base_model), objective)
    _prepare_out(out, config, base_model, objective, resume)
    ctx = _Context(
        config=config, out=out, base_model=base_model, objective=objective, tasks=tasks,
        cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(), progress=progress,
        on_step=on_step, keep_weights=keep_weights, console=Console(stderr=True) if progress else None, device=device,
    )  # fmt: skip
    methods: dict[str, MethodResult] = {}
    if workers > 1 and len(config.ranks) > 1:
        from dataclasses import replace

        from intrudim.side_by_side import run_side_by_side

        quiet = replace(ctx, on_step=None, console=None, progress=False)  # what a worker process receives
        done = run_side_by_side({rank: (_method_job, (quiet, rank, resume)) for rank in config.ranks}, workers=workers,
                                on_event=lambda rank, event: on_step(*event) if on_step is not None else None)  # fmt: skip
        methods = {method_label(rank): done[rank] for rank in config.ranks}
    else:
        for rank in config.ranks:
            methods[method_label(rank)] = _run_method(ctx, rank, resume)
    result = ContinualResult(config=config, out_dir=out, base_model=str(base_model), objective=objective,
                             methods=methods, seconds=time.perf_counter() - started)  # fmt: skip
    _write_outputs(result)
    return result


def load_continual_result(out_dir: str | Path) -> dict[str, Any]:
    """The continual.json of a finished run (as written)."""
    path = Path(out_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntrudimError(f"Cannot read '{path}' ({exc}); is '{out_dir}' a finished continual run?") from None

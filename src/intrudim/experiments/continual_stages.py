"""One method's stages in order: the base (stage 0), then train, merge, measure, prune; resume keeps them."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from intrudim.experiments.continual_config import CONFIG_FILE, HEAD_FILE, STAGE_FILE, method_label
from intrudim.experiments.continual_context import _Context, _run_label
from intrudim.experiments.continual_heads import _merged_model, _write_stage_weights
from intrudim.experiments.continual_measure import _count_intruders, _evaluate
from intrudim.experiments.continual_results import MethodResult, StageRecord
from intrudim.fileio import write_json_atomic


def _read_stage(path: Path) -> StageRecord | None:
    try:
        return StageRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _stage_zero(ctx: _Context, method_dir: Path) -> StageRecord:
    path = method_dir / "stage-0.json"
    done = _read_stage(path)
    if done is not None:
        return done
    started = time.perf_counter()
    accuracies: dict[str, float | None] = {name: None for name in ctx.tasks}
    if ctx.causal:
        ctx.say(f"{method_dir.name}: stage 0, evaluating the base model on {len(ctx.tasks)} tasks")
        accuracies = _evaluate(ctx, ctx.base_model, {})
    record = StageRecord(stage=0, task=None, accuracies=accuracies, intruders=0, energy_share=0.0,
                         energy_share_sum=0.0, matrices_with_intruders=0, matrices_analysed=0,
                         evaluate_seconds=round(time.perf_counter() - started, 3))  # fmt: skip
    write_json_atomic(path, record.to_json())
    return record


def _run_stage(ctx: _Context, rank: int | str, index: int, name: str, start: Path, method_dir: Path,
               heads: dict[str, Path], resume: bool) -> StageRecord:  # fmt: skip
    from intrudim.train.engine import train
    from intrudim.train.recipe import total_training_steps
    from intrudim.train.sweep import _completed

    label = _run_label(rank, index, name)
    stage_dir = method_dir / f"stage-{index}-{name}"
    run_dir = stage_dir / "run"
    stage_config = ctx.config.stage_config(rank, name, str(start), ctx.objective)
    max_steps = total_training_steps(stage_config, len(ctx.tasks[name].train))[0]
    total = len(ctx.config.tasks)
    result = _completed(run_dir) if resume else None
    if result is None:
        ctx.say(f"{label}: stage {index}/{total}, training '{name}' ({max_steps} steps)")
        callback = None if ctx.on_step is None else (lambda step: ctx.on_step(label, step, max_steps))  # type: ignore[misc]
        stage_dir.mkdir(parents=True, exist_ok=True)
        result = train(stage_config, run_dir, resume=resume and (run_dir / CONFIG_FILE).exists(),
                       progress=ctx.progress, cache_dir=ctx.cache_dir, figures=False, on_step=callback,
                       device=ctx.device)  # fmt: skip
    elif ctx.on_step is not None:
        ctx.on_step(label, max_steps, max_steps)
    ctx.say(f"{label}: merging and evaluating {index if not ctx.causal else total} task(s)")
    model, tokenizer = _merged_model(ctx, start, result.final_dir, ctx.tasks[name])
    _write_stage_weights(ctx, model, tokenizer, stage_dir)
    del model
    if not ctx.causal:
        heads[name] = stage_dir / HEAD_FILE
    started = time.perf_counter()
    accuracies = _evaluate(ctx, stage_dir / "merged", heads)
    evaluate_seconds = time.perf_counter() - started
    ctx.say(f"{label}: counting intruders against the original base")
    started = time.perf_counter()
    counts = _count_intruders(ctx, stage_dir / "merged")
    record = StageRecord(
        stage=index, task=name, accuracies=accuracies, **counts, train_steps=result.steps,
        train_accuracy=result.final_accuracy, train_seconds=round(result.seconds, 3),
        evaluate_seconds=round(evaluate_seconds, 3), analysis_seconds=round(time.perf_counter() - started, 3),
        weights=str(stage_dir / "merged"),
    )  # fmt: skip
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # resume state of a finished stage: never used again
    write_json_atomic(stage_dir / STAGE_FILE, record.to_json())
    return record


def _prune(previous: StageRecord) -> None:
    """Without ``keep_weights``: an earlier stage's merged/ and best/ go once the next stage is finished."""
    if previous.weights is None:
        return
    merged = Path(previous.weights)
    shutil.rmtree(merged, ignore_errors=True)
    shutil.rmtree(merged.parent / "run" / "best", ignore_errors=True)
    previous.weights = None
    write_json_atomic(merged.parent / STAGE_FILE, previous.to_json())


def _run_method(ctx: _Context, rank: int | str, resume: bool) -> MethodResult:
    label = method_label(rank)
    method_dir = ctx.out / label
    method_dir.mkdir(parents=True, exist_ok=True)
    result = MethodResult(label=label, method="full" if rank == "full" else ctx.config.method,
                          rank=None if rank == "full" else int(rank), tasks=ctx.config.tasks)  # fmt: skip
    result.stages.append(_stage_zero(ctx, method_dir))
    heads: dict[str, Path] = {}
    start = ctx.base_model
    for index, name in enumerate(ctx.config.tasks, start=1):
        stage_dir = method_dir / f"stage-{index}-{name}"
        record = _read_stage(stage_dir / STAGE_FILE) if resume else None
        if record is None:
            record = _run_stage(ctx, rank, index, name, start, method_dir, heads, resume)
        else:
            ctx.say(f"{_run_label(rank, index, name)}: finished earlier, kept")
            if ctx.on_step is not None:
                ctx.on_step(_run_label(rank, index, name), record.train_steps or 0, record.train_steps or 0)
        if not ctx.causal:
            heads[name] = stage_dir / HEAD_FILE
        if not ctx.keep_weights and len(result.stages) > 1:
            _prune(result.stages[-1])
        result.stages.append(record)
        start = stage_dir / "merged"
    return result


def _method_job(ctx: _Context, rank: int | str, resume: bool, *, report) -> MethodResult:  # noqa: ANN001
    """:func:`_run_method` in a worker process (:mod:`intrudim.side_by_side`): each step goes back as an event."""
    ctx.on_step = lambda label, step, max_steps: report((label, step, max_steps))
    return _run_method(ctx, rank, resume)

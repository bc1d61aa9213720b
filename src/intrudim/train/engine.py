"""The training loop: Appendix A's recipe, trained to a target accuracy, checkpointed and tracked.

One loop for every method. AdamW without weight decay, a linear schedule with 6% warm-up, batch 16
(global, split over processes when ``accelerate launch`` runs several). The order of the data is a
function of (seed, epoch) and every checkpoint stores the RNG, optimizer and scheduler states, so a
run is deterministic for a seed on CPU and a resumed run continues exactly where it stopped.

Encoders are trained with a classification head and cross-entropy over the classes. A causal LM
(``objective="causal-lm"``, issue 13) is trained as a language model on "prompt + answer text" with the
cross-entropy of the answer tokens only, and evaluated by the answers' log-likelihoods
(:mod:`intrudim.tasks.prompts`, :mod:`intrudim.evaluate.batching`).

This module sets a run up and runs its loop; the recipe's numbers (steps, batch order, optimizer and schedule) are
in :mod:`~intrudim.train.recipe`, the device in :mod:`~intrudim.train.devices`, the result in
:mod:`~intrudim.train.result`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.errors import IntrudimError
from intrudim.evaluate.accuracy import count_correct
from intrudim.evaluate.batching import answer_loss, example_labels, example_logits
from intrudim.fileio import write_json_atomic
from intrudim.models.loading import resolve_objective
from intrudim.models.references import resolve_model_folder
from intrudim.tasks import Task, get_task
from intrudim.tasks.prompts import PromptFormat, prompt_format
from intrudim.train.checkpoints import (
    LoopState,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    save_weights_atomic,
)
from intrudim.train.config import TrainConfig
from intrudim.train.devices import check_training_device, make_accelerator
from intrudim.train.figures import write_run_figures
from intrudim.train.methods import build_model
from intrudim.train.metrics import MetricsLog
from intrudim.train.progress import TrainingProgress
from intrudim.train.recipe import _make_optimizer, batch_indices, total_training_steps
from intrudim.train.result import TrainResult
from intrudim.train.run_dir import METRICS_FILE, check_run_dir, prepare_run_dir
from intrudim.train.tracking import analysis_available, track_intruders
from intrudim.weights.svd_cache import default_cache_dir

StepCallback = Callable[[int], None]


@dataclass
class _Run:
    """Objects shared by the helpers of one run."""

    config: TrainConfig
    run_dir: Path
    base_model: Path
    task: Task
    model: nn.Module
    tokenizer: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    accelerator: Any
    metrics: MetricsLog
    cache_dir: Path
    max_steps: int
    steps_per_epoch: int
    track: bool
    prompt_format: PromptFormat | None = None  # set for a causal LM trained as a language model
    device: str = "auto"  # where training runs (accelerate), and tracking's base SVDs when "cuda"

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)


def _training_loss(run: _Run, step: int) -> torch.Tensor:
    indices = batch_indices(step, run.config.seed, len(run.task.train), run.config.batch_size, run.steps_per_epoch)
    accelerator = run.accelerator
    local = indices[accelerator.process_index :: accelerator.num_processes] or indices[:1]
    examples = [run.task.train[i] for i in local]
    if run.prompt_format is not None:
        return answer_loss(
            run.model, run.tokenizer, examples, run.task.kind, run.prompt_format, run.config.max_length,
            accelerator.device,
        )  # fmt: skip
    logits = example_logits(
        run.model, run.tokenizer, examples, run.task.kind, run.config.max_length, accelerator.device
    )
    return nn.functional.cross_entropy(logits.float(), example_labels(examples, accelerator.device))


def _evaluate(run: _Run) -> float:
    accelerator = run.accelerator
    shard = run.task.validation[accelerator.process_index :: accelerator.num_processes]
    correct, total = count_correct(
        run.model, run.tokenizer, shard, run.task.kind,
        max_length=run.config.max_length, batch_size=run.config.eval_batch_size, device=accelerator.device,
        prompt_format=run.prompt_format,
    )  # fmt: skip
    counts = torch.tensor([correct, total], dtype=torch.float64, device=accelerator.device)
    counts = accelerator.reduce(counts, reduction="sum") if accelerator.num_processes > 1 else counts
    return float(counts[0] / counts[1])


def _track(run: _Run, tuned: Path, step: int, event: str, effective_rank: bool = False) -> dict[str, Any] | None:
    """Intruders of ``tuned`` into metrics.jsonl (k, ε of the config); None when tracking is off."""
    if not run.track:
        return None
    record, seconds = track_intruders(
        run.base_model, tuned, k=run.config.intruder_k, epsilon=run.config.intruder_epsilon,
        cache_dir=run.cache_dir, effective_rank=effective_rank,
        device="cuda" if run.device == "cuda" else "cpu",
    )  # fmt: skip
    run.metrics.write({"event": event, "step": step, "path": str(tuned.relative_to(run.run_dir)),
                       "intruders": record, "tracking_seconds": round(seconds, 4)})  # fmt: skip
    return record


def _save_checkpoint(run: _Run, state: LoopState) -> None:
    if run.is_main:
        path = save_checkpoint(run.run_dir, run.unwrapped, run.optimizer, run.scheduler, state)
        if not _track(run, path, state.step, "checkpoint"):
            run.metrics.write({"event": "checkpoint", "step": state.step, "path": str(path.relative_to(run.run_dir))})
    run.accelerator.wait_for_everyone()


def _all_finite(run: _Run, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process (all must stop together, or DDP would hang)."""
    bad = torch.tensor(0.0 if bool(torch.isfinite(loss.detach())) else 1.0, device=run.accelerator.device)
    if run.accelerator.num_processes > 1:
        bad = run.accelerator.reduce(bad, reduction="sum")
    return float(bad) == 0.0


def _stop_on_non_finite(run: _Run, state: LoopState, loss: torch.Tensor) -> None:
    """NaN/Inf loss at step state.step + 1: keep the weights before it as a checkpoint and stop."""
    bad_step = state.step + 1
    last_good = checkpoint_dir(run.run_dir, state.step)
    if run.is_main:
        if state.step > 0 and not last_good.exists():
            save_checkpoint(run.run_dir, run.unwrapped, run.optimizer, run.scheduler, state)
        run.metrics.write({"event": "non_finite_loss", "step": bad_step, "loss": float(loss.detach())})
    kept = f"The last good weights (step {state.step}) are in '{last_good}'" if state.step > 0 else "No step had run"
    raise IntrudimError(
        f"Training loss became {float(loss.detach())} at step {bad_step} of run '{run.run_dir}'; training stopped. "
        f"{kept}. Lower the learning rate (now {run.config.learning_rate:g}; --lr) and start again, or resume "
        f"with --resume after fixing the cause."
    )


def _set_up(
    config: TrainConfig, run_dir: Path, resume: bool, overwrite: bool, cache_dir: Path | None, progress: bool = True,
    device: str = "auto",
) -> tuple[_Run, LoopState]:
    check_training_device(device)

    base_model = resolve_model_folder(config.model, progress=progress, what="--model")
    config = replace(config, objective=resolve_objective(config.objective, base_model))  # the run records which
    task = get_task(
        config.task, seed=config.seed, train_fraction=config.train_fraction, data_path=config.data_path,
        max_train_examples=config.max_train_examples, max_validation_examples=config.max_validation_examples,
    )  # fmt: skip
    accelerator = make_accelerator(device)
    check_run_dir(run_dir, config, resume=resume, overwrite=overwrite)  # before any slow work
    max_steps, steps_per_epoch = total_training_steps(config, len(task.train))
    formats = prompt_format(task) if config.objective == "causal-lm" else None  # a task without answers: refused here
    parts = build_model(config, base_model, task.head_outputs)  # a bad --rank is refused here, nothing written
    resuming = prepare_run_dir(run_dir, config, base_model, resume=resume, overwrite=overwrite)
    optimizer, scheduler = _make_optimizer(parts.model, config, max_steps)
    metrics = MetricsLog(run_dir / METRICS_FILE)
    state = LoopState()
    checkpoints = list_checkpoints(run_dir) if resuming else []
    if checkpoints:
        state = load_checkpoint(checkpoints[-1][1], parts.model, optimizer, scheduler)
        metrics.keep_until(state.step)
    else:
        metrics.reset()
        metrics.write({
            "event": "start", "step": 0, "task": task.name, "objective": config.objective, "train_size": len(task.train),
            "validation_size": len(task.validation), "max_steps": max_steps, "method": config.method,
            "learning_rate": config.learning_rate, "trainable_parameters": parts.trainable_parameters,
            "total_parameters": parts.total_parameters, "target_modules": len(parts.target_modules),
        })  # fmt: skip
    model, optimizer = accelerator.prepare(parts.model, optimizer)
    track = config.track_intruders and analysis_available()
    run = _Run(
        config, run_dir, base_model, task, model, parts.tokenizer, optimizer, scheduler, accelerator, metrics,
        cache_dir if cache_dir is not None else default_cache_dir(), max_steps, steps_per_epoch, track, formats,
        device,
    )  # fmt: skip
    return run, state


def _after_evaluation(run: _Run, state: LoopState, accuracy: float) -> bool:
    """Record the accuracy, keep the best weights; True when the target accuracy is reached."""
    state.last_accuracy = accuracy
    run.metrics.write({"event": "eval", "step": state.step, "accuracy": accuracy})
    if state.best_accuracy is None or accuracy > state.best_accuracy:
        state.best_accuracy, state.best_step = accuracy, state.step
        if run.is_main:
            save_weights_atomic(run.unwrapped, run.run_dir / "best", run.tokenizer)
    target = run.config.target_accuracy
    if target is not None and accuracy >= target:
        state.target_reached_step = state.step
        return True
    return False


def _loop(run: _Run, state: LoopState, progress: TrainingProgress, on_step: StepCallback | None) -> str:
    config = run.config
    run.model.train()
    window: list[float] = []
    window_start = time.perf_counter()
    while state.step < run.max_steps:
        loss = _training_loss(run, state.step)
        if not _all_finite(run, loss):
            _stop_on_non_finite(run, state, loss)
        run.accelerator.backward(loss)
        if config.max_grad_norm is not None:
            run.accelerator.clip_grad_norm_(run.model.parameters(), config.max_grad_norm)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.last_loss = float(loss.detach())
        window.append(state.last_loss)
        if state.step % config.log_every == 0 or state.step == run.max_steps:
            elapsed = time.perf_counter() - window_start
            run.metrics.write({"event": "train", "step": state.step, "loss": sum(window) / len(window),
                               "lr": run.scheduler.get_last_lr()[0], "seconds_per_step": elapsed / len(window)})  # fmt: skip
            window, window_start = [], time.perf_counter()
        reached = False
        if state.step % config.eval_every == 0 or state.step == run.max_steps:
            progress.message(f"evaluating {len(run.task.validation)} held-out examples")
            reached = _after_evaluation(run, state, _evaluate(run))
        progress.update(state.step, state.last_loss, state.last_accuracy)
        if config.checkpoint_every and state.step % config.checkpoint_every == 0:
            _save_checkpoint(run, state)
        if on_step is not None:
            on_step(state.step)
        if reached:
            return "target_reached"
    return "max_steps"


def _finish(run: _Run, state: LoopState, stop_reason: str, started: float, figures: bool) -> TrainResult:
    final_dir = run.run_dir / "final"
    final_intruders = None
    if run.is_main:
        save_weights_atomic(run.unwrapped, final_dir, run.tokenizer)
        record = _track(run, final_dir, state.step, "final", effective_rank=True)
        final_intruders = None if record is None else record["total_intruders"]
    target = run.config.target_accuracy
    if target is None:
        message = f"Trained {state.step} steps; held-out accuracy {state.last_accuracy:.4f}."
    elif stop_reason == "target_reached":
        message = f"Reached the target accuracy {target:g} at step {state.step} (accuracy {state.last_accuracy:.4f})."
    else:
        message = (
            f"Target accuracy {target:g} was not reached within {run.max_steps} steps; the best held-out accuracy "
            f"was {state.best_accuracy:.4f} at step {state.best_step}, kept in '{run.run_dir / 'best'}'. Train longer "
            f"(--epochs/--steps), raise --lr, or lower --target-accuracy."
        )
    result = TrainResult(
        run_dir=run.run_dir, steps=state.step, max_steps=run.max_steps, stop_reason=stop_reason,
        target_accuracy=target, final_accuracy=state.last_accuracy, best_accuracy=state.best_accuracy,
        best_step=state.best_step, final_dir=final_dir, best_dir=run.run_dir / "best" if state.best_step else None,
        checkpoints=[step for step, _ in list_checkpoints(run.run_dir)], final_intruders=final_intruders,
        seconds=time.perf_counter() - started, message=message,
    )  # fmt: skip
    if run.is_main:
        run.metrics.write({"event": "stop", "step": state.step, "reason": stop_reason,
                           "accuracy": state.last_accuracy, "best_accuracy": state.best_accuracy})  # fmt: skip
        write_json_atomic(run.run_dir / "result.json", result.to_json())
        if figures:
            written = write_run_figures(run.metrics.read(), run.run_dir / "figures")
            if run.track and not any(path.name == "intruders_over_steps.png" for path in written):
                run.metrics.write({"event": "note", "step": state.step, "message": "no intruders-over-steps figure: "
                                   "the run had no checkpoints (--checkpoint-every N tracks intruders every N steps)"})  # fmt: skip
    return result


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    figures: bool = True,
    on_step: StepCallback | None = None,
    device: str = "auto",
) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.task`` with ``config.method`` into the run directory ``out_dir``.

    The run directory receives config.json (the frozen config and the base model's folder), metrics.jsonl
    (loss, accuracy, intruders per checkpoint), ``checkpoints/step-N/``, ``best/``, ``final/`` (a PEFT
    adapter or an HF model folder), result.json and ``figures/``. Training stops at the first evaluation
    reaching ``config.target_accuracy`` (Sec. 3: methods are compared at equal accuracy) or after the
    step limit. ``cache_dir`` holds the base SVDs for intruder tracking (default: the cache every verb shares,
    ``$INTRUDIM_CACHE`` or the user cache).
    ``figures=False`` skips the PNGs. ``on_step`` is called after every step (tests use it to interrupt a run).
    ``device``: "auto" (accelerate's choice: a visible GPU, else the CPU), "cpu", or "cuda" (an error without one).
    """
    started = time.perf_counter()
    run, state = _set_up(config, Path(out_dir), resume, overwrite, None if cache_dir is None else Path(cache_dir),
                         progress, device)  # fmt: skip
    config = run.config
    if config.track_intruders and not run.track and run.is_main:
        run.metrics.write({"event": "note", "step": state.step,
                           "message": "intruder tracking skipped: intrudim.analyze is not importable"})  # fmt: skip
    with TrainingProgress(run.max_steps, state.step, enabled=progress and run.is_main,
                          description=f"{config.method} {config.task}") as bar:  # fmt: skip
        stop_reason = _loop(run, state, bar, on_step)
        bar.message("saving final weights" + (" and tracking intruders" if run.track else ""))
    return _finish(run, state, stop_reason, started, figures)

"""Training speed and the cost of intruder tracking on the embedded MiniLM (issue #4, "Speed and memory").

Measures, on this machine's CPU:
1. optimizer steps per second (batch 16, the generated ``sentiment`` task, ≤64 tokens) for full fine-tuning
   and LoRA r = 1, 8, 64, each over the same batches after warm-up steps;
2. the cost of tracking intruders at a checkpoint: writing the checkpoint (weights + resume state) and
   analysing it against the cached base SVD (k=10, ε=0.5), as a fraction of the training time between two
   checkpoints at the default ``--checkpoint-every 100`` (goal: under 5%).

Run: ``python benchmarks/bench_train.py [--steps 20] [--checkpoint-every 100] [--json OUT.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from intrudim.evaluate.batching import example_labels, example_logits
from intrudim.models.references import resolve_model_folder
from intrudim.tasks import get_task
from intrudim.train.checkpoints import LoopState, save_checkpoint
from intrudim.train.config import TrainConfig
from intrudim.train.methods import build_model
from intrudim.train.recipe import _make_optimizer, batch_indices
from intrudim.train.tracking import track_intruders

CASES = (("full", 0), ("lora", 1), ("lora", 8), ("lora", 64))


def _time_steps(config: TrainConfig, steps: int, warmup: int) -> tuple[float, object, object, object]:
    task = get_task(config.task, seed=config.seed)
    base = resolve_model_folder(config.model)
    parts = build_model(config, base, task.head_outputs)
    model = parts.model.train()
    optimizer, scheduler = _make_optimizer(model, config, steps + warmup)
    per_epoch = len(task.train) // config.batch_size
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        batch = [
            task.train[i]
            for i in batch_indices(step, config.seed, len(task.train), config.batch_size, per_epoch)
        ]
        logits = example_logits(model, parts.tokenizer, batch, task.kind, config.max_length)
        torch.nn.functional.cross_entropy(logits, example_labels(batch)).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - started) / steps, model, optimizer, scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    base = resolve_model_folder("minilm")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "svd_cache"
        for method, rank in CASES:
            config = TrainConfig(method=method, rank=max(rank, 1), seed=0)
            seconds_per_step, model, optimizer, scheduler = _time_steps(config, args.steps, args.warmup)
            run_dir = Path(tmp) / f"{method}-{rank}"
            started = time.perf_counter()
            checkpoint = save_checkpoint(run_dir, model, optimizer, scheduler, LoopState(step=args.steps))
            save_seconds = time.perf_counter() - started
            track_intruders(base, checkpoint, k=10, epsilon=0.5, cache_dir=cache)  # fills the base-SVD cache
            record, track_seconds = track_intruders(base, checkpoint, k=10, epsilon=0.5, cache_dir=cache)
            interval = args.checkpoint_every * seconds_per_step
            rows.append({
                "method": method if method == "full" else f"lora r={rank}", "seconds_per_step": seconds_per_step,
                "steps_per_second": 1.0 / seconds_per_step, "checkpoint_save_seconds": save_seconds,
                "tracking_seconds": track_seconds, "tracking_fraction": track_seconds / interval,
                "save_and_tracking_fraction": (save_seconds + track_seconds) / interval,
                "intruders": record["total_intruders"],
            })  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 16, sentiment, checkpoint every "
          f"{args.checkpoint_every} steps")  # fmt: skip
    print(
        f"{'method':<12}{'steps/s':>9}{'s/step':>9}{'save s':>9}{'track s':>9}{'track %':>9}{'save+track %':>14}"
    )
    for row in rows:
        print(f"{row['method']:<12}{row['steps_per_second']:>9.2f}{row['seconds_per_step']:>9.3f}"
              f"{row['checkpoint_save_seconds']:>9.3f}{row['tracking_seconds']:>9.3f}"
              f"{100 * row['tracking_fraction']:>8.2f}%{100 * row['save_and_tracking_fraction']:>13.2f}%")  # fmt: skip
    full = next(row for row in rows if row["method"] == "full")
    for row in rows[1:]:
        print(
            f"{row['method']}: {row['steps_per_second'] / full['steps_per_second']:.2f}x the steps/s of full FT"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

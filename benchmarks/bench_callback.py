"""IntruderCallback's cost inside a real ``transformers.Trainer`` run on the embedded SmolLM2-135M.

LoRA r = 16 (α = 32) on all seven projections of SmolLM2 (210 matrices), batch 4 × 32 tokens of the embedded news
text, ``--steps`` optimizer steps (default 150), ``IntruderCallback(every_n_steps=--every)`` (default 50: analyses
at steps 50, 100, 150). Each run is a fresh process (model load, imports and thread pools as a user's run has
them), in this order:

* **none**: training without the callback — the reference, measured in the same run of this script;
* **cold**: with the callback and an empty base SVD cache (the first run of a user on a new base model: the cold
  fill computes and stores 210 base SVDs);
* **warm**: with the callback over the cache the cold run filled (every later run on that base);
* **none** again, and **warm** again (``--repeats``, default 2): the spread between the two "none" runs says how
  much of a difference in training time is noise.

Printed: training time (``trainer.train()``, wall), the callback's own time measured inside the run (its cold
fill at train begin plus its analyses), that time as a share of the training time (wall, and process CPU time: robust
on a shared machine), and the warm runs' training time against the median of the "none" runs. Goal: the callback's share < 2 % once the cache is warm. Checks that
every run with the callback analysed the same steps and found the same intruder counts (same seed, same data).
Writes ``bench_out/bench_callback.json``.

    python benchmarks/bench_callback.py            # ~10 min on 2 quiet cores
    python benchmarks/bench_callback.py --quick    # 40 steps, every 20: ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def child(args: argparse.Namespace) -> None:
    """One training run; prints one JSON line with its timings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import intrudim  # noqa: F401, I001  (sets OMP_WAIT_POLICY=PASSIVE before torch loads, as for any intrudim user)
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from intrudim.evaluate.text import load_text
    from intrudim.integrations import IntruderCallback
    from intrudim.models.embedded import embedded_model_path

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = embedded_model_path("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer("\n".join(load_text("news").paragraphs))["input_ids"]
    rows = args.steps * args.batch
    if len(ids) < rows * args.seq:
        raise SystemExit(f"the news text has {len(ids)} tokens, fewer than {rows * args.seq} needed")
    chunks = [ids[i * args.seq : (i + 1) * args.seq] for i in range(rows)]
    dataset = Dataset.from_dict({"input_ids": chunks, "labels": chunks})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS))
    training = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
        logging_steps=args.every, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    class TimedCallback(IntruderCallback):
        """The callback, with the process CPU time of its train-begin (cold fill) and step-end (analyses) hooks:
        robust where wall-clock is not, on a machine shared with other processes."""

        cpu_seconds = 0.0

        def on_train_begin(self, *a, **kw):
            c0 = time.process_time()
            super().on_train_begin(*a, **kw)
            self.cpu_seconds += time.process_time() - c0

        def on_step_end(self, *a, **kw):
            c0 = time.process_time()
            super().on_step_end(*a, **kw)
            self.cpu_seconds += time.process_time() - c0

    trainer = Trainer(model=model, args=training, train_dataset=dataset)
    callback = None
    if args.mode != "none":
        callback = TimedCallback(every_n_steps=args.every, cache_dir=args.cache).attach(trainer)
    c0, t0 = time.process_time(), time.perf_counter()
    trainer.train()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    record = {"mode": args.mode, "train_s": wall, "train_cpu_s": cpu, "steps": trainer.state.global_step}
    if callback is not None:
        record.update(
            cold_fill_s=callback.cold_fill["seconds"], cache_hits=callback.cold_fill["cache_hits"],
            cache_misses=callback.cold_fill["cache_misses"], held_bytes=callback.cold_fill["held_bytes"],
            analysis_s=callback.analysis_seconds, matrices=callback.cold_fill["matrices"],
            callback_cpu_s=callback.cpu_seconds,
            timeline=[(r["step"], r["total_intruders"], r["seconds"]) for r in callback.timeline],
        )  # fmt: skip
    print("RESULT " + json.dumps(record), flush=True)


def run(mode: str, args: argparse.Namespace, cache: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--cache", str(cache), "--out", str(out), "--steps",
               str(args.steps), "--every", str(args.every), "--batch", str(args.batch), "--seq", str(args.seq),
               "--lr", str(args.lr)] + (["--threads", str(args.threads)] if args.threads else [])  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"the {mode} run failed (exit status {done.returncode})")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    record = json.loads(line[len("RESULT ") :])
    record["process_s"] = time.perf_counter() - started
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40 steps, analysed every 20")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of 'none' and of 'warm'")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: all cores)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        child(args)
        return
    if args.quick:
        args.steps, args.every = 40, 20
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_callback_") as workdir:
        cache, work = Path(workdir) / "svd-cache", Path(workdir)
        order = ["none", "cold", "warm"] + ["none", "warm"] * max(0, args.repeats - 1)
        records = []
        for index, mode in enumerate(order):
            record = run(mode, args, cache, work / f"out-{index}-{mode}")
            records.append(record)
            print(f"  {mode:5s} train {record['train_s']:7.1f} s" + (
                f"  callback {record['cold_fill_s'] + record['analysis_s']:6.2f} s" if mode != "none" else ""),
                flush=True)  # fmt: skip
    none = [r["train_s"] for r in records if r["mode"] == "none"]
    reference = statistics.median(none)
    rows = []
    print(f"\nSmolLM2-135M, LoRA r=16 on 7 projections (210 matrices), batch {args.batch} x {args.seq} tokens, "
          f"{args.steps} steps, every_n_steps={args.every}; load average {load_start} at start\n")  # fmt: skip
    header = f"{'run':6s} {'train s':>8s} {'s/step':>7s} {'cold fill s':>11s} {'analyses s':>10s} {'per analysis':>12s} " \
             f"{'callback share':>14s} {'CPU share':>9s} {'vs none':>8s}"  # fmt: skip
    print(header)
    print("-" * len(header))
    for r in records:
        row = {"mode": r["mode"], "train_s": r["train_s"], "s_per_step": r["train_s"] / r["steps"]}
        line = f"{r['mode']:6s} {r['train_s']:8.1f} {row['s_per_step']:7.3f}"
        if r["mode"] != "none":
            analyses = len(r["timeline"])
            own = r["cold_fill_s"] + r["analysis_s"]
            row.update(cold_fill_s=r["cold_fill_s"], analysis_s=r["analysis_s"], analyses=analyses,
                       per_analysis_s=r["analysis_s"] / max(analyses, 1), callback_share=own / r["train_s"],
                       cpu_share=r["callback_cpu_s"] / r["train_cpu_s"], vs_none=r["train_s"] / reference - 1.0)  # fmt: skip
            line += (f" {r['cold_fill_s']:11.2f} {r['analysis_s']:10.2f} {row['per_analysis_s']:12.2f} "
                     f"{100 * row['callback_share']:13.2f}% {100 * row['cpu_share']:8.2f}% "
                     f"{100 * row['vs_none']:+7.1f}%")  # fmt: skip
        rows.append(row)
        print(line)
    spread = (max(none) - min(none)) / reference if len(none) > 1 else None
    if spread is not None:
        print(f"\nthe 'none' runs differ by {100 * spread:.1f}% (noise floor of 'vs none')")
    tracked = [r for r in records if r["mode"] != "none"]
    counts = {json.dumps([(s, n) for s, n, _ in r["timeline"]]) for r in tracked}
    ok = len(counts) == 1 and all(r["steps"] == args.steps for r in records)
    print("intruders per analysed step:", tracked[0]["timeline"] and [(s, n) for s, n, _ in tracked[0]["timeline"]])
    warm_shares = [row["callback_share"] for row in rows if row["mode"] == "warm"]
    print(f"warm callback share: {', '.join(f'{100 * s:.2f}%' for s in warm_shares)} of the training's wall time "
          f"(goal < 2%); the training step at which one analysis every {args.every} steps costs 2%: "
          f"{statistics.median(row['per_analysis_s'] for row in rows if row['mode'] == 'warm') / (0.02 * args.every):.2f} s")
    print("check:", "PASS (same steps and counts in every run with the callback)" if ok else "FAIL")
    out_dir = Path("bench_out")
    out_dir.mkdir(exist_ok=True)
    (out_dir / "bench_callback.json").write_text(json.dumps({
        "settings": {k: getattr(args, k) for k in ("steps", "every", "batch", "seq", "lr", "repeats", "threads")},
        "records": records, "rows": rows, "none_spread": spread, "check": ok,
        "load_average": {"start": load_start, "end": load_average()},
    }, indent=2) + "\n")  # fmt: skip
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

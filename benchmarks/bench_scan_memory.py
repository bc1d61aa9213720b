"""Scan memory: peak RSS of an in-process `intrudim scan` does not grow with the number of adapters (issue 15).

Builds a synthetic LLaMA-shaped base in a temporary directory (bf16 safetensors, one shard per layer; by default
hidden 1024, MLP 2816, 4 layers: 28 analysed matrices) and M PEFT LoRA adapters of it (r = 16, α = 32, all seven
projections), each with its own factors — the checkpoints of ``bench_streaming.py``. Each scan runs in a fresh
**subprocess** through the Python API (``intrudim.scan.running.scan``, in-process engine, as ``intrudim scan``
runs without ``--ray``), into a fresh OUT over one shared base SVD cache, and reports its wall time and peak RSS
(``VmHWM`` of /proc/self/status; not ``ru_maxrss``, which on Linux includes the forking parent's RSS). It also samples its anonymous and file-backed resident memory
(``/proc/self/status``) after every unit and reports how much each grew from the first adapter's report to the
last one's.

Runs:
  1. 1 adapter, cold cache (fills the cache; its peak holds the base SVDs' computation, not compared);
  2. 2 adapters, warm cache;
  3. M adapters, warm cache (``--adapters``, default 16).
Check: peak RSS of run 3 / run 2 within 5 % (issue 15's goal). With ``--repeats R`` each warm run is repeated
and the check takes the largest M-adapter peak over the smallest 2-adapter one.

    python benchmarks/bench_scan_memory.py --threads 1               # 2 vs 16 adapters: ~2 min on one core
    python benchmarks/bench_scan_memory.py --adapters 32 --repeats 2

Writes the table to bench_out/bench_scan_memory.json. The temporary directory is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streaming import MEMORY_PROBE, dir_size, run_python, write_adapter, write_base  # noqa: E402

OUT_DIR = Path("bench_out")
GOAL = 1.05
"""Issue 15: peak RSS of M adapters within 5 % of 2 adapters (warm cache)."""

CHILD = r"""
import json, resource, sys, time
import torch
from intrudim.analysis.config import AnalyzeConfig
from intrudim.scan.config import ScanConfig
from intrudim.scan.running import scan

""" + MEMORY_PROBE + r"""samples = []  # after every report unit (one per adapter)
def sample(done, total, what):
    if what.endswith(": report") or what == "done":
        samples.append(resident_mb())

base, out, cache = sys.argv[1], sys.argv[2], sys.argv[3]
adapters = sys.argv[4:]
rss_import_mb = peak_mb()
t0 = time.perf_counter()
result = scan(base, adapters, out, ScanConfig(analysis=AnalyzeConfig(k=10, epsilon=0.5)), cache_dir=cache,
              progress=sample)
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
errors = [row["error"] for row in result.rows if row["error"]]
first, last = (samples[0], samples[-1]) if samples and samples[0][0] is not None else ((None, None), (None, None))
print(json.dumps({
    "wall_s": wall,
    "cpu_s_process": usage.ru_utime + usage.ru_stime,
    "peak_rss_mb": peak_mb(),
    "ru_maxrss_mb": usage.ru_maxrss / 1024,
    "rss_after_import_mb": rss_import_mb,
    "adapters": len(result.rows),
    "errors": errors,
    "total_intruders": sum(row["total_intruders"] or 0 for row in result.rows),
    "matrix_units": result.document["units"]["matrix"],
    "torch_threads": torch.get_num_threads(),
    "anon_first_adapter_mb": first[0], "anon_last_adapter_mb": last[0],
    "file_first_adapter_mb": first[1], "file_last_adapter_mb": last[1],
}))
"""


def run_child(base: Path, adapters: list[Path], out: Path, cache: Path, threads: int | None) -> dict:
    data, outer = run_python(CHILD, [str(base), str(out), str(cache), *map(str, adapters)], threads)
    if data["errors"]:
        raise SystemExit(f"the scan reported errors in its rows: {data['errors'][:3]}")
    data["process_wall_s"] = outer  # includes interpreter start and imports
    return data


def summary(values: list[float]) -> str:
    return f"{min(values):.0f}" if len(values) == 1 else f"{min(values):.0f}–{max(values):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--mlp", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument(
        "--adapters", type=int, default=16, help="adapters of the large scan, compared with 2 (default 16)"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per warm run (the check takes the worst pair)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints, cache and scan outputs")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of the scan subprocess (default: all)"
    )
    args = parser.parse_args()
    if args.adapters < 3:
        parser.error(f"--adapters must be at least 3 (it is compared with 2 adapters); got {args.adapters}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    m = args.adapters
    r, alpha = 16, 32
    work = Path(tempfile.mkdtemp(prefix="intrudim_bench_scan_memory_", dir=args.workdir))
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"torch {torch.__version__}; LLaMA-shaped base hidden={args.hidden} MLP={args.mlp} layers={args.layers} "
          f"(bf16), LoRA r={r} α={alpha} on all 7 projections; 2 vs {m} adapters; work dir {work}; "
          f"load average at start: {load_start}")  # fmt: skip
    try:
        t0 = time.perf_counter()
        write_base(
            work / "base", args.layers, args.hidden, args.mlp, torch.bfloat16, seed_of_layer=lambda i: i
        )
        adapters = []
        for i in range(m):
            adapters.append(work / f"adapter_{i:02d}")
            write_adapter(adapters[-1], args.layers, args.hidden, args.mlp, r, alpha, seed=100 + i)
        print(f"built the base ({dir_size(work / 'base') / 2**20:.0f} MiB) and {m} adapters "
              f"({dir_size(adapters[0]) / 2**20:.1f} MiB each) in {time.perf_counter() - t0:.1f}s\n", flush=True)  # fmt: skip
        cache = work / "cache"
        runs = [("1 adapter, cold cache", 1)]
        runs += [("2 adapters, warm cache", 2)] * args.repeats
        runs += [(f"{m} adapters, warm cache", m)] * args.repeats
        rows = []
        for number, (label, count) in enumerate(runs):
            data = run_child(work / "base", adapters[:count], work / f"out_{number}", cache, args.threads)
            if not args.keep:
                shutil.rmtree(work / f"out_{number}", ignore_errors=True)
            rows.append({"run": label, "adapters": count, **data})
            growth = ""
            if data["anon_first_adapter_mb"] is not None:
                growth = (f"  first→last adapter: anon {data['anon_first_adapter_mb']:.0f}→"
                          f"{data['anon_last_adapter_mb']:.0f}, file {data['file_first_adapter_mb']:.0f}→"
                          f"{data['file_last_adapter_mb']:.0f} MiB")  # fmt: skip
            print(
                f"{label:24s} {data['matrix_units']:4d} matrix units  scan {data['wall_s']:6.1f}s "
                f"({60 * count / data['wall_s']:.1f} adapters/min, CPU {data['cpu_s_process']:.1f}s)  "
                f"peak RSS {data['peak_rss_mb']:6.0f} MiB (after import {data['rss_after_import_mb']:.0f})  "
                f"intruders {data['total_intruders']}" + growth,
                flush=True,
            )
        print(
            "\n| run | matrix units | scan wall (s) | adapters / min | peak RSS (MiB) | "
            "anon / file-backed RSS, first → last adapter (MiB) |"
        )
        print("|---|---|---|---|---|---|")
        for row in rows:
            growth = ("" if row["anon_first_adapter_mb"] is None else
                      f"{row['anon_first_adapter_mb']:.0f} → {row['anon_last_adapter_mb']:.0f} / "
                      f"{row['file_first_adapter_mb']:.0f} → {row['file_last_adapter_mb']:.0f}")  # fmt: skip
            print(
                f"| {row['run']} | {row['matrix_units']} | {row['wall_s']:.1f} | "
                f"{60 * row['adapters'] / row['wall_s']:.1f} | {row['peak_rss_mb']:.0f} | {growth} |"
            )
        warm2 = [row["peak_rss_mb"] for row in rows[1:] if row["adapters"] == 2]
        warm_m = [row["peak_rss_mb"] for row in rows[1:] if row["adapters"] == m]
        ratio = max(warm_m) / min(warm2)
        flat = ratio <= GOAL
        print(f"\nCHECK peak RSS {m} adapters / 2 adapters (warm) = {ratio:.3f} (peak RSS MiB: 2 adapters "
              f"{summary(warm2)}, {m} adapters {summary(warm_m)}"
              f"{f'; worst of {args.repeats} runs each' if args.repeats > 1 else ''}): "
              f"{'PASS (within 5 %: does not grow with adapters)' if flat else 'FAIL (more than 5 %: grows with adapters)'}")  # fmt: skip
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / "bench_scan_memory.json"
        out.write_text(json.dumps({
            "benchmark": "bench_scan_memory", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": args.threads, "hidden": args.hidden, "mlp": args.mlp,
            "layers": args.layers, "adapters": m, "repeats": args.repeats, "lora_r": r, "lora_alpha": alpha, "goal": GOAL,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            f"rss_ratio_{m}_vs_2_adapters_warm": ratio, "check_pass": flat, "rows": rows,
        }, indent=2) + "\n")  # fmt: skip
        print(f"load average at end: {[round(x, 2) for x in os.getloadavg()]}")
        print(f"wrote {out}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Streaming: peak memory of `intrudim.analyze` does not grow with the number of layers (DESIGN.md, "Streaming").

Builds synthetic LLaMA-7B-shaped checkpoints in a temporary directory — hidden 4096, MLP 11008: per layer
q/k/v/o (4096×4096), gate/up (11008×4096), down (4096×11008), bf16 safetensors, one shard per layer with a
``model.safetensors.index.json``, LlamaConfig-style keys and a minimal ``config.json`` (model_type "llama") —
with 2 and N layers (``--layers``, default 4), and a PEFT LoRA adapter (r = 16, α = 32, all seven projections) for
each, with its own factors in every layer. Each configuration runs
``intrudim.analyze(base_dir, adapter_dir, cache_dir=...)`` in a fresh **subprocess**, which reports its wall time
and peak RSS: ``VmHWM`` of /proc/self/status on Linux. Not ``getrusage(RUSAGE_SELF).ru_maxrss``, which this script
used before issue 15: Linux carries the forking parent's RSS into a child's ru_maxrss, so every figure had the
parent's size (it had just written the checkpoints: ~1.2 GiB at 7B shapes) as a floor and ratios were squashed
towards 1 (ru_maxrss is still reported, as ``ru_maxrss_mb``).

Runs:
  1. 2 layers, cold cache (computes and stores 14 float64 base SVDs — the slow, one-time part);
  2. 2 layers, warm cache (every base SVD is a cache hit);
  3. N layers, warm cache: layers 2… of the N-layer base repeat the weights of layers 0–1 (layer i holds layer
     i mod 2's; the cache is keyed by content, so they hit the entries of run 1); its adapter has its own factors
     for all N layers. Computing more cold SVDs would only repeat run 1's per-matrix cost.
Peak RSS of run 3 vs run 2 shows whether memory grows with layer count (weights are read one matrix at a time
with ``safe_open``; nothing is kept across matrices except the per-matrix results). Goal (issue 15): within 5 %.
With ``--repeats R`` each warm run is repeated R times (fresh processes) and the check compares the largest
N-layer peak with the smallest 2-layer one, so allocator noise between runs counts against it. The child also
samples its anonymous and file-backed resident memory (``/proc/self/status``) after every matrix and reports how
much each grew from the first matrix to the last: the per-layer growth, if any, and of which kind.

    python benchmarks/bench_streaming.py            # LLaMA-7B shapes (4096 / 11008): ~10 min on 2 cores
    python benchmarks/bench_streaming.py --quick    # hidden 2048 / MLP 5504: ~2 min
    python benchmarks/bench_streaming.py --layers 32 --threads 1 --workdir /work   # the 7B memory check:
        # 2 vs 32 layers (a 12.9 GB base of 32 bf16 layers is written; ~25 min on one core)

Writes the table to bench_out/bench_streaming.json (bench_streaming_layersN.json for --layers N ≠ 4). The
temporary directory is removed unless --keep; ``--reuse DIR`` runs again in a directory kept that way (same shapes
and --layers), skipping the checkpoints' construction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT_DIR = Path("bench_out")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

MEMORY_PROBE = r"""def status_mb():
    # VmHWM, RssAnon, RssFile of this process in MiB (/proc/self/status; empty off Linux)
    found = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    found[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return found

def resident_mb():
    # (anonymous, file-backed) resident MiB of this process, or (None, None) off Linux
    found = status_mb()
    return found.get("RssAnon"), found.get("RssFile")

def peak_mb():
    # This process's own peak RSS: VmHWM belongs to the memory image made at exec. getrusage's ru_maxrss does
    # not: Linux carries the RSS of the forking parent into the child's ru_maxrss, so a large parent (one that
    # has just written the checkpoints) sets a floor under every child's figure.
    return status_mb().get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

"""
"""Child-side helpers: this process's own peak, anonymous and file-backed RSS (bench_scan_memory.py uses them too)."""

CHILD = r"""
import json, resource, sys, time
import torch
import intrudim

""" + MEMORY_PROBE + r"""samples = []
def sample(done, total, name):
    if done > 0:  # after matrix number `done`
        samples.append(resident_mb())

rss_import_mb = peak_mb()
t0 = time.perf_counter()
result = intrudim.analyze(sys.argv[1], sys.argv[2], k=10, epsilon=0.5, cache_dir=sys.argv[3], progress=sample)
wall = time.perf_counter() - t0
first, last = (samples[0], samples[-1]) if samples and samples[0][0] is not None else ((None, None), (None, None))
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "wall_s": wall,
    "cpu_s_process": usage.ru_utime + usage.ru_stime,
    "peak_rss_mb": peak_mb(),
    "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_import_mb": rss_import_mb,
    "matrices": len(result.matrices),
    "total_intruders": result.total_intruders,
    "cache_hits": result.cache_hits,
    "cache_misses": result.cache_misses,
    "torch_threads": torch.get_num_threads(),
    "anon_first_matrix_mb": first[0], "anon_last_matrix_mb": last[0],
    "file_first_matrix_mb": first[1], "file_last_matrix_mb": last[1],
    "anon_max_mb": max((a for a, _ in samples if a is not None), default=None),
    "file_max_mb": max((f for _, f in samples if f is not None), default=None),
}))
"""


def layer_shapes(hidden: int, mlp: int) -> dict[str, tuple[int, int]]:
    """(out, in) of each projection, as stored by nn.Linear."""
    return {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (hidden, hidden),
        "self_attn.v_proj": (hidden, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (mlp, hidden),
        "mlp.up_proj": (mlp, hidden),
        "mlp.down_proj": (hidden, mlp),
    }


def write_base(path: Path, layers: int, hidden: int, mlp: int, dtype: torch.dtype, seed_of_layer) -> int:
    """A sharded LLaMA-style checkpoint, one shard per layer; returns its size in bytes."""
    path.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    total = 0
    drawn: dict[int, dict[str, torch.Tensor]] = {}  # seed -> weights: a repeated layer is drawn once
    for layer in range(layers):
        seed = seed_of_layer(layer)
        if seed not in drawn:
            g = torch.Generator().manual_seed(1000 + seed)
            # LlamaConfig initializer_range = 0.02
            drawn[seed] = {name: (0.02 * torch.randn(out_dim, in_dim, generator=g)).to(dtype)
                           for name, (out_dim, in_dim) in layer_shapes(hidden, mlp).items()}  # fmt: skip
        tensors = {}
        for name, weight in drawn[seed].items():
            tensors[f"model.layers.{layer}.{name}.weight"] = weight
        tensors[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        tensors[f"model.layers.{layer}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        shard = f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
        save_file(tensors, str(path / shard), metadata={"format": "pt"})
        total += (path / shard).stat().st_size
        weight_map.update({key: shard for key in tensors})
        del tensors
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "intermediate_size": mlp, "num_hidden_layers": layers, "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128, "vocab_size": 32000, "torch_dtype": str(dtype).replace("torch.", ""),
    }, indent=2))  # fmt: skip
    return total


def write_adapter(path: Path, layers: int, hidden: int, mlp: int, r: int, alpha: int, seed: int) -> None:
    """A PEFT LoRA adapter for every projection: A ~ N(0, 1/in), B ~ N(0, 0.01²) (a trained-looking B ≠ 0)."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for name, (out_dim, in_dim) in layer_shapes(hidden, mlp).items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, in_dim, generator=g) / in_dim**0.5
            tensors[f"{prefix}.lora_B.weight"] = 0.01 * torch.randn(out_dim, r, generator=g)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": list(PROJECTIONS),
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic-llama",
    }, indent=2))  # fmt: skip


def run_python(code: str, args: list[str], threads: int | None) -> tuple[dict, float]:
    """Run ``code`` in a fresh interpreter (offline, at ``threads`` BLAS/OpenMP threads): the JSON object its last
    stdout line holds, and the process's wall time (interpreter start and imports included)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads is not None:
        env.update(
            {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    outer = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), outer


def run_child(base: Path, adapter: Path, cache: Path, threads: int | None) -> dict:
    data, outer = run_python(CHILD, [str(base), str(adapter), str(cache)], threads)
    data["process_wall_s"] = outer  # includes interpreter start and imports
    return data


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


GOAL = 1.05
"""Issue 15: peak RSS of N layers within 5 % of 2 layers (warm cache)."""


def summary(values: list[float]) -> str:
    return f"{min(values):.0f}" if len(values) == 1 else f"{min(values):.0f}–{max(values):.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="hidden 2048 / MLP 5504 instead of LLaMA-7B's 4096 / 11008"
    )
    parser.add_argument(
        "--hidden", type=int, default=None, help="override the hidden size (e.g. a smoke test)"
    )
    parser.add_argument("--mlp", type=int, default=None, help="override the MLP size")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument(
        "--layers",
        type=int,
        default=4,
        help="layers of the large model compared with 2 (default 4; 7B check: 32)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="fresh processes per warm run (the check takes the worst pair)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and cache")
    parser.add_argument(
        "--reuse",
        type=Path,
        default=None,
        help="a directory kept by an earlier --keep run: reuse it (implies --keep)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of the analyze subprocess (default: all)"
    )
    args = parser.parse_args()
    if args.layers < 3:
        parser.error(f"--layers must be at least 3 (it is compared with 2 layers); got {args.layers}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; got {args.repeats}")
    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    hidden, mlp = args.hidden or hidden, args.mlp or mlp
    dtype = getattr(torch, args.dtype)
    r, alpha = 16, 32
    n = args.layers
    keep = args.keep or args.reuse is not None
    if args.reuse is not None:
        work = args.reuse
        if not (work / "base2").is_dir() or not (work / f"base{n}").is_dir():
            raise SystemExit(
                f"--reuse {work}: no base2/ and base{n}/ there (run once with --keep --layers {n})"
            )
    else:
        work = Path(tempfile.mkdtemp(prefix="intrudim_bench_streaming_", dir=args.workdir))
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"torch {torch.__version__}; shapes hidden={hidden} MLP={mlp} ({'--quick' if args.quick else 'LLaMA-7B'}), "
          f"{args.dtype}, LoRA r={r} α={alpha}; 2 vs {n} layers; work dir {work}; "
          f"load average at start: {load_start}")  # fmt: skip
    try:
        t0 = time.perf_counter()
        if args.reuse is None:
            write_base(work / "base2", 2, hidden, mlp, dtype, seed_of_layer=lambda layer: layer)
            # layers 2… repeat the weights of layers 0-1 so that run 3 hits the cache filled by run 1
            write_base(work / f"base{n}", n, hidden, mlp, dtype, seed_of_layer=lambda layer: layer % 2)
            write_adapter(work / "adapter2", 2, hidden, mlp, r, alpha, seed=2)
            write_adapter(work / f"adapter{n}", n, hidden, mlp, r, alpha, seed=n)
        size2, size_n = dir_size(work / "base2"), dir_size(work / f"base{n}")
        print(f"{'reused' if args.reuse else 'built'} checkpoints in {time.perf_counter() - t0:.1f}s: 2 layers "
              f"{size2 / 2**20:.0f} MiB, {n} layers {size_n / 2**20:.0f} MiB\n", flush=True)  # fmt: skip
        cache = work / "cache"
        runs = [("2 layers, cold cache", 2, size2)] if args.reuse is None or not cache.is_dir() else []
        runs += [("2 layers, warm cache", 2, size2)] * args.repeats
        runs += [(f"{n} layers, warm cache", n, size_n)] * args.repeats
        rows = []
        for label, layers, size in runs:
            data = run_child(work / f"base{layers}", work / f"adapter{layers}", cache, args.threads)
            row = {"run": label, "layers": layers, "checkpoint_mib": size / 2**20, **data,
                   "cache_mib": dir_size(cache) / 2**20}  # fmt: skip
            rows.append(row)
            growth = ""
            if data.get("anon_first_matrix_mb") is not None:
                growth = (f"  first→last matrix: anon {data['anon_first_matrix_mb']:.0f}→"
                          f"{data['anon_last_matrix_mb']:.0f}, file {data['file_first_matrix_mb']:.0f}→"
                          f"{data['file_last_matrix_mb']:.0f} MiB")  # fmt: skip
            print(
                f"{label:22s} {data['matrices']:3d} matrices  analyze {data['wall_s']:7.1f}s "
                f"({data['wall_s'] / data['matrices']:.2f}s/matrix, process {data['process_wall_s']:.1f}s, "
                f"CPU {data['cpu_s_process']:.1f}s)  "
                f"peak RSS {data['peak_rss_mb']:7.0f} MiB (after import {data['rss_after_import_mb']:.0f})  "
                f"cache hits/misses {data['cache_hits']}/{data['cache_misses']}  intruders {data['total_intruders']}"
                + growth,
                flush=True,
            )
        print(
            "\n| run | matrices | checkpoint (MiB) | analyze wall (s) | s / matrix | peak RSS (MiB) | "
            "anon / file-backed RSS, first → last matrix (MiB) | cache hits / computed |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for row in rows:
            growth = ("" if row.get("anon_first_matrix_mb") is None else
                      f"{row['anon_first_matrix_mb']:.0f} → {row['anon_last_matrix_mb']:.0f} / "
                      f"{row['file_first_matrix_mb']:.0f} → {row['file_last_matrix_mb']:.0f}")  # fmt: skip
            print(
                f"| {row['run']} | {row['matrices']} | {row['checkpoint_mib']:.0f} | {row['wall_s']:.1f} | "
                f"{row['wall_s'] / row['matrices']:.2f} | {row['peak_rss_mb']:.0f} | {growth} | "
                f"{row['cache_hits']} / {row['cache_misses']} |"
            )
        warm2 = [row["peak_rss_mb"] for row in rows if row["layers"] == 2 and row["cache_misses"] == 0]
        warm_n = [row["peak_rss_mb"] for row in rows if row["layers"] == n]
        ratio = max(warm_n) / min(warm2)
        flat = ratio <= GOAL
        print(f"\nCHECK peak RSS {n} layers / 2 layers (warm) = {ratio:.3f} (peak RSS MiB: 2 layers {summary(warm2)}, "
              f"{n} layers {summary(warm_n)}{f'; worst of {args.repeats} runs each' if args.repeats > 1 else ''}) "
              f"while the checkpoint is {size_n / size2:.1f}× larger: "
              f"{'PASS (within 5 %: does not grow with layers)' if flat else 'FAIL (more than 5 %: grows with layers)'}")  # fmt: skip
        cold = [row for row in rows if row["cache_misses"]]
        if cold:
            warm_rows = [row for row in rows if row["layers"] == 2 and row["cache_misses"] == 0]
            print(f"cold/warm speed-up (2 layers): {cold[0]['wall_s'] / warm_rows[0]['wall_s']:.1f}×; "
                  f"cache on disk: {rows[-1]['cache_mib']:.0f} MiB")  # fmt: skip
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / ("bench_streaming.json" if n == 4 else f"bench_streaming_layers{n}.json")
        out.write_text(json.dumps({
            "benchmark": "bench_streaming", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": args.threads, "hidden": hidden, "mlp": mlp, "dtype": args.dtype, "lora_r": r, "lora_alpha": alpha,
            "layers": n, "repeats": args.repeats, "goal": GOAL,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            f"rss_ratio_{n}_vs_2_layers_warm": ratio, "check_pass": flat, "rows": rows,
        }, indent=2) + "\n")  # fmt: skip
        print(f"load average at end: {[round(x, 2) for x in os.getloadavg()]}")
        print(f"wrote {out}")
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Streaming: peak memory of `intrudim.analyze` does not grow with the number of layers (DESIGN.md, "Streaming").

Builds synthetic LLaMA-7B-shaped checkpoints in a temporary directory — hidden 4096, MLP 11008: per layer
q/k/v/o (4096×4096), gate/up (11008×4096), down (4096×11008), bf16 safetensors, one shard per layer with a
``model.safetensors.index.json``, LlamaConfig-style keys and a minimal ``config.json`` (model_type "llama") —
with 2 and 4 layers, and a PEFT LoRA adapter (r = 16, α = 32, all seven projections) for each. Each
configuration runs ``intrudim.analyze(base_dir, adapter_dir, cache_dir=...)`` in a fresh **subprocess**,
which reports its wall time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``).

Runs:
  1. 2 layers, cold cache (computes and stores 14 float64 base SVDs — the slow, one-time part);
  2. 2 layers, warm cache (every base SVD is a cache hit);
  3. 4 layers, warm cache: layers 2–3 of the 4-layer base hold the same weights as layers 0–1 (the cache
     is keyed by content, so they hit the entries of run 1); its adapter has its own factors for all 4 layers.
     Computing 14 more cold SVDs would only repeat run 1's per-matrix cost.
Peak RSS of run 3 vs run 2 shows that memory does not grow with layer count (weights are read one
matrix at a time with ``safe_open``; nothing is kept across matrices except the per-matrix results).

    python benchmarks/bench_streaming.py            # LLaMA-7B shapes (4096 / 11008): ~10 min on 2 cores
    python benchmarks/bench_streaming.py --quick    # hidden 2048 / MLP 5504: ~2 min

Writes the table to bench_out/bench_streaming.json. The temporary directory is removed unless --keep.
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

CHILD = r"""
import json, resource, sys, time
import torch
import intrudim
rss_import_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
result = intrudim.analyze(sys.argv[1], sys.argv[2], k=10, epsilon=0.5, cache_dir=sys.argv[3], progress=False)
wall = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "wall_s": wall,
    "cpu_s_process": usage.ru_utime + usage.ru_stime,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_after_import_mb": rss_import_kb / 1024,
    "matrices": len(result.matrices),
    "total_intruders": result.total_intruders,
    "cache_hits": result.cache_hits,
    "cache_misses": result.cache_misses,
    "torch_threads": torch.get_num_threads(),
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
    for layer in range(layers):
        g = torch.Generator().manual_seed(1000 + seed_of_layer(layer))
        tensors = {}
        for name, (out_dim, in_dim) in layer_shapes(hidden, mlp).items():
            # LlamaConfig initializer_range = 0.02
            tensors[f"model.layers.{layer}.{name}.weight"] = (
                0.02 * torch.randn(out_dim, in_dim, generator=g)
            ).to(dtype)
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


def run_child(base: Path, adapter: Path, cache: Path, threads: int | None) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if threads is not None:
        env.update(
            {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(base), str(adapter), str(cache)],
        capture_output=True,
        text=True,
        env=env,
    )
    outer = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["process_wall_s"] = outer  # includes interpreter start and imports
    return data


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


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
        "--workdir", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and cache")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads of the analyze subprocess (default: all)"
    )
    args = parser.parse_args()
    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    hidden, mlp = args.hidden or hidden, args.mlp or mlp
    dtype = getattr(torch, args.dtype)
    r, alpha = 16, 32
    work = Path(tempfile.mkdtemp(prefix="intrudim_bench_streaming_", dir=args.workdir))
    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"torch {torch.__version__}; shapes hidden={hidden} MLP={mlp} ({'--quick' if args.quick else 'LLaMA-7B'}), "
          f"{args.dtype}, LoRA r={r} α={alpha}; work dir {work}; load average at start: {load_start}")  # fmt: skip
    try:
        t0 = time.perf_counter()
        size2 = write_base(work / "base2", 2, hidden, mlp, dtype, seed_of_layer=lambda layer: layer)
        # layers 2-3 repeat the weights of layers 0-1 so that run 3 hits the cache filled by run 1
        size4 = write_base(work / "base4", 4, hidden, mlp, dtype, seed_of_layer=lambda layer: layer % 2)
        write_adapter(work / "adapter2", 2, hidden, mlp, r, alpha, seed=2)
        write_adapter(work / "adapter4", 4, hidden, mlp, r, alpha, seed=4)
        print(f"built checkpoints in {time.perf_counter() - t0:.1f}s: 2 layers {size2 / 2**20:.0f} MiB, "
              f"4 layers {size4 / 2**20:.0f} MiB\n", flush=True)  # fmt: skip
        cache = work / "cache"
        runs = [
            ("2 layers, cold cache", 2, "base2", "adapter2", size2),
            ("2 layers, warm cache", 2, "base2", "adapter2", size2),
            ("4 layers, warm cache", 4, "base4", "adapter4", size4),
        ]
        rows = []
        for label, layers, base, adapter, size in runs:
            data = run_child(work / base, work / adapter, cache, args.threads)
            row = {"run": label, "layers": layers, "checkpoint_mib": size / 2**20, **data,
                   "cache_mib": dir_size(cache) / 2**20}  # fmt: skip
            rows.append(row)
            print(
                f"{label:22s} {data['matrices']:2d} matrices  analyze {data['wall_s']:7.1f}s "
                f"({data['wall_s'] / data['matrices']:.2f}s/matrix, process {data['process_wall_s']:.1f}s, "
                f"CPU {data['cpu_s_process']:.1f}s)  "
                f"peak RSS {data['peak_rss_mb']:7.0f} MiB (after import {data['rss_after_import_mb']:.0f})  "
                f"cache hits/misses {data['cache_hits']}/{data['cache_misses']}  intruders {data['total_intruders']}",
                flush=True,
            )
        print(
            "\n| run | matrices | checkpoint (MiB) | analyze wall (s) | s / matrix | peak RSS (MiB) | cache hits / computed |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            print(
                f"| {row['run']} | {row['matrices']} | {row['checkpoint_mib']:.0f} | {row['wall_s']:.1f} | "
                f"{row['wall_s'] / row['matrices']:.2f} | {row['peak_rss_mb']:.0f} | {row['cache_hits']} / {row['cache_misses']} |"
            )
        warm2, warm4 = rows[1]["peak_rss_mb"], rows[2]["peak_rss_mb"]
        ratio = warm4 / warm2
        flat = ratio < 1.15
        print(f"\nCHECK peak RSS 4 layers / 2 layers (warm) = {ratio:.2f} while the checkpoint is "
              f"{rows[2]['checkpoint_mib'] / rows[1]['checkpoint_mib']:.1f}× larger: "
              f"{'PASS (does not grow with layers)' if flat else 'FAIL (grows with layers)'}")  # fmt: skip
        print(
            f"cold/warm speed-up (2 layers): {rows[0]['wall_s'] / rows[1]['wall_s']:.1f}×; "
            f"cache on disk: {rows[-1]['cache_mib']:.0f} MiB"
        )
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / "bench_streaming.json"
        out.write_text(json.dumps({
            "benchmark": "bench_streaming", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": args.threads, "hidden": hidden, "mlp": mlp, "dtype": args.dtype, "lora_r": r, "lora_alpha": alpha,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "rss_ratio_4_vs_2_layers_warm": ratio, "check_pass": flat, "rows": rows,
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

"""Half-precision base SVD cache (issue 28, part 2): float32 vs float16 vs bfloat16, warm, on LLaMA-7B shapes.

Builds, in a temporary directory, a synthetic LLaMA-shaped base of one layer (bf16 safetensors, ``config.json``
model_type "llama") with weight-like matrices (a Gaussian bulk plus 32 decaying spikes, ``bench_cold_cache``'s
``weight_like``), and a PEFT LoRA adapter (r = 16, α = 32): a few strong directions in B on q_proj and up_proj
(intruders), B ~ N(0, 0.01²) elsewhere. By default two projections, one of each kind of path: q_proj 4096² (square:
the left Gram matrix, as for the wide down_proj) and up_proj 11008×4096 (tall: the right one, Vh stored);
``--all`` takes all seven (filling their caches takes LAPACK's float64 SVD of the whole layer, ~5 minutes more).

* **filling**: LAPACK's float64 SVD of each base matrix is computed once (what --no-cache computes) and stored in a
  float64, a float16 and a bfloat16 cache (:meth:`BaseSVDCache.put`: the half ones round it and certify the
  rounding); the float32 cache is filled by a cold ``analyze`` (its Gram route). Each is timed.
* **warm**: ``analyze(BASE, ADAPTER, cache_dtype=…)`` in this process, median of ``--repeats`` runs per dtype, with
  the default ε-sweep; the float64 cache is the --no-cache reference (same factors, same path). Reported: seconds
  and the ratio against float32 (measured in the same run), cache bytes and their ratio, the matrices re-decided
  (each costs a float64 SVD of its base matrix, inside the warm time), and whether every count, rank and ε-sweep
  equals the reference (it must).

    python benchmarks/bench_cache_dtype.py            # q and up of a 7B-shaped layer (~5 minutes on 2 quiet cores)
    python benchmarks/bench_cache_dtype.py --quick    # q, up, down at hidden 2048, MLP 5504 (~2 minutes)
    python benchmarks/bench_cache_dtype.py --all      # the whole 7B-shaped layer (~12 minutes)

Writes bench_out/bench_cache_dtype.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import limit_threads, load_average
from bench_cold_cache import weight_like
from bench_streaming import layer_shapes
from safetensors.torch import load_file, save_file

from intrudim.analyze import analyze
from intrudim.spectral.svd import thin_svd
from intrudim.weights.svd_cache import BaseSVDCache

OUT_DIR = Path("bench_out")
R, ALPHA = 16, 32
PLANTED = ("q_proj", "up_proj")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def write_base(path: Path, hidden: int, mlp: int, names: list[str]) -> None:
    """One layer of weight-like bf16 matrices (only ``names``) and a LLaMA config."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for name, (m, n) in layer_shapes(hidden, mlp).items():
        if name in names:
            tensors[f"model.layers.0.{name}.weight"] = weight_like(m, n, g).to(torch.bfloat16).contiguous()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
        "intermediate_size": mlp, "num_hidden_layers": 1, "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128, "vocab_size": 32000, "torch_dtype": "bfloat16",
    }, indent=2))  # fmt: skip


def write_adapter(path: Path, hidden: int, mlp: int, names: list[str]) -> None:
    """PEFT LoRA r=16, α=32 on ``names``: A ~ N(0, 1/in); B with decaying strong columns on PLANTED, else N(0, 0.01²)."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for name, (m, n) in layer_shapes(hidden, mlp).items():
        if name not in names:
            continue
        prefix = f"base_model.model.model.layers.0.{name}"
        A = torch.randn(R, n, generator=g) / n**0.5
        if name.split(".")[-1] in PLANTED:
            c = 6.0 / (ALPHA / R) * 0.75 ** torch.arange(R, dtype=torch.float32)  # σ₁(W₀) ≈ 10: a few intruders
            B = torch.randn(m, R, generator=g) / m**0.5 * c
        else:
            B = 0.01 * torch.randn(m, R, generator=g)
        tensors[f"{prefix}.lora_A.weight"] = A.contiguous()
        tensors[f"{prefix}.lora_B.weight"] = B.contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": ALPHA, "target_modules": [n.split(".")[-1] for n in names],
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic-llama",
    }, indent=2))  # fmt: skip


def decisions(result) -> list:
    return [(m.name, m.intruder_ranks, m.epsilon_sweep) for m in result.matrices]


def cache_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hidden 2048, MLP 5504 instead of 4096, 11008")
    parser.add_argument("--all", action="store_true", help="all seven projections of the layer (default: q and up)")
    parser.add_argument("--repeats", type=int, default=3, help="warm runs per dtype (median)")
    parser.add_argument("--threads", type=int, default=None, help="pin torch/BLAS threads (default: all cores)")
    args = parser.parse_args()
    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    names = ["self_attn.q_proj", "mlp.up_proj"] + (["mlp.down_proj"] if args.quick else [])
    if args.all:
        names = list(layer_shapes(hidden, mlp))
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_cache_dtype_") as tmp, limit_threads(args.threads):
        root = Path(tmp)
        base, adapter = root / "base", root / "adapter"
        write_base(base, hidden, mlp, names)
        write_adapter(adapter, hidden, mlp, names)
        caches = {dtype: root / dtype for dtype in ("float64", "float32", "float16", "bfloat16")}
        fill: dict[str, float] = {"float64_svd": 0.0, "float64": 0.0, "float16": 0.0, "bfloat16": 0.0}
        weights = load_file(str(base / "model.safetensors"))
        for key, W0 in weights.items():
            started = time.perf_counter()
            exact = thin_svd(W0)
            fill["float64_svd"] += time.perf_counter() - started
            for dtype in ("float64", "float16", "bfloat16"):
                started = time.perf_counter()
                BaseSVDCache(caches[dtype], dtype=getattr(torch, dtype)).put(W0, exact)
                fill[dtype] += time.perf_counter() - started
            print(f"filled {key} {tuple(W0.shape)}: float64 SVD and three caches", flush=True)
        del weights
        started = time.perf_counter()
        cold = analyze(base, adapter, cache_dir=caches["float32"], progress=False)
        fill["float32_cold_analyze"] = time.perf_counter() - started
        assert cold.cache_misses == len(names)

        rows, reference = {}, None
        for dtype in ("float64", "float32", "float16", "bfloat16"):
            seconds, result = [], None
            for _ in range(args.repeats):
                started = time.perf_counter()
                result = analyze(base, adapter, cache_dir=caches[dtype], cache_dtype=dtype, progress=False)
                seconds.append(time.perf_counter() - started)
                if seconds[-1] > 60:
                    break  # a re-decided 7B matrix costs a float64 SVD each run: once is enough to see it
            assert result is not None and result.cache_hits == len(names)
            if reference is None:
                reference = result
            rows[dtype] = {
                "warm_seconds": statistics.median(seconds), "runs": len(seconds), "bytes": cache_bytes(caches[dtype]),
                "redecided": result.matrices_redecided, "matrices": len(result.matrices),
                "redecided_names": [m.name for m in result.matrices if m.redecided],
                "intruders": result.total_intruders, "equal_to_no_cache": decisions(result) == decisions(reference),
            }  # fmt: skip
            print(f"warm {dtype}: {rows[dtype]}", flush=True)
    f32 = rows["float32"]
    print(f"\nLLaMA-7B-shaped layer ({hidden}/{mlp}), {len(names)} matrices ({', '.join(names)}), LoRA r={R}, "
          f"threads {args.threads or torch.get_num_threads()}, load {load_before} -> {load_average()}")  # fmt: skip
    print(f"{'cache':9} {'warm s':>8} {'× f32':>6} {'MB':>8} {'× f32':>6} {'re-decided':>11} {'= no-cache':>10}")
    for dtype, row in rows.items():
        print(f"{dtype:9} {row['warm_seconds']:8.3f} {row['warm_seconds'] / f32['warm_seconds']:6.2f} "
              f"{row['bytes'] / 2**20:8.1f} {row['bytes'] / f32['bytes']:6.3f} "
              f"{row['redecided']:>5}/{row['matrices']:<5} {str(row['equal_to_no_cache']):>10}")  # fmt: skip
    print("fill seconds:", {k: round(v, 1) for k, v in fill.items()})
    assert all(row["equal_to_no_cache"] for row in rows.values()), "a count differs from --no-cache"
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "bench_cache_dtype.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hidden": hidden, "mlp": mlp,
        "matrices": names, "rank": R, "threads": args.threads or torch.get_num_threads(),
        "load_average_before": load_before, "load_average_after": load_average(), "fill_seconds": fill, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

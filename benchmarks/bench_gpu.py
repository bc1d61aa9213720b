"""`analyze --device cuda` vs the CPU on LLaMA-7B-shaped layers: cold (base SVD cache filled) and warm, per layer.

Builds, in a temporary directory, the synthetic LLaMA-shaped base and PEFT LoRA adapter of
benchmarks/bench_end_to_end.py (hidden 4096, MLP 11008, r = 16 on all seven projections, bf16 base), then times
``intrudim.analyze`` in this process:

* **cpu cold / warm**: ``device="cpu"`` with an empty cache, then again with the filled cache (all cores);
* **cuda cold / warm**: ``device="cuda"``: base SVDs (the Gram route: cuSOLVER's float64 eigh) and the structured
  top-k (block Krylov in float64) on the GPU, in a cache of its own;
* **dense reference on the GPU**: per matrix, a float32 ``torch.linalg.svd`` of W_t = W₀ + s·BA on the GPU (what
  a dense detector does there), checkpoint reading excluded.

Every route's intruder ranks must equal the CPU's, and σ and |cos| must agree to 1e-5 (the cache stores float32
factors). Run where a GPU is lent (the device tool); prints "no CUDA GPU" and exits otherwise.

    python benchmarks/bench_gpu.py --layers 2

Writes bench_out/bench_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from bench_end_to_end import ALPHA, R, write_adapter
from bench_streaming import layer_shapes, write_base
from safetensors import safe_open

OUT_DIR = Path("bench_out")
K, EPSILON = 10, 0.5


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_analyze(base: Path, adapter: Path, cache: Path, device: str):
    from intrudim import analyze

    sync(device)
    t0 = time.perf_counter()
    result = analyze(base, adapter, cache_dir=cache, device=device, k=K, epsilon=EPSILON)
    sync(device)
    return time.perf_counter() - t0, result


def dense_on_gpu(base: Path, adapter: Path, layers: int, hidden: int, mlp: int, device: str = "cuda"
                 ) -> tuple[float, dict[str, int]]:  # fmt: skip
    """Float32 dense SVD of every W_t on the GPU, and the intruder count against the float32 SVD of W₀ there."""
    counts, seconds = {}, 0.0
    scale = ALPHA / R
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as lora:
        for layer in range(layers):
            shard = base / f"model-{layer + 1:05d}-of-{layers:05d}.safetensors"
            with safe_open(str(shard), "pt") as weights:
                for name in layer_shapes(hidden, mlp):
                    key = f"model.layers.{layer}.{name}"
                    W0 = weights.get_tensor(f"{key}.weight").float().to(device)
                    B = lora.get_tensor(f"base_model.model.{key}.lora_B.weight").to(device)
                    A = lora.get_tensor(f"base_model.model.{key}.lora_A.weight").to(device)
                    sync(device)
                    t0 = time.perf_counter()
                    U0 = torch.linalg.svd(W0, full_matrices=False)[0]
                    Ut = torch.linalg.svd(W0 + scale * (B @ A), full_matrices=False)[0][:, :K]
                    cos = (U0.T @ Ut).abs().amax(0)
                    counts[key] = int((cos < EPSILON).sum())
                    sync(device)
                    seconds += time.perf_counter() - t0
    return seconds, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=2, help="layers of the synthetic base (7 matrices each)")
    parser.add_argument("--quick", action="store_true", help="hidden 2048 / MLP 5504 instead of 4096 / 11008")
    parser.add_argument("--skip-cpu", action="store_true", help="GPU rows only")
    parser.add_argument("--device", default="cuda", help="the GPU (cuda[:N]); 'cpu' only smoke-tests this script")
    args = parser.parse_args()
    gpu_device = args.device
    if gpu_device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: bench_gpu.py needs one (--device cuda)")
    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    gpu = torch.cuda.get_device_name(torch.device(gpu_device)) if gpu_device.startswith("cuda") else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.machine()}, GPU: {gpu}")
    rows: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_base(work / "base", args.layers, hidden, mlp, torch.bfloat16, lambda layer: layer)
        write_adapter(work / "adapter", args.layers, hidden, mlp, seed=1)
        base, adapter = work / "base", work / "adapter"
        torch.zeros(1, device=gpu_device)  # CUDA context outside the timers
        results = {}
        for device in (gpu_device,) + (() if args.skip_cpu or gpu_device == "cpu" else ("cpu",)):
            cache = work / f"cache-{device.replace(':', '')}"
            for phase in ("cold", "warm"):
                seconds, result = timed_analyze(base, adapter, cache, device)
                key = f"{'cuda' if device.startswith('cuda') else 'cpu'} {phase}"
                rows[key] = seconds
                results[key] = result
                print(f"{device:4s} {phase}: {seconds:8.2f} s  ({seconds / args.layers:.2f} s per layer), "
                      f"{result.total_intruders} intruders", flush=True)  # fmt: skip
        dense_seconds, dense_counts = dense_on_gpu(base, adapter, args.layers, hidden, mlp, gpu_device)
        rows["dense float32 SVD"] = dense_seconds
        print(f"dense float32 SVDs on {gpu_device}: {dense_seconds:.2f} s ({dense_seconds / args.layers:.2f} s per layer)")
    first = "cuda" if gpu_device.startswith("cuda") else "cpu"
    reference = results["cpu cold"] if "cpu cold" in results else results[f"{first} cold"]
    ok = True
    for name, result in results.items():
        for a, b in zip(reference.matrices, result.matrices, strict=True):
            same = (a.intruder_ranks == b.intruder_ranks
                    and max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a.singular_values, b.singular_values, strict=True)) < 1e-5
                    and max(abs(x - y) for x, y in zip(a.max_abs_cos, b.max_abs_cos, strict=True)) < 1e-5)  # fmt: skip
            if not same:
                ok = False
                print(f"MISMATCH {name} {a.name}: {a.intruder_ranks} vs {b.intruder_ranks}")
    dense_total = sum(dense_counts.values())
    print(f"dense GPU reference: {dense_total} intruders (float32; intrudim {reference.total_intruders})")
    print(f"CHECK every route equals {'the CPU' if 'cpu cold' in results else first + ' cold'}: {'PASS' if ok else 'FAIL'}")
    warm = rows[f"{first} warm"]
    print(f"{first} warm vs dense reference on {gpu_device}: {dense_seconds / warm:.1f}×")
    if "cpu cold" in rows and "cuda cold" in rows:
        print(f"cold cache: cpu {rows['cpu cold']:.1f} s vs cuda {rows['cuda cold']:.1f} s: "
              f"{rows['cpu cold'] / rows['cuda cold']:.1f}×")  # fmt: skip
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "bench_gpu.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "gpu": gpu, "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(), "layers": args.layers, "hidden": hidden, "mlp": mlp,
        "seconds": rows, "check_pass": ok, "dense_gpu_intruders": dense_total,
        "intrudim_intruders": reference.total_intruders,
    }, indent=2) + "\n")  # fmt: skip
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

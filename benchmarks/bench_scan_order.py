"""`intrudim scan`: matrix-major against adapter-major order, and both against the floor, on a LLaMA-7B-shaped base.

Model: LLaMA-7B shapes (hidden 4096, MLP 11008; random weights saved in bfloat16 as 7B checkpoints are) with
``--layers`` layers, and ``--adapters`` LoRA adapters r = 16, α = 32 on all seven projections (written in PEFT's
format: one real PEFT adapter gives the config and the tensor names, every adapter its own A and B). The base SVD
cache is warmed first (the cold base SVDs are a one-time cost per base, timed apart). Then, in one run:

- **adapter-major** (``--order adapter``, the scan before matrix-major): input after input, each reading every
  cached base factor again. Its cost per adapter does not depend on how many adapters there are, so it is timed
  on the first ``--adapter-major`` adapters and its rate (adapters/hour) compared;
- **matrix-major** (``--order matrix``, the default from two inputs on): base matrix after base matrix, every
  adapter's factors analysed against the factors read once; timed on all adapters, as it runs by default and with
  the opt-in top-k helper process (``INTRUDIM_TOPK_HELPERS=1``, :mod:`intrudim.analysis.top_k_pool`: every other
  core's ARPACK top-k on the second CPU core), the two checked equal value for value;
- **the floor**: reading every cached factor once (``safetensors.torch.load_file`` of each entry) plus the
  products every adapter needs, U₀ᵀB and V₀ᵀAᵀ (or their Gram-route equivalents), at the GFLOP/s this machine
  measures for a GEMM of those shapes in the same run.

The script checks that both orders write the same analyses, value for value, for the adapters both scanned, and
prints peak RSS. ``--quick``: hidden 1024, MLP 2816, 2 layers, 16 adapters (4 adapter-major).

    python benchmarks/bench_scan_order.py --quick
    python benchmarks/bench_scan_order.py --layers 4 --adapters 200 --adapter-major 20   # ~1 h on 2 cores, 10 GB disk

``--workdir DIR`` keeps the base, the adapters and the warm cache in DIR (reused by the next run with the same
shapes), so that ``--prepare`` can build and warm them while the machine is busy and a later run times the scans
alone on a quiet machine. Both orders run with ``figures="none"`` (what a scan of more than 16 inputs does by
default), so that the comparison is of the analyses, not of drawing.

Writes the table to bench_out/bench_scan_order.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare_analyses, load_average  # noqa: E402

OUT_DIR = Path("bench_out")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_inputs(work: Path, hidden: int, mlp: int, layers: int, r: int, adapters: int) -> tuple[Path, list[str]]:
    """The base (bfloat16 safetensors) and ``adapters`` PEFT adapters with their own trained-looking factors."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128, vocab_size=512, max_position_embeddings=256, torch_dtype="bfloat16",
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.to(torch.bfloat16).save_pretrained(work / "base")
    model.to(torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0))
    template = work / "adapter_template"
    peft_model.save_pretrained(template)
    del peft_model, model
    names = {name: tensor.shape for name, tensor in load_file(str(template / "adapter_model.safetensors")).items()}
    paths = []
    for i in range(adapters):
        g = torch.Generator().manual_seed(100 + i)
        tensors = {}
        for name, shape in names.items():
            if "lora_A" in name:
                tensors[name] = torch.randn(shape, generator=g) / shape[1] ** 0.5
            else:  # B: a trained-looking scale per module, 0.003 … 0.06
                std = float(10 ** torch.empty(1).uniform_(-2.5, -1.2, generator=g))
                tensors[name] = std * torch.randn(shape, generator=g)
        folder = work / "adapters" / f"adapter_{i:04d}"
        folder.mkdir(parents=True)
        shutil.copy(template / "adapter_config.json", folder / "adapter_config.json")
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        paths.append(str(folder))
    return work / "base", paths


def measured_gflops(rows: int, cols: int, width: int) -> float:
    """GFLOP/s of this machine for (cols × rows)ᵀ-by-(rows × width) float32 products, the shape of U₀ᵀ·[B₁ … B_k]
    (``width`` = r·k: one adapter's B when k = 1, a batch of adapters stacked otherwise)."""
    U, B = torch.randn(rows, cols), torch.randn(rows, width)
    U.T @ B
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        U.T @ B
        best = min(best, time.perf_counter() - t)
    return 2 * rows * cols * width / best / 1e9


def floor_seconds(cache: Path, adapters: list[str], r: int) -> dict[str, float]:
    """Reading every cached factor once, plus the per-adapter products at the measured GFLOP/s."""
    from safetensors.torch import load_file

    entries = [p for p in cache.rglob("*.safetensors")]
    flops = 0.0
    shapes = []
    for entry in entries:
        factors = load_file(str(entry))
        m, n = factors["U"].shape  # U: m × min(m, n)
        shapes.append((m, n))
        # U₀ᵀB (m·n·r) and the right side V₀ᵀAᵀ or its Gram-route counterpart (same order), per adapter
        flops += 2 * 2 * m * n * r * len(adapters)
        del factors
    # Reading every factor once, from disk: a 7B base's factors do not fit in memory (and load_file only maps them).
    cold_rate = cold_read_rate(cache)
    factor_bytes = sum(p.stat().st_size for p in entries)
    read = factor_bytes / cold_rate
    m, n = max(shapes)
    # The best rate this machine reaches on those products: one adapter's width r, or a batch of adapters stacked
    # (width r·k, as a matrix-major scan could multiply them): the floor takes the faster.
    per_width = {width: measured_gflops(m, n, width) for width in (r, r * min(len(adapters), 16))}
    gflops = max(per_width.values())
    return {"read_s": read, "gemm_s": flops / (gflops * 1e9), "gflops": gflops,
            "gflops_by_width": {str(k): round(v, 1) for k, v in per_width.items()}, "entries": len(entries),
            "cold_read_bytes_per_s": cold_rate,
            "factor_bytes": factor_bytes}  # fmt: skip


def evict(cache: Path) -> None:
    """Drop the cache's files from the page cache (the next read comes from disk)."""
    for entry in cache.rglob("*.safetensors"):
        fd = os.open(entry, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cold_read_rate(cache: Path) -> float:
    """Bytes per second this disk reads the cache's files at, evicted from the page cache first."""
    evict(cache)
    total = 0
    t = time.perf_counter()
    for entry in cache.rglob("*.safetensors"):
        with open(entry, "rb") as handle:
            while chunk := handle.read(1 << 24):
                total += len(chunk)
    return total / (time.perf_counter() - t)


def analyses(out: Path, names: list[str]) -> dict[str, list[dict]]:
    return {name: [{k: v for k, v in m.items() if k != "similarity"}
                   for m in json.loads((out / "runs" / name / "analysis.json").read_text())["matrices"]]
            for name in names}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="hidden 1024, MLP 2816, 2 layers, 16 adapters (4)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--adapters", type=int, default=200)
    parser.add_argument("--adapter-major", type=int, default=20, help="adapters timed in adapter-major order")
    parser.add_argument("--evicted", type=int, default=3,
                        help="adapters timed in adapter-major order with the cache evicted from memory before each")
    parser.add_argument("--workdir", default=None,
                        help="build (or reuse) the models and the warm cache here and keep them (default: a temp dir, "
                             "removed at the end)")
    parser.add_argument("--prepare", action="store_true", help="only build the inputs and warm the cache (--workdir)")
    args = parser.parse_args()
    hidden, mlp, layers, n, n_adapter = 4096, 11008, args.layers, args.adapters, args.adapter_major
    n_evicted = args.evicted
    if args.quick:
        hidden, mlp, layers, n, n_adapter, n_evicted = 1024, 2816, 2, 16, 4, 2
    r = 16
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    from intrudim.scan import ScanConfig, scan

    load_start = load_average()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; LLaMA hidden={hidden} MLP={mlp} "
          f"layers={layers}, {n} LoRA adapters r={r} on {len(TARGETS)} projections; load average: {load_start}",
          flush=True)  # fmt: skip
    if args.prepare and args.workdir is None:
        parser.error("--prepare needs --workdir (the folder the timed run reuses)")
    shapes = {"hidden": hidden, "mlp": mlp, "layers": layers, "r": r, "adapters": n}
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="intrudim_bench_order_"))
    built = work / "built.json"
    try:
        if keep and built.exists() and json.loads(built.read_text())["shapes"] == shapes:
            recorded = json.loads(built.read_text())
            base, adapters, cold = work / "base", recorded["adapters"], recorded["cold_s"]
            print(f"reusing the base, {n} adapters and the warm cache in {work} (cold SVDs took {cold:.1f} s)")
        else:
            if keep and work.exists() and any(work.iterdir()):
                raise SystemExit(f"{work} holds something else than this benchmark's inputs for {shapes}: "
                                 "give an empty or new --workdir")  # fmt: skip
            work.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            base, adapters = build_inputs(work, hidden, mlp, layers, r, n)
            print(f"built base and {n} adapters in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            scan(base, adapters[:1], work / "cold", cache_dir=work / "svd_cache")
            cold = time.perf_counter() - t
            print(f"cold base SVDs + first adapter (once per base): {cold:.1f} s", flush=True)
            built.write_text(json.dumps({"shapes": shapes, "adapters": adapters, "cold_s": cold}))
        if args.prepare:
            return
        cache = work / "svd_cache"
        for earlier in ("adapter", "matrix", "matrix-helper", "evicted"):  # an earlier timed run's outputs
            shutil.rmtree(work / earlier, ignore_errors=True)

        def timed_scan(order: str, inputs: list[str], helper: bool = False) -> tuple[float, Path]:
            out = work / (f"{order}-helper" if helper else order)
            os.environ["INTRUDIM_TOPK_HELPERS"] = "1" if helper else "0"
            t = time.perf_counter()
            result = scan(base, inputs, out, ScanConfig(order=order, figures="none"), cache_dir=cache)
            seconds = time.perf_counter() - t
            assert all(row["error"] is None for row in result.rows), result.rows
            assert result.document["order"] == order
            rate = 3600 * len(inputs) / seconds
            print(f"{order}-major{' with the top-k helper' if helper else ''}: {len(inputs)} adapters in "
                  f"{seconds:.1f} s = {rate:,.0f} adapters/hour", flush=True)  # fmt: skip
            return seconds, out

        adapter_s, adapter_out = timed_scan("adapter", adapters[:n_adapter])
        matrix_s, matrix_out = timed_scan("matrix", adapters)
        helper_s, helper_out = timed_scan("matrix", adapters, helper=True)
        names = [Path(a).name for a in adapters[:n_adapter]]
        agreement = compare_analyses(analyses(adapter_out, names), analyses(matrix_out, names))
        every = [Path(a).name for a in adapters]
        helper_agreement = compare_analyses(analyses(matrix_out, every), analyses(helper_out, every))
        # A cache larger than memory (32 layers of a 7B base: ~26 GB of float32 factors on a 24 GB machine): an
        # adapter-major scan then reads every factor from disk for every adapter. Timed by evicting the cache files
        # from the page cache before each adapter.
        evicted_s = 0.0
        for i, adapter in enumerate(adapters[:n_evicted]):
            evict(cache)
            t = time.perf_counter()
            scan(base, [adapter], work / "evicted" / str(i), ScanConfig(order="adapter", figures="none"),
                 cache_dir=cache)  # fmt: skip
            evicted_s += time.perf_counter() - t
        if n_evicted:
            print(f"adapter-major, the cache evicted before each adapter: {n_evicted} adapters in {evicted_s:.1f} s = "
                  f"{3600 * n_evicted / evicted_s:,.0f} adapters/hour", flush=True)  # fmt: skip
        floor = floor_seconds(cache, adapters, r)
        floor_s = floor["read_s"] + floor["gemm_s"]
        rates = {"adapter": 3600 * n_adapter / adapter_s, "matrix": 3600 * n / matrix_s, "floor": 3600 * n / floor_s,
                 "matrix_helper": 3600 * n / helper_s}
        if n_evicted:
            rates["adapter_evicted"] = 3600 * n_evicted / evicted_s
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print("\n| order | adapters | seconds | adapters/hour | vs adapter-major |")
        print("|---|---|---|---|---|")
        print(f"| adapter-major | {n_adapter} | {adapter_s:.1f} | {rates['adapter']:,.0f} | 1.0× |")
        if n_evicted:
            print(f"| adapter-major, cache evicted before each adapter | {n_evicted} | {evicted_s:.1f} | "
                  f"{rates['adapter_evicted']:,.0f} | {rates['adapter_evicted'] / rates['adapter']:.2f}× |")  # fmt: skip
        print(f"| matrix-major | {n} | {matrix_s:.1f} | {rates['matrix']:,.0f} | "
              f"{rates['matrix'] / rates['adapter']:.1f}× |")  # fmt: skip
        print(f"| matrix-major, top-k helper (INTRUDIM_TOPK_HELPERS=1) | {n} | {helper_s:.1f} | "
              f"{rates['matrix_helper']:,.0f} | {rates['matrix_helper'] / rates['adapter']:.1f}× |")  # fmt: skip
        print(f"| floor (read {floor['factor_bytes'] / 2**30:.1f} GiB of factors once from disk: {floor['read_s']:.1f} s; "
              f"GEMMs at {floor['gflops']:.0f} GFLOP/s: {floor['gemm_s']:.1f} s) | {n} | {floor_s:.1f} | "
              f"{rates['floor']:,.0f} | {rates['floor'] / rates['adapter']:.1f}× |")  # fmt: skip
        print(f"matrix-major / floor: {matrix_s / floor_s:.2f}× the floor's time; peak RSS {peak_gib:.2f} GiB; "
              f"the two orders agree: {agreement}")  # fmt: skip
        print(f"the top-k helper: {matrix_s / helper_s:.2f}× the default's speed; with and without agree: "
              f"{helper_agreement}")  # fmt: skip
        # Extrapolated to a 32-layer 7B base and 1,000 adapters: compute scales with layers × adapters; reading,
        # with the factors' bytes (32/layers of these) at this disk's cold rate: once for matrix-major (every
        # adapter in one batch), once per adapter for adapter-major when the cache does not fit in memory.
        per_layer = {"matrix": matrix_s / n / layers, "adapter": adapter_s / n_adapter / layers}
        cache_32 = floor["factor_bytes"] * 32 / layers
        read_32 = cache_32 / floor["cold_read_bytes_per_s"]
        hours = {
            "matrix": (per_layer["matrix"] * 32 * 1000 + read_32) / 3600,
            "adapter": (per_layer["adapter"] * 32 + read_32) * 1000 / 3600,
        }
        print(f"extrapolated to 32 layers ({cache_32 / 2**30:.0f} GiB of factors, {read_32:.0f} s to read cold at "
              f"{floor['cold_read_bytes_per_s'] / 2**30:.2f} GiB/s) and 1,000 adapters: matrix-major "
              f"{hours['matrix']:.1f} h ({per_layer['matrix']:.3f} s per adapter-layer), adapter-major "
              f"{hours['adapter']:.1f} h ({per_layer['adapter']:.3f} s per adapter-layer + the cache read per adapter)")
        load_end = load_average()
        print(f"load average at end: {load_end} (well above the core count means the cores were shared)")
        OUT_DIR.mkdir(exist_ok=True)
        (OUT_DIR / "bench_scan_order.json").write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hidden": hidden, "mlp": mlp,
            "layers": layers, "r": r, "adapters": n, "adapter_major_adapters": n_adapter, "cold_s": round(cold, 1),
            "adapter_major_s": round(adapter_s, 2), "matrix_major_s": round(matrix_s, 2),
            "matrix_major_helper_s": round(helper_s, 2), "helper_agreement": helper_agreement,
            "adapter_major_evicted_s": round(evicted_s, 2), "adapter_major_evicted_adapters": n_evicted,
            "floor": floor, "rates_per_hour": rates, "peak_rss_gib": round(peak_gib, 2), "agreement": agreement,
            "extrapolated_hours_32_layers_1000_adapters": hours, "seconds_per_adapter_layer": per_layer,
            "load_start": load_start, "load_end": load_end,
        }, indent=2) + "\n")  # fmt: skip
        if not agreement.startswith("same") or not helper_agreement.startswith("same"):
            raise SystemExit("the two orders, or the scans with and without the top-k helper, disagree: see above")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

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
  every top-k by plain Lanczos (the route before :mod:`intrudim.spectral.shift_invert`, which the default takes
  where a base's top singular values are packed together), the two checked to agree; with ``--helper`` also with
  the opt-in top-k helper process (``INTRUDIM_TOPK_HELPERS=1``, :mod:`intrudim.analysis.top_k_pool`: every other
  core's ARPACK top-k on the second CPU core), checked equal value for value;
- **the floor**: reading every cached factor once (``safetensors.torch.load_file`` of each entry) plus the
  products every adapter needs, U₀ᵀB and V₀ᵀAᵀ (or their Gram-route equivalents), at the GFLOP/s this machine
  measures for a GEMM of those shapes in the same run.

The script checks that both orders write the same analyses, value for value, for the adapters both scanned, and
prints peak RSS. ``--quick``: hidden 1024, MLP 2816, 2 layers, 16 adapters (4 adapter-major).

    python benchmarks/bench_scan_order.py --quick
    python benchmarks/bench_scan_order.py --layers 4 --adapters 200 --adapter-major 20   # ~1 h on 2 cores, 10 GB disk
    python benchmarks/bench_scan_order.py --spectrum trained ...   # the base's spectrum shaped as a trained model's

``--spectrum``: the random init's singular values are packed close together at the top (Marchenko–Pastur), the
hard case for the Lanczos top-k of every adapter; a trained matrix's top singular values stand apart. ``trained``
gives every projection a spectrum shaped as SmolLM2-135M's (:data:`TRAINED_PROFILE`), with random singular vectors.

``--workdir DIR`` keeps the base, the adapters and the warm cache in DIR (reused by the next run with the same
shapes), so that ``--prepare`` can build and warm them while the machine is busy and a later run times the scans
alone on a quiet machine. Both orders run with ``figures="none"`` (what a scan of more than 16 inputs does by
default), so that the comparison is of the analyses, not of drawing.

Writes the table to bench_out/bench_scan_order.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare_analyses, load_average  # noqa: E402

OUT_DIR = Path("bench_out")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# The trained-like spectrum (``--spectrum trained``), per projection: σ_i/σ_1 = i^(-a) up to i = 10, then
# σ_10/σ_1 · (i/10)^(-b), with a and b such that σ_10/σ_1 and the median σ/σ_1 are the medians over the 30 layers of
# SmolLM2-135M (a LLaMA-architecture model, embedded; measured 2026-12-03 with torch.linalg.svdvals in float64):
TRAINED_PROFILE = {  # projection: (σ_10/σ_1, median σ/σ_1)
    "q_proj": (0.691, 0.130), "k_proj": (0.621, 0.289), "v_proj": (0.889, 0.547), "o_proj": (0.748, 0.186),
    "gate_proj": (0.620, 0.271), "up_proj": (0.832, 0.435), "down_proj": (0.566, 0.271),
}
SPECTRA = ("random", "trained")


def trained_spectrum(projection: str, p: int) -> torch.Tensor:
    """σ_1 … σ_p / σ_1 of a trained-like matrix of that projection (see TRAINED_PROFILE)."""
    top, median = TRAINED_PROFILE[projection]
    a = -math.log(top) / math.log(10)
    b = math.log(top / median) / math.log(p / 2 / 10)  # the median σ sits at i = p/2
    i = torch.arange(1, p + 1, dtype=torch.float64)
    return torch.where(i <= 10, i ** (-a), top * (i / 10) ** (-b))


def with_trained_spectrum(W: torch.Tensor, projection: str, generator: torch.Generator) -> torch.Tensor:
    """A matrix of W's shape and Frobenius norm with random singular vectors and the trained-like spectrum."""
    out_dim, in_dim = W.shape
    p = min(out_dim, in_dim)
    U, _ = torch.linalg.qr(torch.randn(out_dim, p, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(in_dim, p, generator=generator))
    sigma = trained_spectrum(projection, p)
    sigma = (sigma * W.double().norm() / sigma.norm()).float()
    return (U * sigma) @ V.T


def build_inputs(
    work: Path, hidden: int, mlp: int, layers: int, r: int, adapters: int, spectrum: str = "random"
) -> tuple[Path, list[str]]:
    """The base (bfloat16 safetensors) and ``adapters`` PEFT adapters with their own trained-looking factors.
    ``spectrum``: "random" (the random init's Marchenko–Pastur spectrum: its top singular values packed close
    together, the hard case for Lanczos) or "trained" (every projection's singular values shaped as a trained
    model's, :func:`trained_spectrum`)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 128, vocab_size=512, max_position_embeddings=256, torch_dtype="bfloat16",
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    if spectrum == "trained":
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, module in model.named_modules():
                projection = name.rsplit(".", 1)[-1]
                if projection in TRAINED_PROFILE:
                    module.weight.copy_(with_trained_spectrum(module.weight, projection, generator))
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


@contextlib.contextmanager
def plain_lanczos(on: bool) -> Iterator[None]:
    """Every structured top-k by plain Lanczos while the block runs (``on``): the shift-and-invert route
    (:mod:`intrudim.spectral.shift_invert`) declines every core, as before it existed."""
    import intrudim.spectral.structured as structured

    originals = {name: getattr(structured, name) for name in ("diagonal_lowrank_top_k", "lora_core_top_k")}
    for name in originals if on else ():
        setattr(structured, name, lambda *args, **kwargs: None)
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(structured, name, function)


@contextlib.contextmanager
def timed_parts(timers: dict[str, str], totals: dict[str, float]) -> Iterator[None]:
    """Add the seconds spent in each of ``intrudim.analysis.jobs``' functions named in ``timers`` (label: name) to
    ``totals[label]`` while the block runs (the matrix-major scan calls them in this process)."""
    from intrudim.analysis import jobs

    originals = {name: getattr(jobs, name) for name in timers.values()}

    def timed(label: str, function):
        def call(*args, **kwargs):
            t = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - t

        return call

    for label, name in timers.items():
        setattr(jobs, name, timed(label, originals[name]))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(jobs, name, function)


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
    parser.add_argument("--helper", action="store_true", help="also time matrix-major with the top-k helper process")
    parser.add_argument("--spectrum", choices=SPECTRA, default="random",
                        help="the base's singular values: the random init's (packed at the top, the hard case for "
                             "Lanczos) or shaped as SmolLM2-135M's trained matrices (see TRAINED_PROFILE)")
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
          f"layers={layers}, {args.spectrum} spectrum, {n} LoRA adapters r={r} on {len(TARGETS)} projections; "
          f"load average: {load_start}",
          flush=True)  # fmt: skip
    if args.prepare and args.workdir is None:
        parser.error("--prepare needs --workdir (the folder the timed run reuses)")
    shapes = {"hidden": hidden, "mlp": mlp, "layers": layers, "r": r, "adapters": n}
    if args.spectrum != "random":  # a random-spectrum workdir of earlier runs stays reusable
        shapes["spectrum"] = args.spectrum
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
            base, adapters = build_inputs(work, hidden, mlp, layers, r, n, args.spectrum)
            print(f"built base and {n} adapters in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            scan(base, adapters[:1], work / "cold", cache_dir=work / "svd_cache")
            cold = time.perf_counter() - t
            print(f"cold base SVDs + first adapter (once per base): {cold:.1f} s", flush=True)
            built.write_text(json.dumps({"shapes": shapes, "adapters": adapters, "cold_s": cold}))
        if args.prepare:
            return
        cache = work / "svd_cache"
        for earlier in ("adapter", "matrix", "matrix-helper", "matrix-plain", "evicted"):  # an earlier run's outputs
            shutil.rmtree(work / earlier, ignore_errors=True)

        parts: dict[str, float] = {}

        plain_parts: dict[str, float] = {}

        def timed_scan(order: str, inputs: list[str], variant: str = "") -> tuple[float, Path]:
            out = work / (f"{order}-{variant}" if variant else order)
            os.environ["INTRUDIM_TOPK_HELPERS"] = "1" if variant == "helper" else "0"
            timers = {"products": "lora_cores", "top-k": "stack_top_k"} if order == "matrix" and variant != "helper" else {}
            with timed_parts(timers, plain_parts if variant == "plain" else parts), plain_lanczos(variant == "plain"):
                t = time.perf_counter()
                result = scan(base, inputs, out, ScanConfig(order=order, figures="none"), cache_dir=cache)
                seconds = time.perf_counter() - t
            assert all(row["error"] is None for row in result.rows), result.rows
            assert result.document["order"] == order
            rate = 3600 * len(inputs) / seconds
            label = {"": "", "helper": " with the top-k helper", "plain": ", every top-k by plain Lanczos"}[variant]
            print(f"{order}-major{label}: {len(inputs)} adapters in {seconds:.1f} s = {rate:,.0f} adapters/hour",
                  flush=True)  # fmt: skip
            return seconds, out

        adapter_s, adapter_out = timed_scan("adapter", adapters[:n_adapter])
        matrix_s, matrix_out = timed_scan("matrix", adapters)
        plain_s, plain_out = timed_scan("matrix", adapters, "plain")
        helper_s, helper_out = timed_scan("matrix", adapters, "helper") if args.helper else (0.0, None)
        names = [Path(a).name for a in adapters[:n_adapter]]
        agreement = compare_analyses(analyses(adapter_out, names), analyses(matrix_out, names))
        every = [Path(a).name for a in adapters]
        plain_agreement = compare_analyses(analyses(plain_out, every), analyses(matrix_out, every))
        helper_agreement = (compare_analyses(analyses(matrix_out, every), analyses(helper_out, every))
                            if helper_out is not None else "not run")  # fmt: skip
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
                 "matrix_plain_lanczos": 3600 * n / plain_s}
        if helper_s:
            rates["matrix_helper"] = 3600 * n / helper_s
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
        print(f"| matrix-major, every top-k by plain Lanczos | {n} | {plain_s:.1f} | "
              f"{rates['matrix_plain_lanczos']:,.0f} | {rates['matrix_plain_lanczos'] / rates['adapter']:.1f}× |")
        if helper_s:
            print(f"| matrix-major, top-k helper (INTRUDIM_TOPK_HELPERS=1) | {n} | {helper_s:.1f} | "
                  f"{rates['matrix_helper']:,.0f} | {rates['matrix_helper'] / rates['adapter']:.1f}× |")  # fmt: skip
        print(f"| floor (read {floor['factor_bytes'] / 2**30:.1f} GiB of factors once from disk: {floor['read_s']:.1f} s; "
              f"GEMMs at {floor['gflops']:.0f} GFLOP/s: {floor['gemm_s']:.1f} s) | {n} | {floor_s:.1f} | "
              f"{rates['floor']:,.0f} | {rates['floor'] / rates['adapter']:.1f}× |")  # fmt: skip
        rest = matrix_s - parts["products"] - parts["top-k"]
        print(f"in matrix-major's {matrix_s:.1f} s: the stacked products {parts['products']:.1f} s, the top-k (ARPACK) "
              f"{parts['top-k']:.1f} s, the rest (reading, each input's other steps, writing) {rest:.1f} s; the floor "
              f"with the top-k added: {floor_s + parts['top-k']:.1f} s")  # fmt: skip
        print(f"matrix-major / floor: {matrix_s / floor_s:.2f}× the floor's time; peak RSS {peak_gib:.2f} GiB; "
              f"the two orders agree: {agreement}")  # fmt: skip
        print(f"the shift-and-invert top-k: {plain_s / matrix_s:.2f}× plain Lanczos's speed (its top-k "
              f"{plain_parts['top-k']:.1f} s, the default's {parts['top-k']:.1f} s); the two agree: {plain_agreement}")
        if helper_s:
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
            "layers": layers, "spectrum": args.spectrum, "r": r, "adapters": n, "adapter_major_adapters": n_adapter,
            "cold_s": round(cold, 1), "adapter_major_s": round(adapter_s, 2), "matrix_major_s": round(matrix_s, 2),
            "matrix_major_helper_s": round(helper_s, 2) if helper_s else None, "helper_agreement": helper_agreement,
            "matrix_major_plain_lanczos_s": round(plain_s, 2), "plain_lanczos_agreement": plain_agreement,
            "matrix_major_plain_lanczos_parts_s": {label: round(v, 2) for label, v in plain_parts.items()},
            "adapter_major_evicted_s": round(evicted_s, 2), "adapter_major_evicted_adapters": n_evicted,
            "floor": floor, "rates_per_hour": rates, "peak_rss_gib": round(peak_gib, 2), "agreement": agreement,
            "matrix_major_parts_s": {label: round(v, 2) for label, v in parts.items()},
            "extrapolated_hours_32_layers_1000_adapters": hours, "seconds_per_adapter_layer": per_layer,
            "load_start": load_start, "load_end": load_end,
        }, indent=2) + "\n")  # fmt: skip
        if not all(a.startswith("same") for a in (agreement, plain_agreement)) or helper_agreement[:4] not in ("same", "not "):
            raise SystemExit("the two orders, or the scans with and without the top-k helper or the shift-and-invert "
                             "top-k, disagree: see above")  # fmt: skip
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

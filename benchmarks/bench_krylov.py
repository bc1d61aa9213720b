"""The structured LoRA top-k by block Krylov in torch (the GPU route) vs ARPACK and vs a dense SVD of the core.

For each base shape and LoRA rank one core M = diag(Σ₀) + s·B̃Ãᵀ is built from a cached-style base SVD
(:func:`intrudim.spectral.structured.lora_core`), then its top-k is computed by:

* ``arpack``: ARPACK Lanczos on the implicit operator, CPU (the default route on the CPU);
* ``krylov cpu`` / ``krylov cuda``: :func:`intrudim.spectral.krylov.block_krylov_top_k` in torch float64 on that
  device (``--device cuda`` takes this route; the cuda column only when a GPU is present);
* ``dense``: the naive reference, an SVD of the dense core (float64) on the same device.

Every route is checked against the CPU float64 dense SVD: top-k σ (relative) and the max |cos| to the base
vectors, and the intruder ranks at k = 10, ε = 0.5. Two base spectra: "spiked" (a Gaussian bulk plus separated
spikes, like benchmarks/bench_structured.py) and "gaussian" (top singular values packed together: the hardest
case for a Krylov method). Prints Krylov's product count too.

    python benchmarks/bench_krylov.py            # 1024², 2048², 4096² × r ∈ {1, 16}
    python benchmarks/bench_krylov.py --quick    # 1024² and 2048², r = 16

Writes bench_out/bench_krylov.json.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import add_timing_arguments, limit_threads, load_average, timed
from bench_structured import base_matrix

import intrudim.spectral.structured as structured
from intrudim.spectral.intruders import intruder_ranks
from intrudim.spectral.structured import core_top_k, lora_core
from intrudim.spectral.svd import thin_svd

K = 10
EPSILON = 0.5
OUT_DIR = Path("bench_out")


def make_case(n: int, r: int, spectrum: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if spectrum == "spiked":
        W0 = base_matrix(n, g).to(torch.float64)
    else:
        W0 = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    # B strong enough that some of its directions rank among the top 10 (intruders to find)
    c = (12.0 if spectrum == "spiked" else 4.0) * 0.75 ** torch.arange(r, dtype=torch.float64)
    B = torch.randn(n, r, generator=g, dtype=torch.float64) / math.sqrt(n) * c
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    base = thin_svd(W0)
    base32 = type(base)(
        U=base.U.to(torch.float32), S=base.S, Vh=base.Vh.to(torch.float32)
    )  # as the cache stores
    return lora_core(base32, B, A, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024² and 2048², r = 16 only")
    parser.add_argument("--repeats", type=int, default=3)
    add_timing_arguments(parser)
    args = parser.parse_args()
    pool = limit_threads(args.threads)
    pool.__enter__()
    clock = args.clock
    shapes = (1024, 2048) if args.quick else (1024, 2048, 4096)
    ranks = (16,) if args.quick else (1, 16)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"GPU: {gpu or 'none'}")  # fmt: skip
    load_start = load_average()
    print(f"load average at start: {load_start}; {clock} seconds per core, median of {args.repeats}\n")

    products: list[int] = []
    real = structured.block_krylov_top_k

    def counting(*a, **kw):
        result = real(*a, **kw)
        products.append(result.products if result.converged else -result.products)
        return result

    structured.block_krylov_top_k = counting

    def run(core, method, device):
        top = core_top_k(core, K, method=method, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        return top

    rows = []
    for spectrum in ("spiked", "gaussian"):
        for n in shapes:
            for r in ranks:
                core = make_case(n, r, spectrum, seed=n + r)
                ref = core_top_k(core, K, method="dense")
                ref_cos = ref.max_abs_cosine(core.p)
                ref_ranks = intruder_ranks(ref_cos, EPSILON)
                row = {
                    "spectrum": spectrum,
                    "n": n,
                    "r": r,
                    "intruders_reference": len(ref_ranks),
                    "routes": {},
                }
                for name, method, device in [("arpack", "lanczos", "cpu")] + [
                    (f"{m} {d}", m, d) for d in devices for m in ("krylov", "dense")
                ]:
                    run(core, method, device)  # warm-up
                    products.clear()
                    t, top = timed(run, args.repeats, core, method, device)
                    cos = top.max_abs_cosine(core.p)
                    row["routes"][name] = {
                        "seconds": t[clock], "wall_s": t["wall"], "cpu_s": t["cpu"],
                        "sigma_rel_err": float(((top.S - ref.S).abs() / ref.S).max()),
                        "cos_abs_err": float((cos - ref_cos).abs().max()),
                        "ranks_equal": intruder_ranks(cos, EPSILON) == ref_ranks,
                        "krylov_products": products[-1] if products else None,
                    }  # fmt: skip
                dense_cpu = row["routes"]["dense cpu"]["seconds"]
                for route in row["routes"].values():
                    route["speedup_vs_dense_cpu"] = dense_cpu / route["seconds"]
                rows.append(row)
                summary = " | ".join(
                    f"{name} {route['seconds']:.4f}s ({route['speedup_vs_dense_cpu']:.0f}×"
                    f"{', ' + str(route['krylov_products']) + ' products' if route['krylov_products'] else ''})"
                    for name, route in row["routes"].items()
                )
                print(f"{spectrum:8s} n={n:5d} r={r:3d} intruders {len(ref_ranks)} | {summary}", flush=True)

    all_ok = all(
        route["ranks_equal"] and route["sigma_rel_err"] < 1e-10 and route["cos_abs_err"] < 1e-8
        for row in rows for route in row["routes"].values()
    )  # fmt: skip
    print(f"\nCHECK every route == dense float64 (ranks at k={K}, ε={EPSILON}; σ to 1e-10, |cos| to 1e-8): "
          f"{'PASS' if all_ok else 'FAIL'}")  # fmt: skip
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / "bench_krylov.json"
    out.write_text(json.dumps({
        "benchmark": "bench_krylov", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "gpu": gpu, "clock": clock, "k": K,
        "load_average_start": load_start, "load_average_end": load_average(), "check_pass": all_ok, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"load average at end: {load_average()}\nwrote {out}")
    if not all_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()

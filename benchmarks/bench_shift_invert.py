"""The structured top-k by shift-and-invert Lanczos (issue 28) vs plain Lanczos, per 4096² core, on 2 cores.

A LoRA-tuned 4096² matrix whose cached SVD has no right vectors is analysed through the Gram core
N = Σ₀² + G·M·Gᵀ (:class:`intrudim.spectral.structured.GramCore`); its top-k is ARPACK's. Plain Lanczos on N (the
naive reference here, and the route before this one) needs few products when the base's top singular values stand
apart, as a trained matrix's do, and hundreds when they are packed together, as a random init's are
(Marchenko–Pastur). :mod:`intrudim.spectral.shift_invert` runs Lanczos on (σ − N)⁻¹ with a certified σ just above λ₁
where the top is packed, and declines elsewhere. Both routes run on the same cores, interleaved, one thread (as
the scan runs them); the table gives the median ms per core, the route the default took, and the largest
difference between the two in σ (relative) and in max |cos| to the base vectors.

Cores are built from their distributions directly (U₀ and V₀ random orthogonal make U₀ᵀB and V₀ᵀAᵀ Gaussian): the
base's σ are a 4096² Gaussian's (random) or :func:`bench_scan_order.trained_spectrum`'s for three projections, the
update r = 16 with A's entries of std 0.02 and B's of each std in the table.

    python benchmarks/bench_shift_invert.py            # 5 cores per cell
    python benchmarks/bench_shift_invert.py --quick    # 2 cores per cell, fewer cells

Writes bench_out/bench_shift_invert.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from _common import limit_threads, load_average
from bench_scan_order import trained_spectrum

import intrudim.spectral.structured as structured
from intrudim.spectral.shift_invert import diagonal_lowrank_top_k

K = 10
P = 4096
R = 16
OUT_DIR = Path("bench_out")


def base_spectrum(kind: str, rng: np.random.Generator) -> torch.Tensor:
    if kind == "random":
        S = np.linalg.svd(rng.standard_normal((P, P)) / np.sqrt(P), compute_uv=False)
        return torch.from_numpy(S)
    return 2.0 * trained_spectrum(kind.removeprefix("trained "), P)


def gram_core(S0: torch.Tensor, strength: float, rng: np.random.Generator) -> structured.GramCore:
    ZA = torch.from_numpy(rng.standard_normal((P, R)) * 0.02)  # V₀ᵀAᵀ
    B = torch.from_numpy(rng.standard_normal((P, R)) * strength)  # s·U₀ᵀB
    return structured.GramCore(S0=S0, B_coords=B, C=S0[:, None] * ZA, AAt=ZA.T @ ZA, p=P)


def top_k(core: structured.GramCore, route: bool) -> tuple[float, structured.CoreTopK, bool]:
    taken: list[bool] = []

    def recording(*args, **kwargs):
        found = diagonal_lowrank_top_k(*args, **kwargs) if route else None
        taken.append(found is not None)
        return found

    structured.diagonal_lowrank_top_k = recording
    try:
        start = time.perf_counter()
        top = structured.core_top_k(core, K, method="lanczos")
        return time.perf_counter() - start, top, taken == [True]
    finally:
        structured.diagonal_lowrank_top_k = diagonal_lowrank_top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 cores per cell, fewer cells")
    args = parser.parse_args()
    with limit_threads(1):
        run(args.quick)


def run(quick: bool) -> None:
    rng = np.random.default_rng(0)
    kinds = ["random", "trained v_proj"] if quick else ["random", "trained q_proj", "trained v_proj", "trained up_proj"]
    strengths = [1e-3, 1e-2, 1e-1] if quick else [1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    cores_per_cell = 2 if quick else 5
    structured.core_top_k(gram_core(base_spectrum("trained q_proj", rng), 1e-2, rng), K, method="lanczos")  # imports
    load = load_average()
    rows = []
    print(f"{'base':16s} {'B std':>6s} {'route':>8s} {'plain ms':>9s} {'new ms':>8s} {'speed-up':>8s} {'Δσ rel':>8s} {'Δ max|cos|':>10s}")
    for kind in kinds:
        S0 = base_spectrum(kind, rng)
        d = (S0**2).numpy()
        clustered = float(np.sort(d)[::-1][2 * K] / d.max())
        for strength in strengths:
            plain_times, new_times, taken, d_sigma, d_cos = [], [], [], 0.0, 0.0
            for _ in range(cores_per_cell):
                core = gram_core(S0, strength, rng)
                for _ in range(2):  # interleaved, the median of the two routes' times
                    t_plain, plain, _ = top_k(core, route=False)
                    t_new, new, took = top_k(core, route=True)
                    plain_times.append(t_plain)
                    new_times.append(t_new)
                taken.append(took)
                d_sigma = max(d_sigma, float(((new.S - plain.S).abs() / plain.S[0]).max()))
                d_cos = max(d_cos, float((new.max_abs_cosine(P) - plain.max_abs_cosine(P)).abs().max()))
            plain_ms, new_ms = 1e3 * statistics.median(plain_times), 1e3 * statistics.median(new_times)
            route = "shifted" if all(taken) else ("plain" if not any(taken) else "mixed")
            rows.append({"base": kind, "d_2k+1/d_1": clustered, "b_std": strength, "route": route, "plain_ms": plain_ms,
                         "new_ms": new_ms, "speedup": plain_ms / new_ms, "max_sigma_rel_diff": d_sigma,
                         "max_cos_abs_diff": d_cos})  # fmt: skip
            print(f"{kind:16s} {strength:6g} {route:>8s} {plain_ms:9.1f} {new_ms:8.1f} {plain_ms / new_ms:7.2f}x "
                  f"{d_sigma:8.1e} {d_cos:10.1e}", flush=True)  # fmt: skip
    OUT_DIR.mkdir(exist_ok=True)
    document = {
        "benchmark": "bench_shift_invert", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(), "load_average_before": load, "p": P, "r": R, "k": K,
        "threads": 1, "cores_per_cell": cores_per_cell, "rows": rows,
    }  # fmt: skip
    (OUT_DIR / "bench_shift_invert.json").write_text(json.dumps(document, indent=2))
    print(f"Wrote {OUT_DIR / 'bench_shift_invert.json'}")


if __name__ == "__main__":
    main()

"""Structured LoRA top-k vs a dense SVD of the merged matrix (DESIGN.md, "Fast paths").

For each shape n×n and LoRA rank r, one adapter matrix W_t = W₀ + s·B·A is analysed two ways:

* naive reference: ``torch.linalg.svd(W₀ + s·B@A)`` (dense, float32 and float64), then the cosine step
  ``|U_t[:, :k]ᵀ U₀|`` max over all base vectors;
* fast path: ``lora_core(base, B, A, s)`` + ``core_top_k(core, k)`` + ``max_abs_cosine`` from the cached
  base SVD (timed *excluding* the base SVD — "once the base cache exists"; the one-time base SVD cost is
  reported in its own column).
* the same without the base's right vectors (``GramCore``: what the default cache holds for a wide or square
  matrix): the top eigenpairs of N = U₀ᵀW_tW_tᵀU₀, built from U₀, Σ₀ and W₀ itself ("Gram core" column), with
  U₀ in float32 as the default cache stores it (the column before it uses the float64 factors).

Two LoRA cases per (n, r): "realistic" (A ~ N(0, 1/n), B small, s = α/r with α = 2r: typically no
intruders) and "planted" (B with a few strong random directions, so counts are non-zero). The script
checks that the structured path and the float64 dense reference give identical intruder counts at
k = 10, ε = 0.5 and the same top-k σ (1e-8 relative), and prints that check.

    python benchmarks/bench_structured.py            # 768², 2048², 4096² × r ∈ {1, 16, 64}
    python benchmarks/bench_structured.py --quick    # 768² and 2048², r = 16

Writes the table to bench_out/bench_structured.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import add_timing_arguments, limit_threads, load_average, timed

from intrudim.spectral.intruders import intruder_ranks
from intrudim.spectral.structured import core_top_k, lora_core
from intrudim.spectral.svd import SVDFactors, thin_svd

K = 10
EPSILON = 0.5
OUT_DIR = Path("bench_out")


def base_matrix(n: int, generator: torch.Generator) -> torch.Tensor:
    """A pre-trained-like base: a Gaussian bulk (σ ≤ 2) plus 32 separated spikes (σ ≈ 3.3 … 10)."""
    spikes = 32
    X = torch.randn(n, spikes, generator=generator, dtype=torch.float64) / n**0.5
    Y = torch.randn(n, spikes, generator=generator, dtype=torch.float64) / n**0.5
    d = 3.0 + 7.0 * 0.9 ** torch.arange(spikes, dtype=torch.float64)
    G = torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5
    return (G + (X * d) @ Y.T).to(torch.float32)  # stored like a checkpoint: float32


def lora_factors(
    n: int, r: int, case: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """B (n, r), A (r, n), s. realistic: A ~ N(0, 1/n), B ~ N(0, 0.01²), s = α/r = 2. planted: strong B columns."""
    alpha = 2 * r
    scale = alpha / r
    A = torch.randn(r, n, generator=generator) / n**0.5
    if case == "realistic":
        B = 0.01 * torch.randn(n, r, generator=generator)
    else:
        # column j of B·A has σ ≈ s · c_j; c_j from 7.5 down (geometric): the strongest land among the
        # base spikes' σ, so some top-10 tuned vectors are new directions (intruders) and some are not.
        c = 7.5 * 0.75 ** torch.arange(r, dtype=torch.float32)
        B = torch.randn(n, r, generator=generator) / n**0.5 * c
    return B, A, scale


def structured(base, B, A, scale):
    core = lora_core(base, B, A, scale)
    top = core_top_k(core, K)
    max_cos = top.max_abs_cosine(core.p)
    return top.S, intruder_ranks(max_cos, EPSILON), max_cos


def structured_without_vh(base, W0, B, A, scale):
    core = lora_core(base, B, A, scale, W0=W0)  # base.Vh is None: a GramCore
    top = core_top_k(core, K)
    max_cos = top.max_abs_cosine(core.p)
    return top.S, intruder_ranks(max_cos, EPSILON), max_cos


def dense(W0, U0, B, A, scale, dtype):
    W_t = W0.to(dtype) + scale * (B.to(dtype) @ A.to(dtype))
    U, S, _ = torch.linalg.svd(W_t, full_matrices=False)
    # the naive cosine step in the reference's own precision: |U_t[:, :k]ᵀ U₀| (k × n), max over base vectors
    max_cos = (U[:, :K].T @ U0.to(dtype)).abs().amax(dim=1).to(torch.float64)
    return S[:K].to(torch.float64), intruder_ranks(max_cos, EPSILON), max_cos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="768² and 2048², r = 16 only")
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats of the structured path")
    add_timing_arguments(parser)
    args = parser.parse_args()
    pool = limit_threads(args.threads)
    pool.__enter__()
    clock = args.clock
    shapes = (768, 2048) if args.quick else (768, 2048, 4096)
    ranks = (16,) if args.quick else (1, 16, 64)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    load_start = load_average()
    print(
        f"load average at start: {load_start} (2 cores; higher means other processes competed for the CPUs)"
    )
    print(f"k={K}, ε={EPSILON}; times are {clock} seconds per adapter matrix (median of repeats), "
          f"threads={torch.get_num_threads()}\n")  # fmt: skip

    rows = []
    for n in shapes:
        g = torch.Generator().manual_seed(n)
        W0 = base_matrix(n, g)
        t0 = time.perf_counter()
        c0 = time.process_time()
        base = thin_svd(W0)  # float64 thin SVD: what the cache stores (computed once per base matrix)
        base_svd_s = time.perf_counter() - t0 if clock == "wall" else time.process_time() - c0
        U0 = base.U
        left_only = SVDFactors(U=base.U.to(torch.float32), S=base.S, Vh=None)  # as the default cache stores it
        # dense references: 3 repeats below 4096, 1 at 4096 (a dense 4096² float64 SVD takes tens of seconds)
        dense_repeats = 1 if n >= 4096 else 3
        for r in ranks:
            for case in ("realistic", "planted"):
                B, A, scale = lora_factors(n, r, case, g)
                # one warm-up call so that ARPACK/BLAS first-call costs are not in the median
                structured(base, B, A, scale)
                t_struct, (S_s, ranks_s, cos_s) = timed(structured, args.repeats, base, B, A, scale)
                structured_without_vh(left_only, W0, B, A, scale)
                t_gram, (S_g, ranks_g, cos_g) = timed(structured_without_vh, args.repeats, left_only, W0, B, A, scale)
                reps = dense_repeats if case == "realistic" else 1  # planted: one run, for the count check
                # at n ≥ 4096 the float32 reference (timing only) runs for r = 16 alone: its cost does not depend
                # on r, and each run takes tens of seconds; float64 (the correctness reference) runs for every case
                if n >= 4096 and r != 16:
                    t_d32, S_32, ranks_32 = {"wall": float("nan"), "cpu": float("nan")}, None, None
                else:
                    t_d32, (S_32, ranks_32, _) = timed(dense, reps, W0, U0, B, A, scale, torch.float32)
                t_d64, (S_64, ranks_64, cos_64) = timed(dense, reps, W0, U0, B, A, scale, torch.float64)
                sigma_rel = max(float(((S - S_64).abs() / S_64.abs()).max()) for S in (S_s, S_g))
                cos_diff = max(float((cos - cos_64).abs().max()) for cos in (cos_s, cos_g))
                row = {
                    "n": n, "r": r, "case": case, "clock": clock,
                    "structured_s": t_struct[clock], "gram_core_s": t_gram[clock],
                    "dense_f32_s": t_d32[clock], "dense_f64_s": t_d64[clock],
                    "speedup_vs_f32": t_d32[clock] / t_struct[clock], "speedup_vs_f64": t_d64[clock] / t_struct[clock],
                    "wall_s": {"structured": t_struct["wall"], "dense_f32": t_d32["wall"], "dense_f64": t_d64["wall"]},
                    "cpu_s": {"structured": t_struct["cpu"], "dense_f32": t_d32["cpu"], "dense_f64": t_d64["cpu"]},
                    "base_svd_once_s": base_svd_s,
                    "intruders_structured": len(ranks_s), "intruders_dense_f64": len(ranks_64),
                    "intruders_dense_f32": None if ranks_32 is None else len(ranks_32),
                    "ranks_structured": ranks_s, "ranks_dense_f64": ranks_64, "ranks_dense_f32": ranks_32,
                    "counts_identical_f64": ranks_s == ranks_64 and ranks_g == ranks_64,
                    "counts_identical_f32": None if ranks_32 is None else ranks_s == ranks_32,
                    "sigma_max_rel_err_vs_f64": sigma_rel, "max_cos_max_abs_diff_vs_f64": cos_diff,
                    "min_margin_to_epsilon": float((cos_64 - EPSILON).abs().min()),
                    "dense_repeats": reps, "structured_repeats": args.repeats,
                }  # fmt: skip
                rows.append(row)
                print(
                    f"n={n:5d} r={r:3d} {case:9s} structured {row['structured_s']:8.4f}s | Gram core "
                    f"{row['gram_core_s']:8.4f}s | dense f32 {row['dense_f32_s']:8.3f}s "
                    f"({row['speedup_vs_f32']:7.1f}×) | dense f64 {row['dense_f64_s']:8.3f}s ({row['speedup_vs_f64']:7.1f}×) | "
                    f"intruders {len(ranks_s)} vs f64 {len(ranks_64)} / f32 {'-' if ranks_32 is None else len(ranks_32)} "
                    f"{'OK' if row['counts_identical_f64'] else 'MISMATCH'} | σ rel err {sigma_rel:.1e}",
                    flush=True,
                )

    print(
        "\n| n×n | r | case | structured (s) | Gram core, no V₀, f32 U₀ (s) | dense f32 (s) | dense f64 (s) | × vs f32 | × vs f64 | base SVD once (s) | intruders struct / f64 / f32 | identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['n']}² | {row['r']} | {row['case']} | {row['structured_s']:.4f} | {row['gram_core_s']:.4f} | "
            f"{row['dense_f32_s']:.3f} | "
            f"{row['dense_f64_s']:.3f} | {row['speedup_vs_f32']:.0f}× | {row['speedup_vs_f64']:.0f}× | "
            f"{row['base_svd_once_s']:.2f} | {row['intruders_structured']} / {row['intruders_dense_f64']} / "
            f"{'-' if row['intruders_dense_f32'] is None else row['intruders_dense_f32']} | {'yes' if row['counts_identical_f64'] else 'NO'} |"
        )
    all_ok = all(row["counts_identical_f64"] and row["sigma_max_rel_err_vs_f64"] < 1e-8 for row in rows)
    print(
        f"\nCHECK structured (with V₀ and Gram core) == dense float64 (intruder ranks at k={K}, ε={EPSILON}; top-k σ to 1e-8): "
        f"{'PASS' if all_ok else 'FAIL'}"
    )
    f32_mismatch = [(row["n"], row["r"], row["case"]) for row in rows if row["counts_identical_f32"] is False]
    print(
        f"dense float32 reference agrees with float64 on counts: {'yes' if not f32_mismatch else f32_mismatch}"
    )
    goals = {}
    for n, goal in ((4096, 200.0), (768, 10.0)):
        hit = [row for row in rows if row["n"] == n and row["r"] == 16 and row["case"] == "realistic"]
        if hit:
            goals[f"{n}x{n}_r16_vs_f32"] = {
                "goal": goal,
                "measured": hit[0]["speedup_vs_f32"],
                "met": hit[0]["speedup_vs_f32"] >= goal,
            }
            print(
                f"goal ≥{goal:.0f}× at {n}², r=16 (vs dense float32): measured {hit[0]['speedup_vs_f32']:.0f}× "
                f"(vs float64 {hit[0]['speedup_vs_f64']:.0f}×) → {'met' if hit[0]['speedup_vs_f32'] >= goal else 'MISSED'}"
            )
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / "bench_structured.json"
    out.write_text(json.dumps({
        "benchmark": "bench_structured", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "clock": clock, "k": K, "epsilon": EPSILON,
        "load_average_start": load_start, "load_average_end": load_average(), "check_pass": all_ok, "goals": goals, "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"load average at end: {load_average()}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

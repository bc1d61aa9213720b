"""Dense (full fine-tuning) path: top-k Lanczos SVD vs a full dense SVD (DESIGN.md, "Fast paths").

A fully fine-tuned matrix W_t has no structure to exploit, but only its top-k (k = 10) singular vectors
are compared with the base (Sec. 4). ``top_k_svd(W, 10)`` (ARPACK Lanczos, float64) is timed against the
naive reference ``torch.linalg.svd(W, full_matrices=False)`` in float64 and float32, on a pre-trained-like
matrix (Gaussian bulk + separated spikes + a dense fine-tuning perturbation). The script checks that the
top-10 σ agree with the float64 reference to 1e-8 relative, and that the top-10 left vectors span the same
directions (|cos| of matched vectors ≈ 1).

    python benchmarks/bench_dense_topk.py            # 768², 2048², 4096², 4096×11008
    python benchmarks/bench_dense_topk.py --quick    # 768², 2048²

Writes the table to bench_out/bench_dense_topk.json.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import add_timing_arguments, limit_threads, load_average, timed

from intrudim.spectral.svd import top_k_svd

K = 10
OUT_DIR = Path("bench_out")


def tuned_matrix(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A fully fine-tuned-like matrix (out m, in n): Gaussian bulk + 32 spikes + a small dense update."""
    spikes = 32
    p = min(m, n)
    X = torch.randn(m, spikes, generator=generator, dtype=torch.float64) / m**0.5
    Y = torch.randn(n, spikes, generator=generator, dtype=torch.float64) / n**0.5
    d = 3.0 + 7.0 * 0.9 ** torch.arange(spikes, dtype=torch.float64)
    G = torch.randn(m, n, generator=generator, dtype=torch.float64) / p**0.5
    W0 = G + (X * d) @ Y.T
    delta = 0.05 * torch.randn(m, n, generator=generator, dtype=torch.float64) / p**0.5
    return (W0 + delta).to(torch.float32)


def full_thin_svd(W: torch.Tensor, dtype: torch.dtype):
    """The naive reference: every singular triplet, ``torch.linalg.svd(W, full_matrices=False)`` in ``dtype``."""
    return torch.linalg.svd(W.to(dtype), full_matrices=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="768² and 2048² only")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats of top_k_svd")
    add_timing_arguments(parser)
    args = parser.parse_args()
    pool = limit_threads(args.threads)
    pool.__enter__()
    clock = args.clock
    shapes = [(768, 768), (2048, 2048)] + ([] if args.quick else [(4096, 4096), (4096, 11008)])
    load_start = load_average()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start: {load_start}"
    )
    print(
        f"clock={clock}, threads={torch.get_num_threads()}; k={K}; seconds per matrix (median of repeats; the full dense SVD is run once at ≥4096)\n"
    )
    rows = []
    for m, n in shapes:
        W = tuned_matrix(m, n, torch.Generator().manual_seed(m * 7 + n))
        top_k_svd(W, K)  # warm-up (first ARPACK call)
        t_topk, top = timed(top_k_svd, args.repeats, W, K)
        reps = 1 if max(m, n) >= 4096 else 3
        t_f64, (U64, S64, _) = timed(full_thin_svd, reps, W, torch.float64)
        t_f32, (U32, S32, _) = timed(full_thin_svd, reps, W, torch.float32)
        rel64 = float(((top.S - S64[:K]).abs() / S64[:K]).max())
        rel32 = float(((S32[:K].to(torch.float64) - S64[:K]).abs() / S64[:K]).max())
        vec_cos = float((top.U.T @ U64[:, :K]).diagonal().abs().min())
        row = {
            "shape": [m, n], "clock": clock, "top_k_s": t_topk[clock], "dense_f64_s": t_f64[clock],
            "dense_f32_s": t_f32[clock], "speedup_vs_f64": t_f64[clock] / t_topk[clock],
            "speedup_vs_f32": t_f32[clock] / t_topk[clock],
            "wall_s": {"top_k": t_topk["wall"], "dense_f64": t_f64["wall"], "dense_f32": t_f32["wall"]},
            "cpu_s": {"top_k": t_topk["cpu"], "dense_f64": t_f64["cpu"], "dense_f32": t_f32["cpu"]},
            "sigma_max_rel_err_vs_f64": rel64, "dense_f32_sigma_max_rel_err_vs_f64": rel32,
            "min_abs_cos_matched_vectors": vec_cos, "sigma_ok": rel64 < 1e-8,
            "top_k_repeats": args.repeats, "dense_repeats": reps,
        }  # fmt: skip
        rows.append(row)
        print(
            f"{m:5d}×{n:<5d} top_k_svd {row['top_k_s']:7.3f}s | dense f64 {row['dense_f64_s']:7.2f}s ({row['speedup_vs_f64']:6.1f}×) | "
            f"dense f32 {row['dense_f32_s']:7.2f}s ({row['speedup_vs_f32']:6.1f}×) | top-{K} σ rel err {rel64:.1e} "
            f"{'OK' if rel64 < 1e-8 else 'FAIL'} | min |cos| matched u {vec_cos:.12f}",
            flush=True,
        )
    print(
        "\n| shape (out×in) | top_k_svd k=10 (s) | dense SVD f64 (s) | dense SVD f32 (s) | × vs f64 | × vs f32 | top-10 σ rel err vs f64 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        m, n = row["shape"]
        print(
            f"| {m}×{n} | {row['top_k_s']:.3f} | {row['dense_f64_s']:.2f} | {row['dense_f32_s']:.2f} | "
            f"{row['speedup_vs_f64']:.0f}× | {row['speedup_vs_f32']:.0f}× | {row['sigma_max_rel_err_vs_f64']:.1e} |"
        )
    ok = all(row["sigma_ok"] for row in rows)
    print(f"\nCHECK top-{K} σ of top_k_svd == dense float64 to 1e-8 relative: {'PASS' if ok else 'FAIL'}")
    OUT_DIR.mkdir(exist_ok=True)
    out = OUT_DIR / "bench_dense_topk.json"
    out.write_text(json.dumps({
        "benchmark": "bench_dense_topk", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "clock": clock, "k": K, "check_pass": ok,
        "load_average_start": load_start, "load_average_end": load_average(), "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"load average at end: {load_average()}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

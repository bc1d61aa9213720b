"""Cold base SVD cache: the Gram-matrix eigensolver route (``base_svd``) vs LAPACK's SVD (``thin_svd``), per layer.

The first analysis of a new base computes the thin SVD W₀ = U Σ Vᵀ of every matrix (the warm path then reads it
from the cache). ``base_svd`` takes the symmetric eigendecomposition of the smaller Gram matrix in float64 and
recovers the other side as Wᵀu/σ, re-solving the singular values below 1% of σ₁ from the rows of UᵀW (so that
ill-conditioned matrices, up to κ = 3·10⁵, keep the route), checked in float64 (it falls back to the SVD when the
check fails). For a wide or square matrix the cache stores no right vectors (``right_vectors=False``: the warm
path builds N = U₀ᵀW_tW_tᵀU₀ from W₀ instead), so their p×p×q product is not computed: that is the "new" time.
The naive reference is ``torch.linalg.svd(W, full_matrices=False)`` in float64, what the cache computed before
the Gram route ("old"); the Gram route with right vectors ("with Vh", the previous cache) is timed beside them.
All are timed in the same run on the matrices of one LLaMA-7B-shaped block (q, k, v, o: 4096²; gate, up:
11008×4096; down: 4096×11008) with a weight-like spectrum, and the script checks exactness: σ to 1e-10 relative
and every singular vector equal up to sign (reports the worst 1 − |cos|; a wide matrix's right vectors are
checked as Σ⁻¹UᵀW, the vectors the warm path uses implicitly).

    python benchmarks/bench_cold_cache.py             # one LLaMA-7B block (~10 minutes on 2 cores)
    python benchmarks/bench_cold_cache.py --quick     # hidden 2048, MLP 5504 (a ~1B-shaped block)
    python benchmarks/bench_cold_cache.py --device cuda   # both routes on the GPU (torch eigh / svd), wall clock

On a GPU both routes run in torch on that device (cuSOLVER's eigh and SVD in float64); the exactness check still
compares against the CPU's LAPACK SVD of the same matrix.

Writes bench_out/bench_cold_cache.json.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import add_timing_arguments, limit_threads, load_average, timed

from intrudim.spectral.svd import base_svd, thin_svd

OUT_DIR = Path("bench_out")


def weight_like(m: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A pre-trained-like matrix: a Gaussian bulk plus 32 decaying spikes (σ from ~10 down to the bulk's ~2)."""
    spikes = 32
    X = torch.randn(m, spikes, generator=generator, dtype=torch.float64) / m**0.5
    Y = torch.randn(n, spikes, generator=generator, dtype=torch.float64) / n**0.5
    d = 3.0 + 7.0 * 0.9 ** torch.arange(spikes, dtype=torch.float64)
    return torch.randn(m, n, generator=generator, dtype=torch.float64) / max(m, n) ** 0.5 + (X * d) @ Y.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="hidden 2048, MLP 5504 instead of 4096, 11008")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both routes run")
    add_timing_arguments(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is available here")

    def on_device(fn):
        def run(W):
            out = fn(W.to(device))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                Vh = None if out.Vh is None else out.Vh.cpu()
                return type(out)(U=out.U.cpu(), S=out.S.cpu(), Vh=Vh)
            return out

        return run

    def left_only(W):
        return base_svd(W, right_vectors=False)

    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    shapes = {"attn (q, k, v, o)": ((hidden, hidden), 4), "mlp gate/up": ((mlp, hidden), 2), "mlp down": ((hidden, mlp), 1)}
    generator = torch.Generator().manual_seed(0)
    rows, totals = [], {"old": 0.0, "new": 0.0, "with_vh": 0.0}
    with limit_threads(args.threads):
        for name, ((m, n), count) in shapes.items():
            W = weight_like(m, n, generator)
            if device.type == "cuda":
                timed(on_device(thin_svd), 1, W), timed(on_device(base_svd), 1, W)  # warm-up: cuSOLVER handles
            old_time, reference_here = timed(on_device(thin_svd), 1, W)
            with_vh_time, _ = timed(on_device(base_svd), 1, W)
            new_time, fast = timed(on_device(left_only), 1, W)
            reference = thin_svd(W) if device.type == "cuda" else reference_here
            cos_u = float((fast.U * reference.U).sum(0).abs().min())
            Vh = fast.Vh if fast.Vh is not None else (fast.U.T @ W) / fast.S[:, None]
            cos_v = float((Vh * reference.Vh).sum(1).abs().min())
            sigma = float(((fast.S - reference.S).abs() / reference.S[0]).max())
            fell_back = torch.equal(fast.U, reference_here.U)
            old, new, with_vh = old_time[args.clock], new_time[args.clock], with_vh_time[args.clock]
            totals["old"] += count * old
            totals["new"] += count * new
            totals["with_vh"] += count * with_vh
            rows.append({"matrix": name, "shape": [m, n], "per_block": count, "svd_seconds": round(old, 3),
                         "gram_seconds": round(new, 3), "gram_with_vh_seconds": round(with_vh, 3),
                         "stores_vh": fast.Vh is not None, "ratio": round(old / new, 2), "fell_back_to_svd": fell_back,
                         "worst_1_minus_cos_U": 1 - cos_u, "worst_1_minus_cos_V": 1 - cos_v,
                         "sigma_max_rel_error": sigma})  # fmt: skip
            print(f"{name:18} {m}×{n}: SVD {old:8.2f} s  Gram with Vh {with_vh:7.2f} s  Gram {new:7.2f} s  "
                  f"×{old / new:5.2f}  "
                  f"1−|cos| U {1 - cos_u:.1e} V {1 - cos_v:.1e}  σ err {sigma:.1e}{'  (fell back)' if fell_back else ''}",
                  flush=True)  # fmt: skip
            assert sigma < 1e-10 and 1 - cos_u < 1e-8 and 1 - cos_v < 1e-8, "not exact"
    ratio = totals["old"] / totals["new"]
    print(f"one block ({hidden}/{mlp}): SVD {totals['old']:.1f} s, Gram with Vh {totals['with_vh']:.1f} s "
          f"(×{totals['old'] / totals['with_vh']:.2f}), Gram as the cache runs it {totals['new']:.1f} s: ×{ratio:.2f} "
          f"({args.clock} clock, threads {args.threads or torch.get_num_threads()}, load {load_average()}"
          f"{', ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''})")  # fmt: skip
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / f"bench_cold_cache{'' if device.type == 'cpu' else '_' + device.type}.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hidden": hidden, "mlp": mlp,
        "device": args.device,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "clock": args.clock, "threads": args.threads or torch.get_num_threads(), "load_average": load_average(),
        "rows": rows, "block_svd_seconds": totals["old"], "block_gram_seconds": totals["new"],
        "block_gram_with_vh_seconds": totals["with_vh"], "ratio": ratio,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

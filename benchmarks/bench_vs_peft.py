"""intrudim vs peft's own intruder detection (`peft.tuners.lora.intruders.reduce_intruder_dimension`).

peft (≥ 0.18) ships intruder-dimension *mitigation*; its only detection entry point is that function, which
for every LoRA layer runs dense float32 SVDs of W and W + ΔW (and, for layers with intruders, a third SVD
of the mitigated ΔW) and logs "<layer>: Intruders: N" or "<layer>: No intruders". It is timed whole and
said so; a "peft-style detection only" column replays just its two detection SVDs per layer (same code,
no mitigation, no new adapter) so that the comparison is not inflated by mitigation work.

Model: a LLaMA (LlamaConfig, random weights, built in memory) with hidden 1024, 4 layers, MLP 2816, and a
LoRA adapter r = 16, α = 32 on all seven projections whose B is set non-zero (trained-looking). Base
(save_pretrained, safetensors) and adapter are saved to a temp dir; ``intrudim.analyze`` reads them from
disk, with a cold SVD cache (computes float64 base SVDs once) and a warm one (cache hit); the warm runs are
interleaved with warm runs that read each matrix only when it is reached (INTRUDIM_READ_AHEAD=0, no background
reader: the loop before issue 15), whose results must be identical. The script checks that the per-layer
intruder counts at k = 10, ε = 0.5 agree with peft's.

    python benchmarks/bench_vs_peft.py            # hidden 1024, 4 layers (28 matrices)
    python benchmarks/bench_vs_peft.py --quick    # hidden 768, 2 layers

Writes the table to bench_out/bench_vs_peft.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

OUT_DIR = Path("bench_out")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOP_K, EPSILON = 10, 0.5


def build(hidden: int, layers: int, mlp: int, r: int, seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, vocab_size=1024, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    return model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0), get_peft_model


def set_trained_b(peft_model, seed: int) -> None:
    """A trained-looking adapter: B ≠ 0 with a per-module size, so some layers have intruders and some not."""
    from peft.tuners.lora.layer import LoraLayer

    g = torch.Generator().manual_seed(seed)
    for _, layer in peft_model.named_modules():
        if isinstance(layer, LoraLayer):
            weight = layer.lora_B["default"].weight
            std = float(10 ** torch.empty(1).uniform_(-2.5, -1.2, generator=g))  # 0.003 … 0.06
            with torch.no_grad():
                weight.copy_(std * torch.randn(weight.shape, generator=g))


def peft_detection_only(peft_model) -> dict[str, int]:
    """peft's detection step alone (its code: dense fp32 SVDs of W and W + ΔW per layer), no mitigation."""
    from peft.tuners.lora.layer import LoraLayer

    counts = {}
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        W = layer.get_base_layer().weight.data
        W_merged = W + layer.get_delta_weight("default")
        U_base, _, _ = torch.linalg.svd(W, full_matrices=False)
        U_merged, _, _ = torch.linalg.svd(W_merged, full_matrices=False)
        cos_sim = (U_merged.T @ U_base).abs().max(dim=1).values
        counts[name] = len(torch.where(cos_sim[:TOP_K] < EPSILON)[0].tolist())
    return counts


def parse_peft_log(lines: list[str]) -> dict[str, int]:
    counts = {}
    for line in lines:
        match = re.match(r"^(?P<layer>\S+): (?:Intruders: (?P<n>\d+)|No intruders)$", line)
        if match:
            counts[match["layer"]] = int(match["n"] or 0)
    return counts


def module_of(name: str) -> str:
    """'base_model.model.model.layers.0.self_attn.q_proj' or 'model.layers.0.self_attn.q_proj.weight' → 'model.layers.0.self_attn.q_proj'."""
    name = name.removeprefix("base_model.model.").removesuffix(".weight")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="hidden 768, 2 layers")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the warm intrudim run")
    parser.add_argument(
        "--threads", type=int, default=None, help="pin torch/BLAS threads (default: all cores)"
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="time used for the ratios: wall-clock, or process CPU seconds (robust on a busy machine with --threads 1)",
    )  # fmt: skip
    args = parser.parse_args()
    hidden, layers, mlp = (768, 2, 2048) if args.quick else (1024, 4, 2816)
    r = 16
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import peft
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(limits=args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    import intrudim

    load_start = [round(x, 2) for x in os.getloadavg()]
    print(f"torch {torch.__version__}, peft {peft.__version__}, {torch.get_num_threads()} threads; "
          f"clock={args.clock}, LLaMA hidden={hidden} layers={layers} MLP={mlp}, LoRA r={r} α={2 * r}; load average at start: {load_start}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="intrudim_bench_vs_peft_"))
    try:
        model, lora_config, get_peft_model = build(hidden, layers, mlp, r, seed=0)
        model.save_pretrained(work / "base")
        peft_model = get_peft_model(model, lora_config)
        set_trained_b(peft_model, seed=1)
        peft_model.save_pretrained(work / "adapter")
        n_matrices = sum(
            1 for _, m in peft_model.named_modules() if type(m).__name__ == "Linear" and hasattr(m, "lora_A")
        )

        # peft detection alone (replayed) and peft's function whole (detection + mitigation + new adapter)
        t0 = clock()
        detect_only = peft_detection_only(peft_model)
        t_peft_detect = clock() - t0
        log: list[str] = []
        t0 = clock()
        reduce_intruder_dimension(peft_model, top_k=TOP_K, threshold_epsilon=EPSILON, logging_sink=log.append)
        t_peft = clock() - t0
        peft_counts = {module_of(k): v for k, v in parse_peft_log(log).items()}
        assert {module_of(k): v for k, v in detect_only.items()} == peft_counts, (
            "replayed detection differs from peft's log"
        )

        cache = work / "cache"
        t0 = clock()
        cold = intrudim.analyze(work / "base", work / "adapter", k=TOP_K, epsilon=EPSILON, cache_dir=cache)
        t_cold = clock() - t0
        # Warm runs, interleaved with the same run without reading the next matrix ahead (INTRUDIM_READ_AHEAD=0,
        # the loop before issue 15's background reader) so that both see the same machine.
        warm_times, sequential_times = [], []
        for _ in range(args.repeats):
            for times, ahead in ((warm_times, None), (sequential_times, "0")):
                if ahead is None:
                    os.environ.pop("INTRUDIM_READ_AHEAD", None)
                else:
                    os.environ["INTRUDIM_READ_AHEAD"] = ahead
                t0 = clock()
                result = intrudim.analyze(
                    work / "base", work / "adapter", k=TOP_K, epsilon=EPSILON, cache_dir=cache
                )
                times.append(clock() - t0)
                if ahead is None:
                    warm = result
                else:
                    sequential = result
        os.environ.pop("INTRUDIM_READ_AHEAD", None)
        t_warm = statistics.median(warm_times)
        t_sequential = statistics.median(sequential_times)
        assert [m.to_json(include_similarity=True) for m in sequential.matrices] == [
            m.to_json(include_similarity=True) for m in warm.matrices
        ], "reading ahead changed a result"
        ours = {module_of(m.name): m.intruders for m in warm.matrices}
        ours_cold = {module_of(m.name): m.intruders for m in cold.matrices}
        margins = {module_of(m.name): min(abs(c - EPSILON) for c in m.max_abs_cos) for m in warm.matrices}

        mismatched = sorted(k for k in set(peft_counts) | set(ours) if peft_counts.get(k) != ours.get(k))
        agree = not mismatched and ours == ours_cold and len(ours) == n_matrices
        print(
            f"\n{n_matrices} LoRA matrices; per-layer intruder counts (k={TOP_K}, ε={EPSILON}): peft vs intrudim"
        )
        for key in sorted(ours, key=lambda s: [int(p) if p.isdigit() else p for p in s.split(".")]):
            flag = "" if peft_counts.get(key) == ours[key] else "   <-- MISMATCH"
            print(f"  {key:40s} peft {peft_counts.get(key, '-'):>2}  intrudim {ours[key]:>2}  "
                  f"(min |max|cos| − ε| {margins[key]:.3f}){flag}")  # fmt: skip
        rows = [
            {
                "method": "peft reduce_intruder_dimension (whole: detection + mitigation + new adapter)",
                "seconds": t_peft,
            },
            {
                "method": "peft-style detection only (2 dense fp32 SVDs per layer, replayed)",
                "seconds": t_peft_detect,
            },
            {"method": "intrudim.analyze, cold cache (computes float64 base SVDs)", "seconds": t_cold},
            {"method": f"intrudim.analyze, warm cache (median of {args.repeats})", "seconds": t_warm},
            {
                "method": f"intrudim.analyze, warm cache, no read-ahead (INTRUDIM_READ_AHEAD=0, median of {args.repeats})",
                "seconds": t_sequential,
            },
        ]
        print("\n| method | seconds | peft whole / this | peft detection only / this |")
        print("|---|---|---|---|")
        for row in rows:
            row["ratio_peft_whole"] = t_peft / row["seconds"]
            row["ratio_peft_detect"] = t_peft_detect / row["seconds"]
            print(
                f"| {row['method']} | {row['seconds']:.2f} | {row['ratio_peft_whole']:.1f}× | {row['ratio_peft_detect']:.1f}× |"
            )
        print(f"\ntotal intruders: peft {sum(peft_counts.values())}, intrudim {warm.total_intruders} "
              f"(cold-cache run {cold.total_intruders})")  # fmt: skip
        print(
            f"CHECK per-layer intruder counts agree with peft: {'PASS' if agree else 'FAIL ' + str(mismatched)}"
        )
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / "bench_vs_peft.json"
        out.write_text(json.dumps({
            "benchmark": "bench_vs_peft", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "peft": peft.__version__, "clock": args.clock, "threads": torch.get_num_threads(), "hidden": hidden, "layers": layers, "mlp": mlp,
            "lora_r": r, "matrices": n_matrices, "k": TOP_K, "epsilon": EPSILON,
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "check_pass": agree, "mismatched": mismatched, "rows": rows, "warm_times": warm_times, "warm_times_no_read_ahead": sequential_times,
            "per_layer": {k: {"peft": peft_counts.get(k), "intrudim": v, "margin": margins[k]} for k, v in ours.items()},
        }, indent=2) + "\n")  # fmt: skip
        print(f"load average at end: {[round(x, 2) for x in os.getloadavg()]}")
        print(f"wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

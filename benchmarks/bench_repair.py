"""intrudim repair vs peft's `reduce_intruder_dimension` on the same adapter: exactness and time.

Both scale the intruders' singular values by λ = 0.75 (k = 10, ε = 0.5): W' = W_t + (λ − 1)·Σ_{j∈I} σ_j u_j v_jᵀ.
The reference W' is computed densely in float64 (full SVDs of W₀ and W_t) in this script. For each module the
relative Frobenius distance of each tool's repaired weight from the reference is reported:
- peft's function truncates the repaired ΔW back to rank r (a third dense SVD per layer with intruders), so it
  lands away from W' by the part of the repair that does not fit in rank r;
- intrudim writes an adapter of rank r + |I| (rank_pattern/alpha_pattern) whose merge is W'.
Time: peft's function whole (in memory on a PeftModel) against ``intrudim.repair`` from disk to disk (reads the
adapter, structured top-k on a warm base SVD cache, writes the new adapter), same run.

A second part repairs a GPT-2 (Conv1D, fan_in_fan_out) adapter with both and runs a forward pass with each result.

    python benchmarks/bench_repair.py            # LLaMA hidden 1024, 4 layers, MLP 2816, r = 16 (28 matrices)
    python benchmarks/bench_repair.py --quick    # hidden 768, 2 layers
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_average  # noqa: E402
from bench_vs_peft import build, module_of, set_trained_b  # noqa: E402

OUT_DIR = Path("bench_out")
LAMBDA, TOP_K, EPSILON = 0.75, 10, 0.5


def reference_repair(W0: torch.Tensor, Wt: torch.Tensor) -> tuple[torch.Tensor, int]:
    U0, _, _ = torch.linalg.svd(W0.to(torch.float64), full_matrices=False)
    U, S, Vh = torch.linalg.svd(Wt.to(torch.float64), full_matrices=False)
    max_cos = (U[:, :TOP_K].T @ U0).abs().amax(dim=1)
    intruders = [j for j in range(TOP_K) if max_cos[j] < EPSILON]
    out = Wt.to(torch.float64).clone()
    for j in intruders:
        out += (LAMBDA - 1.0) * S[j] * torch.outer(U[:, j], Vh[j])
    return out, len(intruders)


def gpt2_part(work: Path) -> dict:
    """peft and intrudim on a GPT-2 Conv1D adapter: does each repaired adapter still run forward?"""
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from transformers import GPT2Config, GPT2Model

    import intrudim.repair as repair_module

    torch.manual_seed(0)
    model = GPT2Model(GPT2Config(vocab_size=256, n_embd=256, n_layer=2, n_head=4, n_positions=64)).eval()
    model.save_pretrained(work / "gpt2")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                                  fan_in_fan_out=True, init_lora_weights=False))  # fmt: skip
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(3.0)
    peft_model.save_pretrained(work / "gpt2_adapter")
    ids = torch.randint(0, 256, (1, 16))
    outcome = {}
    try:
        reduce_intruder_dimension(peft_model, top_k=TOP_K, threshold_epsilon=EPSILON, logging_sink=lambda *_: None)
        peft_model(input_ids=ids)
        outcome["peft"] = "forward ran"
    except Exception as exc:  # what a user meets
        outcome["peft"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    result = repair_module.repair(work / "gpt2", work / "gpt2_adapter", lam=LAMBDA, out=work / "gpt2_repaired",
                                  use_cache=False)  # fmt: skip
    try:
        fresh = GPT2Model.from_pretrained(str(work / "gpt2")).eval()
        PeftModel.from_pretrained(fresh, str(work / "gpt2_repaired" / "adapter"))(input_ids=ids)
        outcome["intrudim"] = f"forward ran ({result.total_intruders} intruders scaled)"
    except Exception as exc:
        outcome["intrudim"] = f"{type(exc).__name__}: {exc}"
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="hidden 768, 2 layers")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the warm intrudim repair")
    args = parser.parse_args()
    hidden, layers, mlp = (768, 2, 2048) if args.quick else (1024, 4, 2816)
    r = 16
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import peft
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from peft.tuners.lora.layer import LoraLayer

    import intrudim.repair as repair_module

    print(f"torch {torch.__version__}, peft {peft.__version__}, {torch.get_num_threads()} threads; LLaMA hidden={hidden} "
          f"layers={layers} MLP={mlp}, LoRA r={r}; λ={LAMBDA}, k={TOP_K}, ε={EPSILON}; load average {load_average()}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="intrudim_bench_repair_"))
    try:
        model, lora_config, get_peft_model = build(hidden, layers, mlp, r, seed=0)
        model.save_pretrained(work / "base")
        peft_model = get_peft_model(model, lora_config)
        set_trained_b(peft_model, seed=1)
        peft_model.save_pretrained(work / "adapter")
        layers_by_name = {module_of(n): m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
        W0 = {n: m.get_base_layer().weight.data.clone() for n, m in layers_by_name.items()}
        Wt = {n: W0[n] + m.get_delta_weight("default") for n, m in layers_by_name.items()}

        t0 = time.perf_counter()
        reduce_intruder_dimension(peft_model, top_k=TOP_K, threshold_epsilon=EPSILON, mitigation_lambda=LAMBDA,
                                  logging_sink=lambda *_: None)  # fmt: skip
        t_peft = time.perf_counter() - t0
        W_peft = {n: W0[n] + m.get_delta_weight("intruder_reduced") for n, m in layers_by_name.items()}

        cache = work / "cache"
        t0 = time.perf_counter()
        repair_module.repair(work / "base", work / "adapter", lam=LAMBDA, out=work / "cold", cache_dir=cache)
        t_cold = time.perf_counter() - t0
        warm_times = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            result = repair_module.repair(work / "base", work / "adapter", lam=LAMBDA, out=work / f"warm{i}", cache_dir=cache)
            warm_times.append(time.perf_counter() - t0)
        t_warm = sorted(warm_times)[len(warm_times) // 2]

        from peft import PeftModel
        from transformers import LlamaForCausalLM

        fresh = LlamaForCausalLM.from_pretrained(str(work / "base"))
        ours = PeftModel.from_pretrained(fresh, str(work / "warm0" / "adapter"))
        ours_layers = {module_of(n): m for n, m in ours.named_modules() if isinstance(m, LoraLayer)}
        rows = []
        for name in sorted(layers_by_name, key=lambda s: [int(p) if p.isdigit() else p for p in s.split(".")]):
            ref, n = reference_repair(W0[name], Wt[name])
            W_ours = W0[name].to(torch.float64) + ours_layers[name].get_delta_weight("default").to(torch.float64)
            norm = float(torch.linalg.matrix_norm(ref))
            rows.append({"module": name, "intruders": n,
                         "peft_rel_error": float(torch.linalg.matrix_norm(W_peft[name].to(torch.float64) - ref)) / norm,
                         "intrudim_rel_error": float(torch.linalg.matrix_norm(W_ours - ref)) / norm})  # fmt: skip
        with_intruders = [row for row in rows if row["intruders"]]
        print(f"\n{len(rows)} modules, {len(with_intruders)} with intruders ({sum(r['intruders'] for r in rows)} in all; "
              f"intrudim found {result.total_intruders})")  # fmt: skip
        print("\n| module | intruders | peft ‖W'−W'_ref‖/‖W'_ref‖ | intrudim |")
        print("|---|---|---|---|")
        for row in with_intruders:
            print(f"| {row['module']} | {row['intruders']} | {row['peft_rel_error']:.2e} | {row['intrudim_rel_error']:.2e} |")
        worst = {k: max(row[k] for row in rows) for k in ("peft_rel_error", "intrudim_rel_error")}
        print(f"\nworst relative error over all modules: peft {worst['peft_rel_error']:.2e}, "
              f"intrudim {worst['intrudim_rel_error']:.2e} (goal ≤ 1e-4)")  # fmt: skip
        print("\n| method | seconds | vs peft |")
        print("|---|---|---|")
        for label, seconds in (("peft reduce_intruder_dimension (in memory)", t_peft),
                               ("intrudim repair, cold cache (disk to disk)", t_cold),
                               (f"intrudim repair, warm cache (median of {args.repeats})", t_warm)):  # fmt: skip
            print(f"| {label} | {seconds:.2f} | {t_peft / seconds:.1f}× |")
        gpt2 = gpt2_part(work)
        print(f"\nGPT-2 Conv1D adapter, forward after repair: peft → {gpt2['peft']}; intrudim → {gpt2['intrudim']}")
        OUT_DIR.mkdir(exist_ok=True)
        (OUT_DIR / "bench_repair.json").write_text(json.dumps({
            "quick": args.quick, "threads": torch.get_num_threads(), "peft_seconds": t_peft, "intrudim_cold_seconds": t_cold,
            "intrudim_warm_seconds": t_warm, "warm_times": warm_times, "rows": rows, "worst": worst, "gpt2": gpt2,
            "load_average_end": load_average(),
        }, indent=2) + "\n")  # fmt: skip
        print(f"load average at end: {load_average()}; wrote {OUT_DIR / 'bench_repair.json'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Repair a LoRA adapter's intruder dimensions, then compare intruders and forgetting before and after.

The adapter is loaded as a ``PeftModel`` and repaired in memory: ``intrudim.repair(model, lam=λ)`` scales each
intruder's singular value by λ (0 removes its direction, 1 changes nothing; the paper uses 0.75) and adds the
exact repaired adapter to the model as "repaired", beside the original "default". Both are analysed (intruders)
and scored on pre-training-like text (forgetting: TUNED's loss minus BASE's, with a paired 95% interval; for a
causal LM, the next-token loss on the embedded Wikipedia sample). ``--save DIR`` saves both adapters
(``DIR/repaired`` is what ``intrudim repair BASE ADAPTER --out ...`` writes as ``adapter/``).

    python examples/repair_and_compare.py      # SmolLM2 and a planted adapter: minutes on a CPU, more the first time
    python examples/repair_and_compare.py --base org/base-model --adapter org/my-lora --lam 0.5 --save repaired/

Without ``--adapter``, one with known intruders is planted: in every other layer, a rank-1 update twice as large
as the weight's top singular value, in a random (so new) direction. On files instead of a model in memory:
``intrudim.repair(BASE, ADAPTER, lam=0.5, out="repaired/")`` writes the adapter, repair.json and report.html.
"""

from __future__ import annotations

import argparse

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import intrudim
from intrudim.models.references import resolve_model_folder

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--base", default="smollm2", help="a causal LM: embedded name, folder or Hub id")
parser.add_argument("--adapter", default=None, help="a LoRA adapter of BASE: folder or Hub id (default: planted)")
parser.add_argument("--lam", type=float, default=0.0, help="scale of the intruders' singular values (paper: 0.75)")
parser.add_argument("--text", default="wiki", help="forgetting text: wiki, news, a .txt file or a folder")
parser.add_argument("--max-tokens", type=int, default=4000, help="tokens of text scored (more: a tighter CI)")
parser.add_argument("--save", default=None, help="save both adapters here (save_pretrained)")
args = parser.parse_args()

base = AutoModelForCausalLM.from_pretrained(resolve_model_folder(args.base))  # embedded name, folder or Hub id
if args.adapter:
    model = PeftModel.from_pretrained(base, args.adapter)
else:  # plant intruders: ΔW = s·B·A of rank 1 with ‖ΔW‖₂ = 2·σ₁(W₀), in layers 0, 2, 4, ...
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(r=1, lora_alpha=2, target_modules="all-linear", init_lora_weights=False))
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_B", {}):
            layer = next((int(part) for part in name.split(".") if part.isdigit()), 0)
            sigma1 = torch.linalg.matrix_norm(module.get_base_layer().weight.detach(), 2)
            size = 2 * sigma1 if layer % 2 == 0 else 0  # the other layers' updates: zero
            delta = torch.linalg.matrix_norm(module.get_delta_weight("default").detach(), 2)
            module.lora_B["default"].weight.data *= size / delta

before = intrudim.analyze(model)  # the active adapter "default"; W₀ is the weight inside each LoRA layer
repair = intrudim.repair(model, lam=args.lam)  # adds the adapter "repaired"
after = intrudim.analyze(model, adapter_name="repaired")
print("\n".join(repair.summary_lines()))

print(f"\n{'adapter':9s} {'intruders':>9s} {'matrices':>8s} {'BASE loss':>9s} {'TUNED loss':>10s} {'forgetting':>10s}  95% CI")
for name, analysis in (("default", before), ("repaired", after)):
    measured = intrudim.forgetting(model, adapter_name=name, text=args.text, max_tokens=args.max_tokens)
    matrices = sum(1 for m in analysis.matrices if m.intruders)
    print(f"{name:9s} {analysis.total_intruders:9d} {matrices:8d} {measured.base.loss:9.4f} "
          f"{measured.tuned.loss:10.4f} {measured.delta:+10.4f}  [{measured.ci95[0]:+.4f}, {measured.ci95[1]:+.4f}]")
print(f"(λ = {args.lam}; k = {before.k}, ε = {before.epsilon}; next-token loss in nats/token on {measured.tokens} "
      f"tokens of '{args.text}'; forgetting = TUNED − BASE: lower is better)")

if args.save:
    model.save_pretrained(args.save)  # the original adapter in args.save, the repaired one in args.save/repaired
    print(f"saved: {args.save} (default) and {args.save}/repaired")

"""The adapters of the newcomer session (issue "What a user sees"): three plain-peft LoRA adapters on the embedded
SmolLM2, as a user trains them outside intrudim: r=1 and r=2 at η = 1e-2, r=8 at η = 1e-3, 60 steps of batch 8 on
arithmetic lines, the loss over the whole line. ~10 minutes on 2 cores.

    python benchmarks/newcomer_adapters.py OUT        # writes OUT/adapters/r1, r2, r8
    bash benchmarks/newcomer_session.sh OUT           # then every verb on them, output in OUT/out/
"""

import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from intrudim.models.references import resolve_model_folder

out = Path(sys.argv[1] if len(sys.argv) > 1 else "newcomer")
base = resolve_model_folder("smollm2", role="base", what="BASE")
tokenizer = AutoTokenizer.from_pretrained(base)
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
texts = [f"Q: what is {a} plus {b}? A: {a + b}." for a in range(20) for b in range(20)]
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
for r, lr in ((1, 1e-2), (2, 1e-2), (8, 1e-3)):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(60):
        batch = tokenizer([texts[(step * 8 + i) % len(texts)] for i in range(8)], return_tensors="pt", padding=True)
        loss = model(**batch, labels=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0:
            print(f"r={r} step {step} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out / "adapters" / f"r{r}")
print(f"adapters in {out / 'adapters'}")

"""Track intruder dimensions live while a transformers ``Trainer`` fine-tunes a causal LM with LoRA (Fig. 7).

One line added to an ordinary training script, ``IntruderCallback(every_n_steps=N).attach(trainer)``, analyses
the LoRA layers every N steps (from the factors: no merge, no copy), logs ``intrudim/intruders`` and friends into
the Trainer's logs (TensorBoard, W&B, ``trainer.state.log_history``), and writes ``OUT/intrudim_timeline.json``
and, at the end, ``OUT/intrudim_intruders.png``. Here the model learns arithmetic lines ("17 + 25 = 42") with LoRA
of rank 1 at a high learning rate (α·η = 2e-2, as in docs/repair.md's science check), the regime in which intruders
appear; put your own model, data and arguments instead.

    python examples/track_trainer_run.py                           # embedded SmolLM2, 100 steps: minutes on a CPU
    python examples/track_trainer_run.py --model org/base-model --steps 200 --every 20 --out run/

A TRL ``SFTTrainer`` takes the same line: ``IntruderCallback(every_n_steps=50).attach(sft_trainer)``.
"""

from __future__ import annotations

import argparse
import random

from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from intrudim.integrations import IntruderCallback
from intrudim.models.references import resolve_model_folder

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default="smollm2", help="a causal LM: embedded name, folder or Hub id")
parser.add_argument("--steps", type=int, default=100, help="training steps")
parser.add_argument("--every", type=int, default=20, help="analyse every N steps (and at the end)")
parser.add_argument("--rank", type=int, default=1, help="LoRA rank (low ranks grow more intruders)")
parser.add_argument("--lr", type=float, default=1e-2, help="learning rate")
parser.add_argument("--out", default="trainer_out", help="the Trainer's output_dir")
args = parser.parse_args()

folder = resolve_model_folder(args.model)  # an embedded name, a local folder or a Hub id, as every verb takes
tokenizer = AutoTokenizer.from_pretrained(folder)
tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder), LoraConfig(
    r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear", task_type="CAUSAL_LM"))

rng = random.Random(0)
lines = [f"{a} + {b} = {a + b}" for a, b in ((rng.randint(0, 99), rng.randint(0, 99)) for _ in range(512))]
data = Dataset.from_dict({"text": lines}).map(lambda row: tokenizer(row["text"]), remove_columns=["text"])

training = TrainingArguments(output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=8,
                             learning_rate=args.lr, lr_scheduler_type="constant", logging_steps=args.every,
                             save_strategy="no", report_to="none", seed=0, disable_tqdm=True)
trainer = Trainer(model=model, args=training, train_dataset=data,
                  data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
callback = IntruderCallback(every_n_steps=args.every).attach(trainer)  # the one line
trainer.train()

print(f"\nintruder dimensions over training (k=10, ε=0.5; {len(callback.timeline)} analyses)")
print(f"{'step':>6s} {'intruders':>9s} {'energy %':>9s} {'max pressure':>12s}  by module type")
for record in callback.timeline:
    types = ", ".join(f"{name} {n}" for name, n in record["by_module_type"].items() if n) or "-"
    print(f"{record['step']:6d} {record['total_intruders']:9d} {100 * record['energy_share']:9.3f} "
          f"{record['max_pressure'] or float('nan'):12.3f}  {types}")
logged = [entry["intrudim/intruders"] for entry in trainer.state.log_history if "intrudim/intruders" in entry]
print(f"logged to the Trainer: intrudim/intruders = {logged}")
print(f"timeline: {args.out}/intrudim_timeline.json\nfigure: {args.out}/intrudim_intruders.png")

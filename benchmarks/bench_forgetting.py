"""`forgetting` on a causal LM: tokens/s and peak RSS, batched windows vs a one-window-per-pass loop (issue 13, "Speed").

Runs ``measure_forgetting(BASE, ADAPTER)`` end to end (text → tokens → BASE scored → adapter merged into the
same model in place → TUNED scored → bootstrap) and reports tokens/s of the scoring and the process's peak
resident memory (the whole run, model loading included: one model is in memory at a time). Then, in the same
run, the naive reference: the same windows scored one per forward pass (batch 1); both must agree to 1e-5.

BASE is a small random LLaMA (4 layers, 256 wide, the MiniLM tokenizer) by default, or the embedded SmolLM2-135M
with ``--smollm2`` (converted once into the intrudim cache). ADAPTER is a random LoRA r=4 on q/v made with peft.

    python benchmarks/bench_forgetting.py [--smollm2] [--max-tokens 4096] [--seq-len 128] [--threads 1]

Writes bench_out/bench_forgetting.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _common import limit_threads, load_average

from intrudim.evaluate.forgetting import ForgettingProbe, measure_forgetting
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.evaluate.perplexity import causal_lm_window_losses

OUT_DIR = Path("bench_out")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def small_llama(folder: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from intrudim.models.embedded import embedded_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def random_adapter(base: Path, folder: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.01 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(folder))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="BASE = the embedded SmolLM2-135M (default: small LLaMA)")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--naive-windows", type=int, default=8, help="windows scored by the batch-1 reference")
    parser.add_argument("--text", default="news")
    parser.add_argument("--threads", type=int, default=None, help="pin torch/BLAS threads (default: all cores)")
    args = parser.parse_args()
    load_start = load_average()
    with tempfile.TemporaryDirectory() as tmp, limit_threads(args.threads):
        if args.smollm2:
            from intrudim.models.references import resolve_model_folder

            base = resolve_model_folder("smollm2")
        else:
            base = small_llama(Path(tmp) / "llama")
        adapter = random_adapter(base, Path(tmp) / "adapter")
        rss_before = peak_rss_mib()  # the adapter was made with a second copy of the model: report both
        config = ForgettingConfig(text=args.text, max_tokens=args.max_tokens, seq_len=args.seq_len, batch_size=args.batch_size)
        started = time.perf_counter()
        result = measure_forgetting(base, adapter, config)
        wall = time.perf_counter() - started
        rss_run = peak_rss_mib()
        data = result.to_json()

        probe = ForgettingProbe.prepare(base, args.text, config)
        model = probe.load_base_model()
        windows = probe.inputs["windows"][: args.naive_windows]
        t0 = time.perf_counter()
        batched = causal_lm_window_losses(model, windows, batch_size=args.batch_size)
        t1 = time.perf_counter()
        naive = causal_lm_window_losses(model, windows, batch_size=1)
        t2 = time.perf_counter()
    parameters = sum(p.numel() for p in model.parameters())
    error = float((batched - naive).abs().max())
    tokens_ref = windows.numel()
    row = {
        "base": "smollm2" if args.smollm2 else "small LLaMA 4×256", "parameters": parameters,
        "fp32_weights_mib": parameters * 4 / 2**20, "tokens": data["tokens"], "windows": data["sequences"],
        "seq_len": args.seq_len, "batch_size": args.batch_size, "end_to_end_wall_s": wall, "seconds": data["seconds"],
        "scoring_tokens_per_s": data["tokens_per_second"], "peak_rss_mib_before_run": rss_before,
        "peak_rss_mib_after_run": rss_run, "base_loss": data["base"]["loss"], "tuned_loss": data["tuned"]["loss"],
        "delta": data["delta"], "ci95": data["ci95"],
        "reference_windows": int(windows.shape[0]), "reference_batched_tokens_per_s": tokens_ref / (t1 - t0),
        "reference_naive_tokens_per_s": tokens_ref / (t2 - t1), "ratio": (t2 - t1) / (t1 - t0),
        "max_abs_difference": error,
    }  # fmt: skip
    print(f"forgetting on {row['base']} ({parameters / 1e6:.1f}M parameters, fp32 {row['fp32_weights_mib']:.0f} MiB), "
          f"{row['tokens']} tokens in {row['windows']} windows of {args.seq_len}, threads={args.threads or 'default'}")  # fmt: skip
    print(f"  end to end {wall:.1f} s; scoring {row['scoring_tokens_per_s']:.0f} tokens/s (BASE and TUNED); "
          f"seconds: {data['seconds']}")  # fmt: skip
    print(f"  peak RSS {rss_run:.0f} MiB (before the run, after making the adapter: {rss_before:.0f} MiB)")
    print(f"  loss BASE {row['base_loss']:.4f}, TUNED {row['tuned_loss']:.4f}, delta {row['delta']:+.4f} "
          f"CI [{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]")  # fmt: skip
    print(f"  reference on {row['reference_windows']} windows: batch {args.batch_size} "
          f"{row['reference_batched_tokens_per_s']:.0f} tokens/s vs one window a pass "
          f"{row['reference_naive_tokens_per_s']:.0f} tokens/s: ratio {row['ratio']:.2f}×; max |diff| {error:.1e}")  # fmt: skip
    assert error < 1e-5, "batched and one-window-per-pass losses disagree"
    OUT_DIR.mkdir(exist_ok=True)
    payload = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
               "load_average": {"start": load_start, "end": load_average()}, "rows": [row]}  # fmt: skip
    (OUT_DIR / "bench_forgetting.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

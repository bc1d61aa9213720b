"""MLM pseudo-loss (Salazar et al. 2020): batched masked copies vs the naive one-mask-per-pass loop (issue 13, "Speed").

The pseudo-loss of a window of L tokens needs L forward passes, each with one token masked. The naive
reference runs them one at a time (batch 1, full logits over every position); intrudim runs the masked
copies of consecutive windows as batches and sends only the masked position of each copy through the
vocabulary projection. Both are timed on the same windows of a small random BertForMaskedLM (the MiniLM
tokenizer's 30,522-word vocabulary; weights do not change the speed) and must agree to 1e-5.
Goal: ≥ 5× tokens/s.

    python benchmarks/bench_pseudo_loss.py [--layers 4] [--hidden 256] [--seq-len 64] [--windows 4] [--threads 1 --clock cpu]
    python benchmarks/bench_pseudo_loss.py --device cuda --windows 16 --seq-len 128

Writes bench_out/bench_pseudo_loss.json.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from _common import add_timing_arguments, limit_threads, load_average, timed

from intrudim.evaluate.pseudo_loss import naive_pseudo_log_likelihood_losses, pseudo_log_likelihood_losses

OUT_DIR = Path("bench_out")
VOCAB = 30522  # MiniLM / BERT-base uncased WordPiece
CLS, SEP, MASK = 101, 102, 103


def windows(count: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """(count, seq_len + 2): [CLS] + news-text tokens (or random ids without gensim) + [SEP]."""
    try:
        from transformers import AutoTokenizer

        from intrudim.evaluate.text import load_text
        from intrudim.models.embedded import embedded_model_path

        tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_path("minilm")))
        ids = tokenizer(" ".join(load_text("news").paragraphs[:40]), add_special_tokens=False)["input_ids"]
        body = torch.tensor(ids[: count * seq_len]).view(count, seq_len)
    except Exception:  # the benchmark only needs token ids
        body = torch.randint(1000, VOCAB, (count, seq_len), generator=generator)
    return torch.cat([torch.full((count, 1), CLS), body, torch.full((count, 1), SEP)], dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both paths run there)")
    add_timing_arguments(parser)
    args = parser.parse_args()
    from transformers import BertConfig, BertForMaskedLM

    load_start = load_average()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                        max_position_embeddings=max(512, args.seq_len + 2))  # fmt: skip
    model = BertForMaskedLM(config).eval().to(args.device)
    sequences = windows(args.windows, args.seq_len, torch.Generator().manual_seed(0)).to(args.device)
    positions = torch.arange(1, args.seq_len + 1)
    tokens = args.windows * args.seq_len
    with limit_threads(args.threads):
        batched_time, batched = timed(
            lambda: pseudo_log_likelihood_losses(model, sequences, positions, MASK, batch_size=args.batch_size,
                                                 device=args.device),
            args.repeats,
        )
        naive_time, naive = timed(lambda: naive_pseudo_log_likelihood_losses(model, sequences, positions, MASK), args.repeats)
    error = float((batched - naive).abs().max())
    clock = args.clock
    row = {
        "model": f"BertForMaskedLM {args.layers}×{args.hidden}, vocab {VOCAB}", "windows": args.windows,
        "seq_len": args.seq_len, "tokens": tokens, "batch_size": args.batch_size,
        "batched_wall_s": batched_time["wall"], "batched_cpu_s": batched_time["cpu"],
        "naive_wall_s": naive_time["wall"], "naive_cpu_s": naive_time["cpu"],
        "batched_tokens_per_s": tokens / batched_time[clock], "naive_tokens_per_s": tokens / naive_time[clock],
        "ratio": naive_time[clock] / batched_time[clock], "max_abs_difference": error,
        "pseudo_loss": float(batched.mean()), "device": args.device,
    }  # fmt: skip
    print(f"pseudo-loss on {row['model']}, {args.windows} windows × {args.seq_len} tokens ({clock} clock, "
          f"threads={args.threads or 'default'}, {args.device})")  # fmt: skip
    print(f"  batched ({args.batch_size} masked copies a pass): {row['batched_tokens_per_s']:9.1f} tokens/s")
    print(f"  naive (one mask per pass):               {row['naive_tokens_per_s']:9.1f} tokens/s")
    print(f"  ratio: {row['ratio']:.1f}×  (goal ≥ 5×)   max |batched − naive| = {error:.2e} (must be < 1e-5)")
    assert error < 1e-5, "batched and naive pseudo-losses disagree"
    OUT_DIR.mkdir(exist_ok=True)
    payload = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "clock": clock,
               "threads": args.threads, "load_average": {"start": load_start, "end": load_average()}, "rows": [row]}  # fmt: skip
    (OUT_DIR / "bench_pseudo_loss.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

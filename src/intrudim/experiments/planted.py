"""Planted test subjects with a known answer: a real PEFT LoRA adapter with rank-1 intruders, and a
full-fine-tuning-like dense perturbation (no intruders).

Used by `make demo` (until the `demo` verb exists) and by the tests. The adapter is created and saved by
``peft`` itself, so it exercises the same files a user's adapter would.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from intrudim.models.loading import is_causal_lm, load_bare_model, load_causal_lm_alone
from intrudim.models.references import resolve_model_folder


def _load_model(base: str | Path) -> torch.nn.Module:
    """BASE (an embedded name, a model folder, a run dir, a Trainer checkpoint or a Hub id): a causal LM as one (so
    that the adapter's keys are those ``PeftModel.from_pretrained(AutoModelForCausalLM...)`` loads), any other model
    without a head."""
    folder = resolve_model_folder(base, role="base", what="BASE")
    if is_causal_lm(folder):
        return load_causal_lm_alone(folder)
    return load_bare_model(folder)


def build_planted_adapter(
    base: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 1,
    strength: float = 1.5,
    weak_strength: float = 0.5,
    target_modules: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """Save a PEFT LoRA adapter whose update in every other layer is a random rank-``rank`` direction with
    singular value ``strength``·σ₁(W₀) (an intruder at rank 1), and ``weak_strength`` times the median singular value
    elsewhere (too small to enter the top-k: no intruder expected).
    """
    from peft import LoraConfig, get_peft_model

    model = _load_model(base)
    targets = target_modules or ["query", "key", "value", "dense", "q_proj", "k_proj", "v_proj", "o_proj",
                                 "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc"]  # fmt: skip
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in targets if t in present]
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        W = module.get_base_layer().weight.detach().to(torch.float64)
        if module.fan_in_fan_out:
            W = W.T
        sigma = torch.linalg.svdvals(W)
        layer = next((int(p) for p in name.split(".") if p.isdigit()), 0)
        # Strong: above σ₁, so the new direction takes rank 1. Weak: well inside the bulk of the spectrum.
        target = strength * float(sigma[0]) if layer % 2 == 0 else weak_strength * float(sigma[len(sigma) // 2])
        out_dim, in_dim = W.shape
        B = torch.randn(out_dim, rank, generator=generator, dtype=torch.float64)
        A = torch.randn(rank, in_dim, generator=generator, dtype=torch.float64)
        B, _ = torch.linalg.qr(B)
        Aq, _ = torch.linalg.qr(A.T)
        scale = module.scaling["default"]
        # ΔW = scale·B·A with singular values all equal to `target`.
        factor = math.sqrt(target / scale)
        module.lora_B["default"].weight.data = (B * factor).to(module.lora_B["default"].weight.dtype)
        module.lora_A["default"].weight.data = (Aq.T * factor).to(module.lora_A["default"].weight.dtype)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def build_dense_perturbation(base: str | Path, out_dir: str | Path, *, relative_size: float = 0.01, seed: int = 0) -> Path:
    """Save a copy of BASE with every block matrix nudged by dense noise of ``relative_size``·‖W‖ (full-FT-like)."""
    from intrudim.weights.selection import MatrixSelection

    model = _load_model(base)
    generator = torch.Generator().manual_seed(seed)
    selection = MatrixSelection()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if selection.selects(name, tuple(param.shape)):
                noise = torch.randn(param.shape, generator=generator)
                param.add_(noise * (relative_size * param.norm() / noise.norm()))
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write planted test subjects for intrudim.")
    parser.add_argument("base", help="base model directory or 'minilm'")
    parser.add_argument("out", help="output directory")
    parser.add_argument("--kind", choices=["adapter", "dense"], default="adapter")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "adapter":
        path = build_planted_adapter(args.base, args.out, rank=args.rank, seed=args.seed)
    else:
        path = build_dense_perturbation(args.base, args.out, seed=args.seed)
    print(path)


if __name__ == "__main__":
    main()

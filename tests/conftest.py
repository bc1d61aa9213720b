"""Shared fixtures: tiny random models (BERT, LLaMA, GPT-2 Conv1D) with decaying spectra, saved to disk,
and an independent dense reference for intruder counts (full torch.linalg.svd in float64)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as intrudim sets it (intrudim.threads), before torch loads
if "INTRUDIM_CACHE" not in os.environ:  # every verb's default cache: a fresh one per test session, never ~/.cache
    import tempfile

    os.environ["INTRUDIM_CACHE"] = tempfile.mkdtemp(prefix="intrudim-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


def dense_reference(W0: torch.Tensor, Wt: torch.Tensor, k: int, epsilon: float) -> dict:
    """Independent slow reference (Sec. 3, Fig. 4): full SVDs of W₀ and W_t in float64, left vectors,
    |cos| against every base vector, top-k."""
    U0, _, _ = torch.linalg.svd(W0.to(torch.float64), full_matrices=False)
    Ut, St, _ = torch.linalg.svd(Wt.to(torch.float64), full_matrices=False)
    max_cos = (Ut[:, :k].T @ U0).abs().max(dim=1).values
    ranks = [j + 1 for j in range(k) if max_cos[j] < epsilon]
    return {"max_cos": max_cos, "ranks": ranks, "count": len(ranks), "sigma": St[:k]}


def decay_spectrum_(model: torch.nn.Module, seed: int = 0, decay: float = 0.8) -> None:
    """Give every 2-D weight a random orthogonal basis and a geometric spectrum σ_i = decay^i (in place)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim != 2:
                continue
            m, n = param.shape
            p = min(m, n)
            U, _ = torch.linalg.qr(torch.randn(m, p, generator=generator, dtype=torch.float64))
            V, _ = torch.linalg.qr(torch.randn(n, p, generator=generator, dtype=torch.float64))
            sigma = decay ** torch.arange(p, dtype=torch.float64) * (1 + 0.05 * torch.rand(p, generator=generator, dtype=torch.float64))
            sigma, _ = torch.sort(sigma, descending=True)
            param.copy_((U * sigma) @ V.T)


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=32)  # fmt: skip
    model = BertModel(config)
    decay_spectrum_(model, seed=1)
    return model


def tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    model = LlamaModel(config)
    decay_spectrum_(model, seed=2)
    return model


def tiny_gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=48, n_layer=2, n_head=4, n_positions=32)
    model = GPT2Model(config)
    decay_spectrum_(model, seed=3)
    return model


BUILDERS = {"bert": tiny_bert, "llama": tiny_llama, "gpt2": tiny_gpt2}
TARGETS = {
    "bert": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory) -> Path:
    """One INTRUDIM_CACHE for the tests that load the real embedded SmolLM2: its GGUF is converted once per session
    (~25 s on 2 cores), not once per module, and never into the user's ~/.cache."""
    return tmp_path_factory.mktemp("embedded_cache")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Each tiny architecture saved as an HF directory (config.json + model.safetensors)."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, build in BUILDERS.items():
        model = build()
        model.save_pretrained(str(root / name), safe_serialization=True)
        paths[name] = root / name
    return paths


def write_peft_adapter(
    base_dir: Path,
    arch: str,
    out_dir: Path,
    *,
    r: int = 2,
    lora_alpha: float | None = None,
    use_rslora: bool = False,
    targets: list[str] | None = None,
    strength: float = 1.0,
    seed: int = 0,
) -> Path:
    """A real adapter written by peft: random A and B, B scaled so that ‖s·B·A‖ ≈ strength·σ₁ on average."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir))
    config = LoraConfig(
        r=r, lora_alpha=lora_alpha if lora_alpha is not None else 2 * r, use_rslora=use_rslora,
        target_modules=targets or TARGETS[arch], fan_in_fan_out=(arch == "gpt2"), init_lora_weights=False,
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
        for module in peft_model.modules():
            if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
                delta = module.get_delta_weight("default").to(torch.float64)
                # Vary the strength per module so that some matrices get intruders and some do not.
                # log-uniform in [0.005, 2]·strength: about half the updates stay below σ₁₀ of the base.
                target = strength * float(torch.exp(torch.empty(1).uniform_(-5.3, 0.69, generator=generator)))
                module.lora_B["default"].weight.mul_(target / max(float(torch.linalg.matrix_norm(delta, 2)), 1e-12))
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def merged_state(base_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter merged into the base by peft itself (independent of intrudim's adapter reader)."""
    from peft import PeftModel
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(base_dir))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def base_state(base_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(base_dir / "model.safetensors"))


def train_saved_weights_(peft_model: torch.nn.Module, seed: int) -> None:
    """Stand-in for fully training the weights a peft model saves whole (``modules_to_save``): strong dense noise,
    3× each weight's std, on every 2-D one, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "modules_to_save" in name and param.ndim == 2:
                param.add_(3.0 * param.std() * torch.randn(param.shape, generator=generator))


def train_in_parallel(jobs: dict, cache_dir: Path, *, threads: int = 2, workers: int = 3) -> dict:
    """``{key: (TrainConfig, run_dir)}`` → ``{key: TrainResult}``: the runs of a science module trained at once in
    ``workers`` spawned processes, each with ``threads`` torch threads (intrudim.train.side_by_side, which the demo
    uses too).

    A run's result depends on its thread count (the order of float reductions), not on what else runs beside it:
    two SmolLM2 runs trained side by side wrote adapters bit for bit those of the same runs trained one after the
    other, in ~2/3 of the time (one 2-thread run keeps 2 cores ~70% busy: tokenising, loading, small kernels).
    """
    from intrudim.train.side_by_side import train_side_by_side

    return train_side_by_side(jobs, cache_dir, workers=workers, threads=threads, figures=False)


def same_to_rounding(a, b, rtol: float = 1e-5, atol: float = 1e-7, where: str = "") -> None:
    """``a`` and ``b`` (analysis JSON) are the same but for float rounding: every count, rank, name and shape equal,
    every float within ``rtol``/``atol`` (a matrix-major scan stacks the adapters' products: wider GEMMs sum in
    another order)."""
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert abs(a - b) <= atol + rtol * abs(b), (where, a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            same_to_rounding(a[key], b[key], rtol, atol, f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_to_rounding(x, y, rtol, atol, f"{where}[{i}]")
    else:  # a count, rank, name, shape, bool or None: exactly equal
        assert a == b, (where, a, b)

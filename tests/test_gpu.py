"""The GPU path (``--device cuda``): skipped on machines without CUDA (CI has none); run where one is lent.

Each test computes the same thing on the GPU and on the CPU (or a float64 dense SVD on the CPU) and compares:
the structured top-k by block Krylov on the GPU (``method="krylov"``; "auto" keeps ARPACK on the CPU), the cold
base SVD (Gram route), whole analyses of real PEFT adapters on
LLaMA and GPT-2's Conv1D (with and without the cache, and with a bf16 base), repair, and a short training run
whose tracked intruders must equal a CPU analysis of its final adapter.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import write_peft_adapter
from test_train import _config as _train_config
from test_train import tiny_bert, tiny_llama  # noqa: F401, F811  (fixtures: tiny models saved with a tokenizer)

from intrudim.spectral.intruders import intruder_ranks
from intrudim.spectral.structured import core_top_k, lora_core
from intrudim.spectral.svd import base_svd, thin_svd

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (the --device cuda path)"
)


def _gaussian(m: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(max(m, n))


@pytest.mark.parametrize("shape", [(700, 500), (500, 700)])
@pytest.mark.parametrize("r", [1, 16])
def test_krylov_core_top_k_on_cuda_equals_the_dense_float64_svd(shape, r):
    m, n = shape
    g = torch.Generator().manual_seed(m + r)
    W0 = _gaussian(m, n, seed=m + r)
    B = torch.randn(m, r, generator=g, dtype=torch.float64) / math.sqrt(m) * 4.0
    A = torch.randn(r, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    base = thin_svd(W0)
    base32 = type(base)(U=base.U.float(), S=base.S, Vh=base.Vh.float())  # as the cache stores them
    core = lora_core(base32, B, A, 1.0)
    ref = core_top_k(core, 10, method="dense")
    top = core_top_k(core, 10, method="krylov", device="cuda")
    assert top.S.device.type == "cpu"  # results come back to the CPU
    torch.testing.assert_close(top.S, ref.S, rtol=1e-12, atol=0)
    cos, ref_cos = top.max_abs_cosine(core.p), ref.max_abs_cosine(core.p)
    torch.testing.assert_close(cos, ref_cos, atol=1e-9, rtol=0)
    assert intruder_ranks(cos, 0.5) == intruder_ranks(ref_cos, 0.5)


@pytest.mark.parametrize("shape", [(900, 600), (600, 900), (800, 800)])
def test_base_svd_on_cuda_equals_lapack_on_the_cpu(shape):
    W = _gaussian(*shape, seed=sum(shape))
    ref = thin_svd(W)
    fast = base_svd(W.cuda())
    assert fast.U.device.type == "cuda"
    torch.testing.assert_close(fast.S.cpu(), ref.S, rtol=1e-10, atol=0)
    assert float(1 - (fast.U.cpu() * ref.U).sum(0).abs().min()) < 1e-8
    assert float(1 - (fast.Vh.cpu() * ref.Vh).sum(1).abs().min()) < 1e-8
    left = base_svd(W.cuda(), right_vectors=False)  # what the cache computes: no Vh for wide and square W
    assert (left.Vh is None) == (shape[0] <= shape[1])
    assert float(1 - (left.U.cpu() * ref.U).sum(0).abs().min()) < 1e-8


def _same_analysis(a, b) -> None:
    assert [m.name for m in a.matrices] == [m.name for m in b.matrices]
    for x, y in zip(a.matrices, b.matrices, strict=True):
        assert x.intruder_ranks == y.intruder_ranks, x.name
        assert x.singular_values == pytest.approx(y.singular_values, rel=1e-6, abs=1e-9), x.name
        assert x.max_abs_cos == pytest.approx(y.max_abs_cos, abs=1e-6), x.name


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_analyze_on_cuda_equals_the_cpu(tiny_models, tmp_path, arch):
    from intrudim import analyze

    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "adapter", r=4, strength=2.0, seed=3)
    cpu = analyze(tiny_models[arch], adapter, use_cache=False)
    assert sum(m.intruders for m in cpu.matrices) > 0
    _same_analysis(cpu, analyze(tiny_models[arch], adapter, use_cache=False, device="cuda"))
    cache = tmp_path / "cache"
    cold = analyze(tiny_models[arch], adapter, cache_dir=cache, device="cuda")
    warm = analyze(tiny_models[arch], adapter, cache_dir=cache, device="cuda")
    _same_analysis(cpu, cold)
    _same_analysis(cpu, warm)


def test_a_bf16_base_is_upcast_on_cuda(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    from intrudim import analyze

    base = tmp_path / "bf16"
    base.mkdir()
    for f in Path(tiny_models["llama"]).iterdir():
        if f.name != "model.safetensors":
            (base / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(Path(tiny_models["llama"]) / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, str(base / "model.safetensors"))
    adapter = write_peft_adapter(
        tiny_models["llama"], "llama", tmp_path / "adapter", r=4, strength=2.0, seed=3
    )
    cpu = analyze(base, adapter, use_cache=False)
    _same_analysis(cpu, analyze(base, adapter, use_cache=False, device="cuda"))


def test_repair_on_cuda_equals_the_cpu(tiny_models, tmp_path):
    from safetensors.torch import load_file

    from intrudim.repair import repair

    adapter = write_peft_adapter(
        tiny_models["llama"], "llama", tmp_path / "adapter", r=2, strength=2.0, seed=5
    )
    cpu = repair(tiny_models["llama"], adapter, lam=0.25, k=6, out=tmp_path / "cpu", use_cache=False)
    gpu = repair(
        tiny_models["llama"], adapter, lam=0.25, k=6, out=tmp_path / "gpu", use_cache=False, device="cuda"
    )
    assert cpu.total_intruders == gpu.total_intruders > 0
    a = load_file(str(tmp_path / "cpu" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "gpu" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    # factors of the same repaired matrix, up to the sign of each added direction: compare the products B·A
    for key in a:
        if "lora_A" in key:
            kb = key.replace("lora_A", "lora_B")
            torch.testing.assert_close(b[kb].double() @ b[key].double(), a[kb].double() @ a[key].double(),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip


def test_train_on_cuda_tracks_what_a_cpu_analysis_finds(tiny_llama, tmp_path):  # noqa: F811
    """A short LoRA run of a tiny LLaMA (with its tokenizer) trained on the GPU, intruders tracked there: the
    final count equals a CPU analysis of the written adapter."""
    from intrudim import analyze
    from intrudim.train.engine import train

    config = _train_config(tiny_llama, max_steps=8, objective="classification", lr=5e-2)
    result = train(config, tmp_path / "run", progress=False, figures=False, device="cuda")
    assert result.steps == 8 and result.final_intruders is not None
    found = analyze(tiny_llama, result.final_dir, use_cache=False)
    assert result.final_intruders == sum(m.intruders for m in found.matrices)


def test_one_process_trains_on_cuda_then_on_the_cpu_then_on_cuda(tiny_llama, tmp_path):  # noqa: F811
    """accelerate keeps one state per process; each run still gets the device it asked for (devices.make_accelerator)."""
    from accelerate.state import AcceleratorState

    from intrudim.train.engine import train

    config = _train_config(tiny_llama, max_steps=4, checkpoint_every=None, objective="classification")
    for i, device in enumerate(("cuda", "cpu", "cuda")):
        result = train(config, tmp_path / f"run{i}", progress=False, figures=False, device=device)
        assert result.steps == 4 and AcceleratorState().device.type == device


def test_a_resumed_run_on_cuda_equals_the_uninterrupted_one(tiny_bert, tmp_path):  # noqa: F811
    """Dropout on the GPU draws from CUDA's generators: a checkpoint saves and restores their state too (BERT has
    dropout; without that state the resumed run differed from the uninterrupted one on an H100)."""
    from safetensors.torch import load_file

    from intrudim.train.engine import train

    config = _train_config(tiny_bert, max_steps=10, checkpoint_every=4, eval_every=5, track_intruders=False)
    whole = train(config, tmp_path / "whole", progress=False, figures=False, device="cuda")

    def interrupt(step: int) -> None:
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "cut", progress=False, figures=False, device="cuda", on_step=interrupt)
    resumed = train(config, tmp_path / "cut", progress=False, figures=False, device="cuda", resume=True)
    assert resumed.steps == whole.steps == 10
    a = load_file(str(whole.final_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.final_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

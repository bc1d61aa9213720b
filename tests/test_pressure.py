"""Intruder pressure (beyond the paper, Sec. 5's toy model): σ₁(ΔW)/σ_k(W₀) and the alignment of ΔW's top
direction with the base's top-k space, per matrix, against a dense float64 reference."""

from __future__ import annotations

import pytest
import torch
from conftest import base_state, merged_state, write_peft_adapter

from intrudim.analyze import analyze

pytestmark = pytest.mark.parity


def _reference(W0: torch.Tensor, Wt: torch.Tensor, k: int) -> tuple[float, float, float]:
    W0, Wt = W0.to(torch.float64), Wt.to(torch.float64)
    U0, S0, _ = torch.linalg.svd(W0, full_matrices=False)
    Ud, Sd, _ = torch.linalg.svd(Wt - W0, full_matrices=False)
    return float(Sd[0]), float(Sd[0] / S0[k - 1]), float(torch.linalg.vector_norm(U0[:, :k].T @ Ud[:, 0]))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_pressure_and_alignment_equal_the_dense_reference(tiny_models, tmp_path, arch):
    adapter = write_peft_adapter(tiny_models[arch], arch, tmp_path / "a", r=2, strength=2.0, seed=5)
    k = 6
    lora = analyze(tiny_models[arch], adapter, k=k, use_cache=False)
    merged, base = merged_state(tiny_models[arch], adapter), base_state(tiny_models[arch])
    for m in lora.matrices:
        W0, Wt = base[m.name], merged[m.name]
        if m.transposed:
            W0, Wt = W0.T, Wt.T
        sigma1, pressure, alignment = _reference(W0, Wt, k)
        assert m.update_sigma1 == pytest.approx(sigma1, rel=1e-4), m.name  # peft merges in float32
        assert m.intruder_pressure == pytest.approx(pressure, rel=1e-4), m.name
        assert m.update_alignment == pytest.approx(alignment, abs=1e-3), m.name
    # the same numbers from the merged (dense) model
    dense = analyze(tiny_models[arch], merged_model_dir(tiny_models[arch], merged, tmp_path), k=k, use_cache=False)
    for a, b in zip(lora.matrices, dense.matrices, strict=True):
        assert a.intruder_pressure == pytest.approx(b.intruder_pressure, rel=1e-3), a.name
    # a high pressure with a new direction is what intruders look like: every matrix with an intruder in the
    # top k here has pressure > 1 (the planted updates are random, so their direction is new)
    assert all(m.intruder_pressure > 1 for m in lora.matrices if m.intruders)
    assert "intruder_pressure" in lora.to_csv().splitlines()[0]


def merged_model_dir(base_dir, merged, tmp_path):
    import shutil

    from safetensors.torch import save_file

    out = tmp_path / "merged"
    shutil.copytree(base_dir, out)
    save_file({k: v.contiguous() for k, v in merged.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_unchanged_model_has_zero_pressure(tiny_models):
    result = analyze(tiny_models["bert"], tiny_models["bert"], use_cache=False)
    assert {m.intruder_pressure for m in result.matrices} == {0.0}

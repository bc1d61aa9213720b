"""Memory that does not grow with the number of layers (issue 15): what is kept across matrices stays small.

No process RSS thresholds (allocator noise makes them flaky on tiny models): these tests check the two things
that grew — what a per-matrix result holds, and how much of a weight file stays mapped into the process after
its tensors were read (/proc/self/smaps: the resident pages of that one mapping, not the process's RSS).
benchmarks/bench_streaming.py and benchmarks/bench_scan_memory.py measure the peak RSS itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import merged_state, write_peft_adapter
from safetensors.torch import save_file

from intrudim.analyze import AnalyzeConfig, MatrixResult, analyze
from intrudim.weights.peft_adapter import LoraAdapter
from intrudim.weights.sources import open_weights


def leaves(value) -> list:
    """The scalars of a result's fields (lists, tuples and dicts opened up)."""
    if isinstance(value, dict):
        return [leaf for item in value.items() for part in item for leaf in leaves(part)]
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in leaves(item)]
    return [value]


def check_small_and_plain(m: MatrixResult, config: AnalyzeConfig) -> None:
    values = leaves([getattr(m, name) for name in m.__dataclass_fields__])
    kinds = {type(v) for v in values}
    assert not any(isinstance(v, torch.Tensor | np.ndarray | np.generic) for v in values), (m.name, kinds)
    assert kinds <= {str, int, float, bool, type(None)}, (m.name, kinds)
    # Sized by k and similarity_size, never by the matrix: 3 k-vectors, the k × n_sim heatmap, the sweeps.
    bound = config.k * (3 + config.similarity_size) + 2 * len(config.epsilons) + 2 * 8 + 40
    assert len(values) <= bound, (m.name, len(values), bound)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_matrix_results_hold_only_small_plain_values(tiny_models, tmp_path, arch):
    """After `analyze` (structured LoRA, dense, unchanged matrices) a MatrixResult keeps no tensor, array or
    singular vectors: only the numbers its outputs print, sized by k, never by the matrix."""
    base = tiny_models[arch]
    adapter = write_peft_adapter(base, arch, tmp_path / "a", r=2, seed=3, strength=1.5)
    merged = tmp_path / "merged.safetensors"
    save_file({k: v.contiguous() for k, v in merged_state(base, adapter).items()}, str(merged))
    config = AnalyzeConfig(k=4, k_sweep=True)
    for tuned in (adapter, merged, base):  # LoRA from factors; dense top-k; every matrix unchanged
        result = analyze(base, tuned, config, cache_dir=tmp_path / "cache")
        assert result.matrices
        for m in result.matrices:
            check_small_and_plain(m, config)
        json.dumps(result.to_json(include_similarity=True))  # and all of it serialises as it is


def mapped_resident_kib(path: Path) -> int | None:
    """Resident KiB of the mappings of ``path`` in this process (/proc/self/smaps), None off Linux."""
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        return None
    total, inside = 0, False
    target = str(path.resolve())
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and " ".join(fields[5:]) == target  # a mapping's header line
        elif inside and fields[0] == "Rss:":
            total += int(fields[1])
    return total


def write_wide_adapter(path: Path, modules: int = 8, dim: int = 4096, r: int = 16) -> Path:
    """An adapter of ``modules`` (dim × dim, rank r) float32 factors: 4 MiB of tensors at the defaults."""
    path.mkdir()
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(modules):
        prefix = f"base_model.model.layers.{i}.proj"
        tensors[f"{prefix}.lora_A.weight"] = torch.randn(r, dim, generator=g)
        tensors[f"{prefix}.lora_B.weight"] = torch.randn(dim, r, generator=g)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r}))
    return path


def test_adapter_factors_do_not_stay_mapped_after_they_are_read(tmp_path):
    """Reading every module's factors leaves (almost) nothing of the adapter file resident: a memory map kept
    open across reads made memory grow with the number of layers (issue 15)."""
    adapter_dir = write_wide_adapter(tmp_path / "adapter")
    weights = adapter_dir / "adapter_model.safetensors"
    adapter = LoraAdapter(adapter_dir)
    if mapped_resident_kib(weights) is None:
        pytest.skip("needs /proc/self/smaps (Linux)")
    checksums = []
    for module in sorted(adapter.modules):  # as `analyze` reads them: one module at a time, then dropped
        factors = adapter.factors(module)
        assert factors.A.shape == (16, 4096) and factors.B.shape == (4096, 16)
        checksums.append(float(factors.A.double().sum() + factors.B.double().sum()))  # every page read
        del factors
    size_kib = weights.stat().st_size // 1024
    assert mapped_resident_kib(weights) < size_kib // 8, (
        "the adapter's pages stay mapped after its factors were read and dropped"
    )
    from safetensors.torch import load_file  # the values read are the file's

    stored = load_file(str(weights))
    assert checksums == [
        float(stored[f"base_model.model.{m}.lora_A.weight"].double().sum() + stored[f"base_model.model.{m}.lora_B.weight"].double().sum())
        for m in sorted(adapter.modules)
    ]  # fmt: skip


def test_base_weights_do_not_stay_mapped_after_they_are_read(tmp_path):
    """The same for BASE, read one matrix at a time (DESIGN.md, "Streaming")."""
    g = torch.Generator().manual_seed(0)
    file = tmp_path / "model.safetensors"
    save_file({f"layers.{i}.proj.weight": torch.randn(512, 512, generator=g) for i in range(8)}, str(file))
    source = open_weights(file)
    if mapped_resident_kib(file) is None:
        pytest.skip("needs /proc/self/smaps (Linux)")
    for key in source.keys():
        assert float(source.load(key).double().sum()) != 0.0  # every page read, the tensor dropped
    assert mapped_resident_kib(file) < file.stat().st_size // 1024 // 8


def test_scan_drops_each_analysis_once_its_files_are_written(tiny_models, tmp_path):
    """A scan keeps no input's AnalysisResult (its per-matrix results) after writing that input's files and row,
    unless asked: memory does not grow with the number of inputs (issue 15)."""
    from intrudim.scan.running import scan

    base = tiny_models["llama"]
    adapters = [write_peft_adapter(base, "llama", tmp_path / f"a{i}", r=2, seed=i) for i in range(2)]
    result = scan(base, adapters, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert result.analyses == {}
    assert [row["error"] for row in result.rows] == [None, None]
    kept = scan(base, adapters, tmp_path / "out_kept", cache_dir=tmp_path / "cache", keep_analyses=True)
    assert sorted(kept.analyses) == [0, 1]
    for index, row in enumerate(kept.rows):
        on_disk = json.loads((tmp_path / "out_kept" / row["analysis"]).with_name("analysis.json").read_text())
        assert kept.analyses[index].total_intruders == on_disk["total_intruders"] == row["total_intruders"]

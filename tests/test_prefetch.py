"""Reading the next matrix ahead (issue 15, "Threads"): the same results as a plain sequential loop, errors of a
job read ahead raised with the same message when that job is reached, and at most one job's inputs read ahead."""

from __future__ import annotations

import json
import shutil
import threading
import weakref

import pytest
import torch
from conftest import merged_state, write_peft_adapter
from safetensors.torch import load_file, save_file

import intrudim.analysis.prefetch as prefetch
import intrudim.analysis.running as running
from intrudim.analysis.prefetch import read_ahead
from intrudim.analyze import AnalyzeConfig, analyze
from intrudim.errors import CorruptFileError, NonFiniteWeightsError


@pytest.fixture(autouse=True)
def no_read_ahead_override(monkeypatch):
    """The tests set READ_AHEAD themselves; a user's $INTRUDIM_READ_AHEAD must not decide for them."""
    monkeypatch.delenv(prefetch.READ_AHEAD_ENV, raising=False)


# --------------------------------------------------------------------------------------------------------------
# read_ahead itself


class Token:
    """A value whose live instances are counted (CPython frees it as soon as its last reference goes)."""

    alive = 0

    def __init__(self, item: int) -> None:
        self.item = item
        self.thread = threading.current_thread().name
        Token.alive += 1

    def __del__(self) -> None:
        Token.alive -= 1


@pytest.mark.parametrize("ahead", [0, 1, 2, 5])
def test_read_ahead_yields_every_item_in_order_and_holds_at_most_ahead_plus_one(ahead):
    Token.alive = 0
    most_alive = 0
    seen = []
    for token in read_ahead(list(range(7)), Token, ahead=ahead):
        most_alive = max(most_alive, Token.alive)
        seen.append((token.item, token.thread.startswith("intrudim-read")))
        del token
    assert [item for item, _ in seen] == list(range(7))
    assert all(in_background == (ahead > 0) for _, in_background in seen)  # read in the background thread
    assert most_alive <= ahead + 1, most_alive
    assert Token.alive == 0


def test_read_ahead_environment_variable_turns_the_background_thread_off(monkeypatch):
    monkeypatch.setenv(prefetch.READ_AHEAD_ENV, "0")
    threads = [token.thread for token in read_ahead(list(range(3)), Token)]
    assert threads == [threading.current_thread().name] * 3
    monkeypatch.setenv(prefetch.READ_AHEAD_ENV, "not a number")  # ignored: the default
    assert all(token.thread.startswith("intrudim-read") for token in read_ahead(list(range(3)), Token))


def test_read_ahead_raises_a_failed_read_when_its_item_is_reached_and_reads_nothing_after_it():
    reads: list[int] = []

    def read(item: int) -> int:
        reads.append(item)
        if item == 3:
            raise CorruptFileError(f"Cannot read tensor 'layer.{item}' from 'model.safetensors'.")
        return item

    got = []
    with pytest.raises(CorruptFileError, match=r"'layer\.3' from 'model\.safetensors'"):
        for value in read_ahead(list(range(8)), read, ahead=1):
            got.append(value)
    assert got == [0, 1, 2]
    assert reads == [0, 1, 2, 3]


def test_read_ahead_stops_reading_when_the_loop_stops_early():
    reads: list[int] = []
    for value in read_ahead(list(range(10)), lambda item: reads.append(item) or item, ahead=2):
        if value == 1:
            break
    # Item 3 was submitted when item 1 was yielded (cancelled if not started yet); nothing after it, and the
    # background thread has finished when the loop is left.
    assert reads in ([0, 1, 2], [0, 1, 2, 3]), reads
    assert not any(thread.name.startswith("intrudim-read") for thread in threading.enumerate())


# --------------------------------------------------------------------------------------------------------------
# analyze: the same numbers as a sequential loop


def run_both(monkeypatch, base, tuned, config, cache_root):
    """``analyze`` reading ahead (the default) and sequentially (READ_AHEAD = 0), each cold then warm."""
    documents = {}
    for ahead in (1, 0):
        monkeypatch.setattr(prefetch, "READ_AHEAD", ahead)
        cache = cache_root / f"cache_{ahead}"
        cold = analyze(base, tuned, config, cache_dir=cache)
        warm = analyze(base, tuned, config, cache_dir=cache)
        documents[ahead] = [
            (result.cache_hits, result.cache_misses, json.dumps(result.to_json(include_similarity=True)["matrices"]))
            for result in (cold, warm)
        ]
    return documents


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reading_ahead_gives_exactly_the_sequential_results(tiny_models, tmp_path, monkeypatch, arch):
    """Every count, σ, cosine and sweep equal to the last bit, cold and warm, for an adapter and a dense model."""
    base = tiny_models[arch]
    adapter = write_peft_adapter(base, arch, tmp_path / "a", r=2, seed=5, strength=1.5)
    merged = tmp_path / "merged.safetensors"
    save_file({k: v.contiguous() for k, v in merged_state(base, adapter).items()}, str(merged))
    config = AnalyzeConfig(k=4, k_sweep=True)
    for tuned in (adapter, merged):
        documents = run_both(monkeypatch, base, tuned, config, tmp_path / f"caches_{tuned.stem}")
        assert documents[1] == documents[0]
        (cold_hits, cold_misses, _), (warm_hits, warm_misses, _) = documents[1]
        assert cold_misses > 0 and warm_misses == 0 and warm_hits == cold_hits + cold_misses


def test_a_matrix_equal_to_the_one_before_still_hits_the_entry_that_one_stored(tiny_models, tmp_path, monkeypatch):
    """The next job's cache lookup runs before this job stores its SVD; a matrix with the same content as the one
    before must still count as a hit (and not be computed twice), as in the sequential loop."""
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    state = load_file(str(base / "model.safetensors"))
    prefix = "layers.0.self_attn."
    state[prefix + "q_proj.weight"] = state[prefix + "o_proj.weight"].clone()  # o_proj, q_proj: adjacent jobs
    save_file(state, str(base / "model.safetensors"))
    adapter = write_peft_adapter(base, "llama", tmp_path / "a", r=2, seed=1, targets=["o_proj", "q_proj"])
    documents = run_both(monkeypatch, base, adapter, AnalyzeConfig(k=4), tmp_path)
    assert documents[1] == documents[0]
    assert documents[1][0][:2] == (1, 3)  # 4 matrices, 3 distinct: one hit in the cold run


def test_reading_ahead_keeps_at_most_the_next_job_besides_the_current_one(tiny_models, tmp_path, monkeypatch):
    """Memory flat in layers (issue 15): while a matrix is analysed, at most one other job's W₀, factors and
    cached SVD are held."""
    base = tiny_models["llama"]
    adapter = write_peft_adapter(base, "llama", tmp_path / "a", r=2, seed=2)
    reads: list[weakref.ref] = []
    most = 0
    read_job, analyze_read = running.read_job, running.analyze_read

    def tracked_read(*args):
        read = read_job(*args)
        reads.append(weakref.ref(read))
        return read

    def tracked_analyze(*args):
        nonlocal most
        most = max(most, sum(1 for ref in reads if ref() is not None))
        return analyze_read(*args)

    monkeypatch.setattr(running, "read_job", tracked_read)
    monkeypatch.setattr(running, "analyze_read", tracked_analyze)
    result = analyze(base, adapter, k=4, cache_dir=tmp_path / "cache")
    assert len(result.matrices) == 14
    assert 1 <= most <= 2, most


# --------------------------------------------------------------------------------------------------------------
# analyze: errors of a job read ahead


def with_nan(path, key: str) -> None:
    state = load_file(str(path))
    state[key][0, 0] = float("nan")
    save_file(state, str(path))


@pytest.mark.parametrize("where", ["base", "adapter"])
def test_a_bad_matrix_read_ahead_fails_with_the_sequential_message(tiny_models, tmp_path, monkeypatch, where):
    """NaN in a late layer's W₀ or LoRA factor: the same error type and message, naming the file and key, whether
    that job was read ahead in the background or read when reached."""
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    adapter = write_peft_adapter(base, "llama", tmp_path / "a", r=2, seed=3)
    if where == "base":
        bad_key = "layers.1.mlp.up_proj.weight"
        with_nan(base / "model.safetensors", bad_key)
    else:
        bad_key = "base_model.model.layers.1.mlp.up_proj.lora_B.weight"
        with_nan(adapter / "adapter_model.safetensors", bad_key)
    messages = {}
    for ahead in (1, 0):
        monkeypatch.setattr(prefetch, "READ_AHEAD", ahead)
        with pytest.raises(NonFiniteWeightsError) as info:
            analyze(base, adapter, k=4, cache_dir=tmp_path / f"cache_{ahead}")
        messages[ahead] = str(info.value)
    assert messages[1] == messages[0]
    assert "layers.1.mlp.up_proj" in messages[1]
    assert str(base if where == "base" else adapter) in messages[1]


def test_analyze_job_alone_is_unchanged(tiny_models, tmp_path):
    """scan's matrix units call analyze_job one matrix at a time: the same result as analyze's loop."""
    from intrudim.analysis.jobs import analyze_job
    from intrudim.analysis.planning import open_inputs
    from intrudim.analysis.setup import open_cache
    from intrudim.threads import analysis_threads

    base = tiny_models["gpt2"]
    adapter = write_peft_adapter(base, "gpt2", tmp_path / "a", r=2, seed=4, strength=1.5)
    config = AnalyzeConfig(k=4)
    analyze(base, adapter, config, cache_dir=tmp_path / "cache")  # cold: fills the cache
    whole = analyze(base, adapter, config, cache_dir=tmp_path / "cache")  # warm, as the units below
    cache = open_cache(config, tmp_path / "cache", use_cache=True)
    with open_inputs(base, adapter, config) as inputs, analysis_threads():
        one_by_one = [analyze_job(inputs, job, cache, config) for job in inputs.jobs]
    assert [m.to_json(include_similarity=True) for m in one_by_one] == [
        m.to_json(include_similarity=True) for m in whole.matrices
    ]
    assert cache.hits == len(one_by_one) and cache.misses == 0


# --------------------------------------------------------------------------------------------------------------
# scan (in-process engine): the next matrix unit read ahead


def test_scan_reading_ahead_gives_the_sequential_rows_and_errors(tiny_models, tmp_path, monkeypatch):
    """Two adapters, one with NaN in a late factor: the same rows (counts, σ ratios, the bad one's error naming
    its key) and the same per-input analyses whether units are read ahead or not."""
    from intrudim.scan import scan

    base = tiny_models["llama"]
    good = write_peft_adapter(base, "llama", tmp_path / "adapters" / "good", r=2, seed=6, strength=1.5)
    bad = write_peft_adapter(base, "llama", tmp_path / "adapters" / "bad", r=2, seed=7)
    with_nan(bad / "adapter_model.safetensors", "base_model.model.layers.1.mlp.up_proj.lora_A.weight")
    outputs = {}
    for ahead in (1, 0):
        monkeypatch.setattr(prefetch, "READ_AHEAD", ahead)
        result = scan(base, [good, bad], tmp_path / f"out_{ahead}", keep_analyses=True,
                      cache_dir=tmp_path / f"out_{ahead}" / "svd_cache")  # a cold cache each
        rows = [{k: v for k, v in row.items() if k not in ("seconds", "run_dir")} for row in result.rows]
        analyses = [json.dumps(a.to_json(include_similarity=True)["matrices"]) for a in result.analyses.values()]
        outputs[ahead] = (rows, analyses)
    assert outputs[1] == outputs[0]
    rows = outputs[1][0]
    assert rows[0]["error"] is None and rows[0]["total_intruders"] >= 0
    assert "layers.1.mlp.up_proj.lora_A" in rows[1]["error"] and "NaN" in rows[1]["error"]


def test_a_job_read_on_a_warm_cache_holds_its_base_matrix_only_mapped(tmp_path):
    """On a cache hit the structured LoRA path needs W₀ only through its SVD: after hashing, the job read ahead keeps
    W₀ as mapped from the file, none of its pages resident, so reading ahead adds no W₀ to peak memory."""
    from test_memory import mapped_resident_kib

    from intrudim.analysis.jobs import read_job
    from intrudim.analysis.planning import open_inputs
    from intrudim.analysis.setup import open_cache

    g = torch.Generator().manual_seed(0)
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "llama"}))
    weights = {f"model.layers.{i}.self_attn.q_proj.weight": torch.randn(512, 512, generator=g) for i in range(4)}
    save_file(weights, str(base / "model.safetensors"))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    factors = {}
    for i in range(4):
        prefix = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        factors[f"{prefix}.lora_A.weight"] = torch.randn(4, 512, generator=g)
        factors[f"{prefix}.lora_B.weight"] = 0.1 * torch.randn(512, 4, generator=g)
    save_file(factors, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    if mapped_resident_kib(base / "model.safetensors") is None:
        pytest.skip("needs /proc/self/smaps (Linux)")
    config = AnalyzeConfig(k=4)
    analyze(base, adapter, config, cache_dir=tmp_path / "cache")  # cold: fills the cache
    cache = open_cache(config, tmp_path / "cache", use_cache=True)
    one_matrix_kib = 512 * 512 * 4 // 1024
    with open_inputs(base, adapter, config) as inputs:
        reads = [read_job(inputs, job, cache, config) for job in inputs.jobs]
        assert all(read.cached.factors is not None for read in reads)  # every lookup a hit
        assert mapped_resident_kib(base / "model.safetensors") < one_matrix_kib  # 4 jobs: not even one W₀
        for read in reads:  # and each is the right matrix
            assert torch.equal(read.W0, weights[read.job.base_key])

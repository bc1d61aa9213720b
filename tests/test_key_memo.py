"""The memo of cache keys (weights/svd_cache.KeyMemo): a warm run reads and hashes no base matrix of an unchanged
file, gives the same results, and any change to the file (or a record too close to the file's last change, or a
damaged record, or INTRUDIM_KEY_MEMO=0) means hashing again."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import write_peft_adapter
from safetensors.torch import load_file, save_file

import intrudim.weights.svd_cache as svd_cache
from intrudim import analyze


@pytest.fixture
def counted_hashes(monkeypatch):
    calls: list[tuple[int, ...]] = []
    real = svd_cache.matrix_hash

    def counting(W):
        calls.append(tuple(W.shape))
        return real(W)

    monkeypatch.setattr(svd_cache, "matrix_hash", counting)
    return calls


@pytest.fixture
def fresh_base(tiny_models, tmp_path) -> tuple[Path, Path]:
    """A copy of the tiny LLaMA (a file of its own, just written) and a PEFT adapter for it."""
    base = tmp_path / "base"
    shutil.copytree(tiny_models["llama"], base)
    adapter = write_peft_adapter(base, "llama", tmp_path / "adapter", r=4, strength=2.0, seed=5)
    return base, adapter


def _same(a, b) -> None:
    assert len(a.matrices) == len(b.matrices) > 0
    for x, y in zip(a.matrices, b.matrices, strict=True):
        assert x.to_json() == y.to_json()


def _close(a, b) -> None:
    """Equal up to float32 rounding of the products: a cold run's factors and the same factors read back from the
    cache differ in the last bits of some float32 GEMMs (measured up to 4e-9 relative, before the memo existed)."""
    assert len(a.matrices) == len(b.matrices) > 0
    for x, y in zip(a.matrices, b.matrices, strict=True):
        assert x.intruder_ranks == y.intruder_ranks
        assert x.singular_values == pytest.approx(y.singular_values, rel=1e-6)
        assert x.max_abs_cos == pytest.approx(y.max_abs_cos, abs=1e-6)


def _hashed_warm_run(base, adapter, cache, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(svd_cache.KEY_MEMO_ENV, "0")
        return analyze(base, adapter, cache_dir=cache)


def test_an_unchanged_base_is_not_hashed_again_and_gives_the_same_results(
    fresh_base, tmp_path, monkeypatch, counted_hashes
):
    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    time.sleep(0.3)  # the base file was last changed more than RACY_SECONDS before the record is written
    base, adapter = fresh_base
    cache = tmp_path / "cache"
    first = analyze(base, adapter, cache_dir=cache)
    n = len(first.matrices)
    assert len(counted_hashes) == n and first.cache_misses == n
    records = list((cache / "keys").glob("*.json"))
    assert (
        len(records) == 1 and len(json.loads(records[0].read_text())["keys"]) == n
    )  # one record per base file

    counted_hashes.clear()
    second = analyze(base, adapter, cache_dir=cache)
    assert counted_hashes == []  # every key came from the memo: no base matrix read or hashed
    assert second.cache_hits == n and second.cache_misses == 0
    _same(second, _hashed_warm_run(base, adapter, cache, monkeypatch))  # bit for bit what hashing finds
    _close(first, second)


def test_a_changed_base_file_is_hashed_again(fresh_base, tmp_path, monkeypatch, counted_hashes):
    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    time.sleep(0.3)
    base, adapter = fresh_base
    cache = tmp_path / "cache"
    analyze(base, adapter, cache_dir=cache)

    weights = base / "model.safetensors"
    state = load_file(str(weights))
    name = next(k for k in state if k.endswith("self_attn.q_proj.weight"))
    state[name] = state[name] + 0.05  # same size, same shape: only the content changes
    save_file(state, str(weights), metadata={"format": "pt"})
    time.sleep(0.3)

    counted_hashes.clear()
    changed = analyze(base, adapter, cache_dir=cache)
    assert len(counted_hashes) == len(changed.matrices)  # the file changed: every matrix hashed again
    assert changed.cache_misses == 1  # only the changed matrix is new to the cache
    _same(changed, _hashed_warm_run(base, adapter, cache, monkeypatch))
    monkeypatch.setenv(svd_cache.KEY_MEMO_ENV, "0")
    _close(changed, analyze(base, adapter, cache_dir=tmp_path / "other_cache"))  # a cold run of the new file


def test_a_record_written_right_after_the_file_changed_is_not_trusted(fresh_base, tmp_path, counted_hashes):
    base, adapter = fresh_base  # written just now: within RACY_SECONDS (2 s) of the record below
    cache = tmp_path / "cache"
    first = analyze(base, adapter, cache_dir=cache)
    counted_hashes.clear()
    analyze(base, adapter, cache_dir=cache)
    assert len(counted_hashes) == len(first.matrices)


def test_a_damaged_record_is_ignored(fresh_base, tmp_path, monkeypatch, counted_hashes):
    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    time.sleep(0.3)
    base, adapter = fresh_base
    cache = tmp_path / "cache"
    first = analyze(base, adapter, cache_dir=cache)
    for record in (cache / "keys").glob("*.json"):
        record.write_text("{not json")
    counted_hashes.clear()
    second = analyze(base, adapter, cache_dir=cache)
    assert len(counted_hashes) == len(first.matrices)
    _same(second, _hashed_warm_run(base, adapter, cache, monkeypatch))


def test_the_memo_can_be_turned_off(fresh_base, tmp_path, monkeypatch):
    monkeypatch.setenv(svd_cache.KEY_MEMO_ENV, "0")
    base, adapter = fresh_base
    assert svd_cache.BaseSVDCache(tmp_path / "c").memo is None
    analyze(base, adapter, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "keys").exists()


def test_a_file_changed_while_it_was_read_is_not_recorded(tmp_path):
    memo = svd_cache.KeyMemo(tmp_path / "cache")
    file = tmp_path / "w.bin"
    file.write_bytes(b"0" * 64)
    before = svd_cache.file_stat(file)
    file.write_bytes(b"1" * 65)
    memo.put(file, "w", False, "k" * 40, before, time.time_ns())
    assert not (tmp_path / "cache" / "keys").exists()
    assert memo.get(file, "w", False) is None


def test_each_key_is_judged_by_its_own_read_time(tmp_path, monkeypatch):
    """A key read right after the file changed stays untrusted even when a later read of another matrix of the same
    file rewrites the record (the racy-git case, per matrix)."""
    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    memo = svd_cache.KeyMemo(tmp_path / "cache")
    file = tmp_path / "w.bin"
    file.write_bytes(b"0" * 64)
    stat = svd_cache.file_stat(file)
    memo.put(file, "early", False, "a" * 40, stat, time.time_ns())  # read within RACY_SECONDS of the change
    time.sleep(0.3)
    memo.put(file, "late", False, "b" * 40, stat, time.time_ns())
    fresh = svd_cache.KeyMemo(tmp_path / "cache")  # what the next run reads from disk
    assert fresh.get(file, "early", False) is None
    assert fresh.get(file, "late", False) == "b" * 40
    assert fresh.get(file, "late", True) is None  # the orientation is part of the name
    file.write_bytes(b"1" * 64)  # same size, new content: the stat differs
    assert svd_cache.KeyMemo(tmp_path / "cache").get(file, "late", False) is None


def test_a_warm_repair_reads_through_the_memo_and_repairs_the_same(fresh_base, tmp_path, monkeypatch, counted_hashes):
    """`repair` reads W₀ as `analyze` does: after an analysis recorded the keys, a repair of the same base hashes
    nothing, and writes the same adapter as a repair that hashes every matrix."""
    from intrudim.repair import repair

    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    time.sleep(0.3)
    base, adapter = fresh_base
    cache = tmp_path / "cache"
    analyze(base, adapter, cache_dir=cache)
    counted_hashes.clear()
    memo = repair(base, adapter, lam=0.5, k=6, out=tmp_path / "memo", cache_dir=cache)
    assert counted_hashes == [] and memo.total_intruders > 0
    with monkeypatch.context() as m:
        m.setenv(svd_cache.KEY_MEMO_ENV, "0")
        hashed = repair(base, adapter, lam=0.5, k=6, out=tmp_path / "hashed", cache_dir=cache)
    assert len(counted_hashes) == len(hashed.matrices) > 0
    a = load_file(str(tmp_path / "memo" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "hashed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)


def test_a_scan_hashes_each_base_matrix_once_then_never(fresh_base, tmp_path, monkeypatch, counted_hashes):
    """scan's base units read through the memo as `analyze` does: the cold scan hashes each base matrix once (its
    base unit records the key, so the matrix unit after it reads none), a second scan hashes nothing, and its
    rows equal the first's."""
    from intrudim.scan import scan

    monkeypatch.setattr(svd_cache, "RACY_SECONDS", 0.2)
    time.sleep(0.3)
    base, adapter = fresh_base
    cache = tmp_path / "cache"
    first = scan(base, [adapter], tmp_path / "first", cache_dir=cache, keep_analyses=True)
    n = len(first.analyses[0].matrices)
    assert first.rows[0]["error"] is None and len(counted_hashes) == n

    counted_hashes.clear()
    second = scan(base, [adapter], tmp_path / "second", cache_dir=cache, keep_analyses=True)
    assert counted_hashes == []
    assert second.rows[0]["total_intruders"] == first.rows[0]["total_intruders"] > 0
    _same(second.analyses[0], _hashed_warm_run(base, adapter, cache, monkeypatch))

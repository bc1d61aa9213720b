"""`scan` in-process: every row equals a separate `analyze` of that input, resume, bad input, the CLI's --json."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import same_to_rounding, write_peft_adapter
from typer.testing import CliRunner

from intrudim.analysis import AnalyzeConfig, analyze
from intrudim.cli import app
from intrudim.errors import IntrudimError
from intrudim.scan import PRESSURE_THRESHOLD, ScanConfig, scan
from intrudim.scan.inputs import run_names
from intrudim.scan.units import MATRIX_UNIT_TORCH_THREADS, torch_threads

runner = CliRunner()


def comparable(analysis: dict) -> list[dict]:
    """The per-matrix results of an analysis JSON (similarity is kept only for the report's figures)."""
    return [{k: v for k, v in m.items() if k != "similarity"} for m in analysis["matrices"]]


@pytest.fixture(scope="module")
def scan_inputs(tiny_models, tmp_path_factory):
    """Inputs of one LLaMA base in every form TUNED takes, and one adapter for another base (BERT)."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("scan_inputs")
    llama = tiny_models["llama"]
    strong = write_peft_adapter(llama, "llama", root / "adapters" / "r2_strong", r=2, seed=1, strength=2.0)
    weak = write_peft_adapter(llama, "llama", root / "adapters" / "r4_weak", r=4, seed=2, strength=0.3)
    run_dir = root / "runs" / "lora_r1"  # an intrudim training run: RUN_DIR/final + metrics.jsonl
    write_peft_adapter(llama, "llama", run_dir / "final", r=1, seed=3, targets=["q_proj", "down_proj"])
    (run_dir / "metrics.jsonl").write_text("{}\n")
    dense = AutoModel.from_pretrained(str(llama))  # a "full fine-tuning": small dense noise on every matrix
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in dense.parameters():
            if p.ndim == 2:
                noise = torch.randn(p.shape, generator=generator)
                p.add_(0.02 * noise * p.norm() / noise.norm())
    dense.save_pretrained(str(root / "full_ft"))
    other_base = write_peft_adapter(tiny_models["bert"], "bert", root / "adapters" / "bert_adapter", r=2)
    tuned = [str(strong), str(other_base), str(run_dir), str(root / "full_ft"), str(weak)]
    return {"base": str(llama), "tuned": tuned, "root": root}


@pytest.fixture(scope="module")
def scanned(scan_inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("scan")
    out, cache = root / "out", root / "svd_cache"  # a cache of its own (the default is the user's, as for analyze)
    started = time.perf_counter()
    result = scan(scan_inputs["base"], scan_inputs["tuned"], out, cache_dir=cache)
    return {"result": result, "out": out, "cache": cache, "seconds": time.perf_counter() - started}


def test_rows_equal_separate_analyze_runs(scan_inputs, scanned, tmp_path):
    result, out = scanned["result"], scanned["out"]
    rows = result.rows
    assert [r["tuned"] for r in rows] == scan_inputs["tuned"]  # input order
    assert [r["name"] for r in rows] == ["r2_strong", "bert_adapter", "lora_r1", "full_ft", "r4_weak"]
    assert [r["kind"] for r in rows] == ["lora", None, "lora", "dense", "lora"]
    for row in rows:
        if row["error"] is not None:
            continue
        # `analyze` over the same base SVD cache, at the torch thread count of scan's matrix units (values depend
        # on it in the last bits): every value equal, not only close.
        with torch_threads(MATRIX_UNIT_TORCH_THREADS):
            reference = analyze(scan_inputs["base"], row["tuned"], cache_dir=scanned["cache"]).to_json()
        assert reference["cache"] == {"hits": reference["matrices_analysed"], "misses": 0}
        written = json.loads((out / "runs" / row["name"] / "analysis.json").read_text())
        for a, b in zip(comparable(written), comparable(json.loads(json.dumps(reference))), strict=True):
            assert a == b, (row["name"], {k: (a[k], b[k]) for k in a if a[k] != b[k]})
        if row["name"] in (
            "r2_strong",
            "full_ft",
        ):  # `analyze` as it comes, cold: the same counts (docs/scan.md)
            cold = analyze(scan_inputs["base"], row["tuned"], cache_dir=tmp_path / row["name"]).to_json()
            assert [m["intruder_ranks"] for m in cold["matrices"]] == [
                m["intruder_ranks"] for m in written["matrices"]
            ]
        assert row["total_intruders"] == reference["total_intruders"]
        assert row["energy_share_mean"] == reference["intruder_energy_share_mean"]
        assert row["found"] == [m["name"] for m in reference["matrices"] if m["intruders"]]
        assert row["predicted"] == [m["name"] for m in reference["matrices"]
                                    if m["intruder_pressure"] > PRESSURE_THRESHOLD]  # fmt: skip
        ranks = [m["effective_rank_delta"] for m in reference["matrices"]]
        assert row["effective_rank"] == pytest.approx(sum(ranks) / len(ranks))
        if row["total_intruders"]:
            most = max(m["intruders"] for m in reference["matrices"])
            worst = next(m for m in reference["matrices"] if m["name"] == row["worst_matrix"])
            assert worst["intruders"] == most
        else:
            assert row["worst_matrix"] is None
        for name in ("analysis.csv", "report.html", "figures/epsilon_sweep.png"):
            assert (out / "runs" / row["name"] / name).exists()
    # the set must discriminate: one with intruders, the dense "full FT" without
    by_name = {r["name"]: r for r in rows}
    assert by_name["r2_strong"]["total_intruders"] > 0
    assert by_name["full_ft"]["total_intruders"] == 0
    # the run dir was read through its final/ adapter: only the two modules it trained
    assert {m.rsplit(".", 2)[-2] for m in by_name["lora_r1"]["found"] + by_name["lora_r1"]["predicted"]} <= {
        "q_proj",
        "down_proj",
    }
    assert by_name["lora_r1"]["matrices_analysed"] == 4


def test_matrix_major_reads_each_base_factor_once_and_equals_adapter_major(scan_inputs, scanned, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    """The default order from two inputs on is matrix-major: every input's unit for one base matrix in a row, the
    matrix's cached factors read from disk once for all of them. The files equal an adapter-major scan's."""
    import intrudim.weights.svd_cache as svd_cache

    assert scanned["result"].document["order"] == "matrix"
    reads: list[str] = []
    real_load = svd_cache.load_file

    def counting(path, *args, **kwargs):
        if Path(path).parent.parent == scanned["cache"]:  # a factor entry, not a key memo
            reads.append(Path(path).stem)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(svd_cache, "load_file", counting)
    lora = [t for t in scan_inputs["tuned"] if "bert" not in t and "full_ft" not in t]  # 3 LoRA inputs, warm cache
    documents = {}
    for order in ("matrix", "adapter"):
        reads.clear()
        out = tmp_path / order
        documents[order] = scan(scan_inputs["base"], lora, out, ScanConfig(order=order, figures="none"),
                                cache_dir=scanned["cache"])  # the analyses compared, not drawn
        documents[order].reads = list(reads)
    matrix_reads, adapter_reads = documents["matrix"].reads, documents["adapter"].reads
    assert len(matrix_reads) == len(set(matrix_reads))  # each base matrix's factors read once
    assert len(adapter_reads) == documents["adapter"].document["units"]["matrix"] > len(matrix_reads)
    assert documents["adapter"].document["order"] == "adapter"
    for row in documents["matrix"].rows:
        written = {order: json.loads((tmp_path / order / "runs" / row["name"] / "analysis.json").read_text())
                   for order in documents}  # fmt: skip
        same_to_rounding(comparable(written["matrix"]), comparable(written["adapter"]), where=row["name"])
        assert [m["intruders"] for m in written["matrix"]["matrices"]] == [
            m["intruders"] for m in written["adapter"]["matrices"]]
    strip = ("seconds", "order", "cache")
    same_to_rounding([{k: v for k, v in r.items() if k not in strip} for r in documents["matrix"].rows],
                     [{k: v for k, v in r.items() if k not in strip} for r in documents["adapter"].rows])
    with pytest.raises(IntrudimError, match="order must be one of auto, matrix, adapter"):
        ScanConfig(order="row")
    # a memory budget for two inputs' results: batches of 2 and 1, each base factor read once per batch
    reads.clear()
    batched = scan(scan_inputs["base"], lora, tmp_path / "batched", ScanConfig(memory_budget_mb=1, figures="none"),
                   cache_dir=scanned["cache"])  # fmt: skip
    assert batched.document["order"] == "matrix" and batched.document["batch"] == 2
    assert max(reads.count(key) for key in reads) == 2 and len(reads) < len(adapter_reads)
    for row in batched.rows:
        written = json.loads((tmp_path / "batched" / "runs" / row["name"] / "analysis.json").read_text())
        reference = json.loads((tmp_path / "adapter" / "runs" / row["name"] / "analysis.json").read_text())
        same_to_rounding(comparable(written), comparable(reference), where=row["name"])


def test_adapter_of_another_base_is_reported_in_its_row(scanned):
    row = scanned["result"].rows[1]
    assert row["total_intruders"] is None and row["name"] == "bert_adapter"
    assert "bert_adapter" in row["error"] and "another model" in row["error"]
    assert not (scanned["out"] / "runs" / "bert_adapter").exists()


def test_leaderboard_files_and_prediction_summary(scanned):
    out, document = scanned["out"], scanned["result"].document
    data = json.loads((out / "leaderboard.json").read_text())
    assert data == json.loads(json.dumps(document))
    ok = [r for r in data["rows"] if r["error"] is None]
    predicted = sum(len(r["predicted"]) for r in ok)
    found = sum(len(r["found"]) for r in ok)
    both = sum(len(set(r["predicted"]) & set(r["found"])) for r in ok)
    p = data["prediction"]
    assert (p["predicted"], p["found"], p["predicted_and_found"]) == (predicted, found, both)
    assert p["precision"] == pytest.approx(both / predicted) and p["recall"] == pytest.approx(both / found)
    assert p["matrices"] == sum(r["matrices_analysed"] for r in ok)
    csv_lines = (out / "leaderboard.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(data["rows"]) and csv_lines[0].startswith("index,tuned,name")
    html = (out / "leaderboard.html").read_text()
    for row in ok:
        assert f'href="runs/{row["name"]}/report.html"' in html
    assert "<script>" in html and "http" not in html.replace("http-equiv", "")  # self-contained, sortable
    assert f"precision <b>{p['precision']:.2f}</b>" in html
    # one meaning of "energy": the mean over matrices of each one's share, shown as a percentage and said so
    assert "energy_share_mean" in csv_lines[0].split(",") and "energy_share" not in csv_lines[0].split(",")
    assert ">energy %</th>" in html and "mean over the analysed matrices" in html and "summed" not in html
    for row in ok:
        assert f">{100 * row['energy_share_mean']:.3g}</td>" in html
    assert data["units"]["base_svd"] == 14 and data["units"]["matrix"] == 14 * 3 + 4


def test_resume_skips_finished_inputs(scan_inputs, scanned, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(scanned["out"], out)
    cache = scanned["cache"]
    with pytest.raises(IntrudimError, match="not empty.*--resume"):
        scan(scan_inputs["base"], scan_inputs["tuned"], out, cache_dir=cache)
    with pytest.raises(IntrudimError, match="different settings.*k"):
        scan(scan_inputs["base"], scan_inputs["tuned"], out, ScanConfig(AnalyzeConfig(k=5), resume=True),
             cache_dir=cache)  # fmt: skip
    (out / "runs" / "full_ft" / "report.html").unlink()  # as if the scan had been stopped while writing it
    before = {r["name"]: r for r in scanned["result"].rows}
    result = scan(scan_inputs["base"], scan_inputs["tuned"], out, ScanConfig(resume=True), cache_dir=cache)
    assert [r["resumed"] for r in result.rows] == [True, False, True, False, True]
    assert result.document["units"]["matrix"] == 14  # only full_ft's matrices ran again
    for row in result.rows:
        assert {**row, "resumed": False} == {**before[row["name"]], "resumed": False}


def test_glob_and_names(scan_inputs, tmp_path):
    with pytest.raises(IntrudimError, match="matches nothing"):
        scan(scan_inputs["base"], [], tmp_path / "o", pattern=str(tmp_path / "nothing" / "*"))
    with pytest.raises(IntrudimError, match="Nothing to scan"):
        scan(scan_inputs["base"], [], tmp_path / "o")
    assert run_names(["a/x/final", "b/x/final", "c/y", "c/y"]) == ["a__x", "b__x", "y", "y-2"]
    with pytest.raises(IntrudimError, match="does not exist"):
        scan(tmp_path / "no_base", scan_inputs["tuned"][:1], tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing written: a later run needs no --resume


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_cuda(scan_inputs, tmp_path):
    with pytest.raises(IntrudimError, match="no CUDA GPU"):
        scan(
            scan_inputs["base"],
            scan_inputs["tuned"][:1],
            tmp_path / "o",
            ScanConfig(AnalyzeConfig(device="cuda")),
        )
    assert not (tmp_path / "o").exists()


def test_cli_json_rows_and_bad_input(scan_inputs, tmp_path):
    adapters = scan_inputs["root"] / "adapters"
    result = runner.invoke(app, ["scan", scan_inputs["base"], "--glob", str(adapters / "r*"), "--out",
                                 str(tmp_path / "o"), "--json", "--k", "8", "--cache", str(tmp_path / "c")])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["name"] for r in data["rows"]] == ["r2_strong", "r4_weak"]
    for row in data["rows"]:
        assert {"tuned", "total_intruders", "energy_share_mean", "worst_matrix", "effective_rank", "predicted",
                "found", "error"} <= set(row)  # fmt: skip
        assert "energy_share" not in row  # the sum over matrices, read as a percentage, is gone
        assert row["error"] is None
    assert data["prediction"]["threshold"] == PRESSURE_THRESHOLD
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("scan: ")
    ]  # no terminal: plain lines
    total = 14 + 2 * 14 + 2  # one base SVD unit per base matrix (shared by both), the matrices, two reports
    assert lines[0].startswith(f"scan: 0/{total} steps (base SVDs, matrices, reports)") and lines[-1].startswith(
        f"scan: {total}/{total} steps (base SVDs, matrices, reports)"
    )
    again = runner.invoke(
        app, ["scan", scan_inputs["base"], str(adapters / "r2_strong"), "--out", str(tmp_path / "o")]
    )
    assert again.exit_code == 2 and "--resume" in again.output and "Traceback" not in again.output
    nothing = runner.invoke(
        app, ["scan", scan_inputs["base"], "--glob", str(tmp_path / "no*"), "--out", str(tmp_path / "p")]
    )
    assert nothing.exit_code == 2 and "matches nothing" in nothing.output
    if not torch.cuda.is_available():
        cuda = runner.invoke(app, ["scan", scan_inputs["base"], str(adapters / "r2_strong"), "--out", str(tmp_path / "q"),
                                   "--device", "cuda"])  # fmt: skip
        assert cuda.exit_code == 2 and "no CUDA GPU" in cuda.output


def test_unreachable_ray_address_fails_fast(scan_inputs, tmp_path):
    pytest.importorskip("ray")
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.perf_counter()
    result = runner.invoke(app, ["scan", scan_inputs["base"], scan_inputs["tuned"][0], "--out", str(tmp_path / "o"),
                                 "--ray-address", f"127.0.0.1:{port}"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{port}" in result.output and "ray start --head" in result.output
    assert time.perf_counter() - started < 30
    with socket.socket() as listener:  # something listens, but it is not Ray
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        started = time.perf_counter()
        result = runner.invoke(app, ["scan", scan_inputs["base"], scan_inputs["tuned"][0], "--out",
                                     str(tmp_path / "o2"), "--ray-address", f"127.0.0.1:{port}"])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "not a Ray head node" in result.output
        assert time.perf_counter() - started < 30


def test_ray_missing_names_the_extra(monkeypatch, scan_inputs, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    with pytest.raises(IntrudimError, match=r"pip install 'intrudim\[ray\]'"):
        scan(scan_inputs["base"], scan_inputs["tuned"][:1], tmp_path / "o", ScanConfig(engine="ray"),
             cache_dir=tmp_path / "c")  # fmt: skip


def test_leaderboard_in_a_browser_sorts_by_a_click(scanned):
    """The page as a person sees it: no script error, the table shown, and a click on "intruders" sorts rows by
    their counts (the error row last), a second click the other way."""
    from browser import _new_driver, check_report, require_browser

    require_browser()
    path = scanned["out"] / "leaderboard.html"
    check_report(path, required_selectors=["#leaderboard", "#prediction"]).assert_ok()
    counts = {r["name"]: r["total_intruders"] for r in scanned["result"].rows if r["error"] is None}
    driver = _new_driver()
    try:
        driver.get(path.resolve().as_uri())
        header = driver.find_elements("css selector", "#leaderboard th")[3]
        assert header.text == "intruders"
        names = []
        for _ in range(2):
            header.click()
            cells = driver.find_elements("css selector", "#leaderboard tbody tr td:nth-child(2)")
            names.append([cell.text for cell in cells])
        ascending = sorted(counts, key=lambda n: counts[n])
        assert [counts[n] for n in names[0][:-1]] == sorted(counts.values()) and names[0][-1].endswith(
            "bert_adapter"
        )
        assert [counts[n] for n in names[1][:-1]] == sorted(counts.values(), reverse=True)
        assert set(names[0][:-1]) == set(ascending)
    finally:
        driver.quit()


def test_a_damaged_adapter_fails_in_its_row_and_the_scan_goes_on(scan_inputs, scanned, tmp_path):
    """A unit's error (NaN factors, found only when the matrix is read) ends in that input's row, not the scan."""
    from safetensors.torch import load_file, save_file

    good = scan_inputs["tuned"][0]
    damaged = tmp_path / "nan_adapter"
    shutil.copytree(good, damaged)
    tensors = load_file(str(damaged / "adapter_model.safetensors"))
    key = next(k for k in sorted(tensors) if "layers.1.mlp.up_proj.lora_B" in k)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(damaged / "adapter_model.safetensors"))
    lines: list[tuple[int, int]] = []
    result = scan(scan_inputs["base"], [str(damaged), good], tmp_path / "out", ScanConfig(figures="none"),
                  cache_dir=scanned["cache"],
                  progress=lambda done, total, name: lines.append((done, total)))  # fmt: skip
    bad, ok = result.rows
    assert "NaN" in bad["error"] and "up_proj" in bad["error"] and bad["total_intruders"] is None
    assert ok["error"] is None and ok["total_intruders"] == scanned["result"].rows[0]["total_intruders"]
    assert lines[-1][0] == lines[-1][1]  # the progress reaches its total without the bad input's report
    assert not (tmp_path / "out" / "runs" / "nan_adapter").exists()


def test_a_stacked_batch_with_one_bad_input_gives_it_its_error_and_analyses_the_others(scan_inputs, scanned):
    """A matrix-major batch stacks its inputs' factors; one whose factors do not fit the base matrix makes the stack
    fail, and every input is then analysed alone: that input gets its error, the others their results (equal to
    the stacked ones to float rounding)."""
    import dataclasses

    from intrudim.analysis.jobs import analyze_read, analyze_reads
    from intrudim.scan.units import MatrixUnit, plan_input, read_matrix_unit, unit_cache

    config = ScanConfig().analysis
    cache = str(scanned["cache"])
    lora = [t for t in scan_inputs["tuned"] if "bert" not in t and "full_ft" not in t]
    planned = [plan_input(scan_inputs["base"], t, i, f"input{i}", config) for i, t in enumerate(lora)]
    common = set.intersection(*({job.base_key for job in item.jobs} for item in planned))
    job = next(j for j in planned[0].jobs if j.base_key in sorted(common))
    jobs = [next(j for j in item.jobs if j.base_key == job.base_key) for item in planned]
    reads = [read_matrix_unit(scan_inputs["base"], MatrixUnit(i, item.tuned, j), config, cache)
             for i, (item, j) in enumerate(zip(planned, jobs, strict=True))]  # fmt: skip
    stacked = analyze_reads(reads, unit_cache(config, cache), config)
    alone = [analyze_read(read, unit_cache(config, cache), config) for read in reads]
    for ours, theirs in zip(stacked, alone, strict=True):
        same_to_rounding(comparable({"matrices": [ours.to_json()]}), comparable({"matrices": [theirs.to_json()]}))
    bad = reads[1].factors
    reads[1] = dataclasses.replace(reads[1], factors=dataclasses.replace(bad, A=bad.A[:, :-1]))
    results = analyze_reads(reads, unit_cache(config, cache), config)
    assert isinstance(results[1], ValueError) and "do not fit a base matrix" in str(results[1])
    for i in (0, 2):
        same_to_rounding(comparable({"matrices": [results[i].to_json()]}), comparable({"matrices": [alone[i].to_json()]}))


def test_glob_matches_in_natural_order_and_run_names_are_unique(tmp_path):
    """--glob 'out/checkpoint-*' lists checkpoint-5 before checkpoint-10; inputs whose folders share a name get the
    parents that tell them apart."""
    from intrudim.scan.inputs import expand_inputs, natural_key

    for step in (10, 5, 100, 9):
        (tmp_path / "out" / f"checkpoint-{step}").mkdir(parents=True)
    found = expand_inputs([], str(tmp_path / "out" / "checkpoint-*"))
    assert [Path(f).name for f in found] == ["checkpoint-5", "checkpoint-9", "checkpoint-10", "checkpoint-100"]
    assert sorted(["r16", "r2", "r02", "r1"], key=natural_key) == ["r1", "r02", "r2", "r16"]
    assert run_names(["/x/a/adapter", "/x/b/adapter"]) == ["a__adapter", "b__adapter"]
    assert run_names(["/x/run1/final", "/x/run2/final"]) == ["run1", "run2"]
    assert run_names(["/p/run1/final", "/q/run1/final", "/q/run2/final"]) == ["p__run1", "q__run1", "run2"]
    assert run_names(["/r/a/x/adapter", "/r/b/x/adapter", "/r/c/other"]) == ["a__x__adapter", "b__x__adapter",
                                                                              "other"]  # fmt: skip


def test_scan_reads_the_cache_analyze_filled_and_reads_well_at_80_columns(tiny_models, tmp_path, monkeypatch):
    """A newcomer's session: `analyze` one adapter, then `scan` it with another adapter of the same base, both
    folders named `adapter`. The scan computes no base SVD (its default cache is the one `analyze` filled), its
    rows carry unique names in the terminal and the leaderboard, and its output fits 80 columns in the common
    table style, one fact per line, every path whole on one line."""
    monkeypatch.setenv("INTRUDIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")
    llama = str(tiny_models["llama"])
    first = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "a" / "adapter", r=2, seed=1, strength=2.0)
    second = write_peft_adapter(tiny_models["llama"], "llama", tmp_path / "b" / "adapter", r=1, seed=2)
    analysed = runner.invoke(app, ["analyze", llama, str(first)])
    assert analysed.exit_code == 0, analysed.output
    assert "base SVD cache: 0 hits, 14 computed" in analysed.stdout  # analyze filled the default cache

    out = tmp_path / "scan"
    result = runner.invoke(app, ["scan", llama, str(first), str(second), "--out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "leaderboard.json").read_text())
    assert document["base_svd_cache"] == {"hits": 14, "misses": 0}  # no base SVD computed again
    assert Path(document["cache"]) == (tmp_path / "cache" / "svd").resolve()
    assert "base SVD cache: 14 hits, 0 computed" in result.stdout
    assert not (out / "svd_cache").exists()

    names = [row["name"] for row in document["rows"]]
    assert names == ["a__adapter", "b__adapter"]
    table = [line.split() for line in result.stdout.splitlines() if re.match(r"^\s*\d+\s{2,}\S", line)]
    assert [row[1] for row in table] == names  # the terminal shows the same unique names
    html = (out / "leaderboard.html").read_text()
    assert all(f'<a href="runs/{name}/report.html">{name}</a>' in html for name in names)

    lines = result.stdout.splitlines()
    paths = [llama, *(str(out / f"leaderboard.{ext}") for ext in ("html", "json", "csv"))]
    for path in paths:  # every path whole on one line (after its label when they fit together)
        assert any(path in line for line in lines), (path, result.stdout)
    assert all(len(line) <= 80 or line.strip() in paths for line in lines), result.stdout
    assert "━" not in result.stdout and "┃" not in result.stdout  # box.SIMPLE_HEAD, as every verb's tables
    assert "energy %" in result.stdout and "energy %: the intruders' share of ‖W_t‖²_F, mean over matrices" in lines
    energy = document["rows"][0]["energy_share_mean"]
    assert 0 < energy < 1 and f"{100 * energy:.3g}" in table[0]


KILLED_SCAN = """
import sys, time
import intrudim.scan.units as units
from intrudim.scan import ScanConfig, scan

real = units.analyze_matrix
def slow(*args, **kwargs):  # a unit as long as a large model's, so that the kill lands mid-scan
    time.sleep(0.25)
    return real(*args, **kwargs)
units.analyze_matrix = slow
base, out, cache, *tuned = sys.argv[1:]
scan(base, tuned, out, ScanConfig(order="matrix", figures="none"), cache_dir=cache)
"""


def test_a_scan_killed_mid_batch_resumes_without_redoing_finished_matrices(scan_inputs, scanned, tmp_path):
    """SIGKILL in the middle of a matrix-major batch (no input finished yet): `--resume` takes every matrix the
    killed scan finished from its journal, analyses only the rest, and the leaderboard and every analysis equal an
    uninterrupted scan's."""
    import os
    import signal
    import subprocess
    import sys

    from intrudim.scan.journal import JOURNAL

    lora = [t for t in scan_inputs["tuned"] if "bert" not in t and "full_ft" not in t]
    reference = scan(scan_inputs["base"], lora, tmp_path / "whole", ScanConfig(figures="none"), cache_dir=scanned["cache"])
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    child = subprocess.Popen([sys.executable, "-c", KILLED_SCAN, scan_inputs["base"], str(out), str(scanned["cache"]),
                              *lora], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    def journaled() -> int:
        return sum(len(p.read_text().splitlines()) for p in out.glob(f"runs/*/{JOURNAL}"))

    deadline = time.monotonic() + 240
    while journaled() < 6 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done_before = journaled()
    assert done_before >= 6
    assert not list(out.glob("runs/*/report.html"))  # one batch: no input was finished

    resumed = scan(scan_inputs["base"], lora, out, ScanConfig(resume=True, figures="none"), cache_dir=scanned["cache"])
    assert resumed.document["resumed_matrices"] >= done_before - 3  # a line being written at the kill may be lost
    assert resumed.document["units"]["matrix"] == reference.document["units"]["matrix"] - resumed.document[
        "resumed_matrices"]
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed.rows] == [
        {k: v for k, v in r.items() if k not in strip} for r in reference.rows]
    for row in resumed.rows:
        written = json.loads((out / "runs" / row["name"] / "analysis.json").read_text())
        whole = json.loads((tmp_path / "whole" / "runs" / row["name"] / "analysis.json").read_text())
        assert comparable(written) == comparable(whole), row["name"]
        assert not (out / "runs" / row["name"] / JOURNAL).exists()  # the journal goes once the files are written


def test_the_journal_reads_back_exactly_and_skips_a_line_cut_by_a_kill(tmp_path):
    from intrudim.analysis.results import MatrixResult
    from intrudim.scan import journal
    from intrudim.scan.units import UnitOutcome

    result = MatrixResult(name="layers.0.q.weight", shape=(4, 4), layer=0, module_type="q", transposed=False,
                          intruders=1, intruder_ranks=[1], max_abs_cos=[0.1234567890123, 0.9], singular_values=[2.5, 1.0],
                          base_singular_values=[2.0, 1.0], effective_rank_delta=1.0, intruder_energy_share=0.3,
                          largest_intruder_rank=1, largest_intruder_sigma_ratio=1.25, epsilon_sweep={0.1: 0, 0.5: 1},
                          similarity=[[0.1, 0.2], [0.9, 0.05]])  # fmt: skip
    journal.record(tmp_path, "a", "tuned/a", "k1", UnitOutcome(result=result, cache_hit=True, seconds=0.5))
    path = journal.journal_path(tmp_path, "a")
    path.write_text(path.read_text() + '{"tuned": "tuned/a", "base_k')  # the kill cut this line short
    journal.record(tmp_path, "a", "tuned/a", "k2", UnitOutcome(result=result))
    journal.record(tmp_path, "a", "tuned/other", "k3", UnitOutcome(result=result))  # another TUNED under the name
    found = journal.recorded(tmp_path, "a", "tuned/a")
    assert sorted(found) == ["k1", "k2"]
    assert found["k1"].result == result and found["k1"].cache_hit and found["k1"].seconds == 0.5
    journal.forget(tmp_path, "a")
    assert not path.exists() and journal.recorded(tmp_path, "a", "tuned/a") == {}


def test_a_matrix_result_writes_what_asdict_gives_and_shares_no_list_with_the_result():
    from dataclasses import asdict

    from intrudim.analysis.results import MatrixResult

    result = MatrixResult(name="layers.0.q.weight", shape=(4, 4), layer=0, module_type="q", transposed=False,
                          intruders=1, intruder_ranks=[1], max_abs_cos=[0.25, 0.9], singular_values=[2.5, 1.0],
                          base_singular_values=[2.0, 1.0], effective_rank_delta=None, intruder_energy_share=0.3,
                          largest_intruder_rank=1, largest_intruder_sigma_ratio=1.25, epsilon_sweep={0.1: 0, 0.5: 1},
                          k_sweep={"10": 1}, similarity=[[0.1, 0.2], [0.9, 0.05]])  # fmt: skip
    reference = asdict(result)
    reference.update(shape=[4, 4], epsilon_sweep={"0.1": 0, "0.5": 1})
    assert json.dumps(result.to_json(include_similarity=True)) == json.dumps(reference)  # same keys, same order
    del reference["similarity"]
    written = result.to_json()
    assert json.dumps(written) == json.dumps(reference)
    written["intruder_ranks"].append(7)
    written["k_sweep"]["20"] = 2
    assert result.intruder_ranks == [1] and result.k_sweep == {"10": 1}
    assert MatrixResult.from_json(result.to_json(include_similarity=True)) == result


@pytest.mark.parametrize("settings,message", [
    ({"order": "row"}, "order must be one of auto, matrix, adapter; got 'row'"),
    ({"figures": "some"}, "figures must be one of auto, all, none; got 'some'"),
    ({"memory_budget_mb": 0}, "memory_budget_mb must be a positive number of MB; got 0"),
    ({"memory_budget_mb": True}, "memory_budget_mb must be a positive number of MB; got True"),
])  # fmt: skip
def test_bad_order_or_memory_budget_is_one_clear_error(settings, message):
    with pytest.raises(IntrudimError, match=re.escape(message)):
        ScanConfig(**settings)


def test_a_scan_without_figures_writes_the_same_analyses_and_says_how_to_draw_them(scan_inputs, scanned, tmp_path):
    """--figures none (auto above 16 inputs): the same analysis.json, CSV and rows, no figure drawn, and each input's
    report says why and gives the command that draws them; opened in a browser."""
    out = tmp_path / "out"
    result = scan(scan_inputs["base"], scan_inputs["tuned"], out, ScanConfig(figures="none"), cache_dir=scanned["cache"])
    drawn = scanned["out"]
    for row in result.rows:
        if row.get("error"):
            continue
        name = Path(row["analysis"]).parent.name
        ours = json.loads((out / "runs" / name / "analysis.json").read_text())
        theirs = json.loads((drawn / "runs" / name / "analysis.json").read_text())
        assert comparable(ours) == comparable(theirs)
        assert (out / "runs" / name / "analysis.csv").read_text() == (drawn / "runs" / name / "analysis.csv").read_text()
        assert not (out / "runs" / name / "figures").exists() and any((drawn / "runs" / name / "figures").glob("*.png"))
    html = out / "runs" / Path(result.rows[0]["analysis"]).parent.name / "report.html"
    text = html.read_text()
    assert "No figures: this scan of 5 inputs drew none" in text and "<img" not in text
    assert f"intrudim analyze {scan_inputs['base']} {scan_inputs['tuned'][0]} --out DIR" in text
    assert ScanConfig().draws_figures(16) and not ScanConfig().draws_figures(17)
    assert ScanConfig(figures="all").draws_figures(1000) and not ScanConfig(figures="none").draws_figures(1)
    from browser import check_report, require_browser

    require_browser()
    page = check_report(html, required_selectors=["#verdict", "#figures-note", "#per-matrix"])
    page.assert_ok()


def test_the_top_k_helper_process_changes_no_number_of_a_matrix_major_scan(scan_inputs, scanned, tmp_path, monkeypatch):
    """Nine adapters (a stack of ≥ MIN_STACK cores per base matrix): the scan whose helper process takes every other
    core's top-k (opt-in, INTRUDIM_TOPK_HELPERS=1) writes the same analyses, number for number, as the default scan."""
    from intrudim.analysis import top_k_pool

    llama = Path(scan_inputs["base"])
    adapters = [str(write_peft_adapter(llama, "llama", tmp_path / "adapters" / f"a{i}", r=1 + i % 4, seed=10 + i,
                                       strength=0.3 + 0.4 * i)) for i in range(top_k_pool.MIN_STACK + 1)]  # fmt: skip
    written = {}
    for helpers in ("0", "1"):
        monkeypatch.setenv("INTRUDIM_TOPK_HELPERS", helpers)
        top_k_pool._discard_pool()
        result = scan(str(llama), adapters, tmp_path / f"helpers-{helpers}", ScanConfig(figures="none"),
                      cache_dir=scanned["cache"])  # the analyses compared, not drawn
        assert result.document["order"] == "matrix" and all(row.get("error") is None for row in result.rows)
        assert (top_k_pool._POOL is not None) == (top_k_pool.helper_processes() > 0)  # it took part only when asked
        written[helpers] = {row["name"]: comparable(json.loads((tmp_path / f"helpers-{helpers}" / "runs" / row["name"]
                                                                / "analysis.json").read_text())) for row in result.rows}  # fmt: skip
    assert written["0"] == written["1"]
    assert sum(m["intruders"] for rows in written["1"].values() for m in rows) > 0  # something to decide

"""`scan` on Ray: a local runtime (--ray) and a real two-node cluster on this machine (--ray-address), with
results equal to the in-process scan, and a worker node killed mid-scan without losing a finished result;
`sweep --ray-address` on the same cluster, equal to the in-process sweep."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import same_to_rounding, write_peft_adapter
from typer.testing import CliRunner

from intrudim.cli import app
from intrudim.scan import ScanConfig, scan

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def analyses(out: Path) -> dict[str, list[dict]]:
    """Every input's per-matrix results as written under OUT/runs/<name>/analysis.json."""
    return {
        run.name: json.loads((run / "analysis.json").read_text())["matrices"]
        for run in sorted((out / "runs").iterdir())
    }


def ray_task_processes(process_group: int) -> list[str]:
    """Titles of the Ray worker processes of one node (its `ray start --block` process group) that run or ran
    one of the scan's unit functions (Ray titles a worker ``ray::<function>``, ``ray::IDLE`` between tasks)."""
    import psutil

    titles = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(process.pid) == process_group:
                title = " ".join(process.info["cmdline"] or [])
                if title.startswith("ray::"):
                    titles.append(title)
        except (OSError, psutil.Error):
            pass
    return titles


def rows_without_timing(document: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "resumed"} for row in document["rows"]]


@pytest.fixture(scope="module", autouse=True)
def ray_without_tokens():
    """The test cluster listens on 127.0.0.1 only: no auth token between its processes and this driver."""
    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    yield
    if before is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = before


@pytest.fixture(scope="module")
def ray_inputs(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_inputs")
    llama = tiny_models["llama"]
    tuned = [str(write_peft_adapter(llama, "llama", root / f"lora_{i}", r=1 + i % 3, seed=10 + i, strength=1.5))
             for i in range(4)]  # fmt: skip
    tuned.insert(
        2, str(write_peft_adapter(tiny_models["bert"], "bert", root / "bert_lora", r=2))
    )  # another base
    return {"base": str(llama), "tuned": tuned}


@pytest.fixture(scope="module")
def in_process(ray_inputs, tmp_path_factory):
    """The reference: the in-process scan (its cache is computed here)."""
    out = tmp_path_factory.mktemp("local") / "out"
    return scan(ray_inputs["base"], ray_inputs["tuned"], out, cache_dir=out / "svd_cache"), out


def test_local_ray_runtime_equals_in_process(ray_inputs, in_process, tmp_path):
    reference, reference_out = in_process
    out = tmp_path / "out"
    result = scan(ray_inputs["base"], ray_inputs["tuned"], out, ScanConfig(engine="ray", ray_cpus=2),
                  cache_dir=reference_out / "svd_cache")  # fmt: skip
    assert result.document["engine"] == "ray"
    # a Ray task's torch runs on its one CPU, this process's on every core: the stacked products of a matrix-major
    # batch sum in another order, so values agree to float rounding, every count and rank exactly
    same_to_rounding(rows_without_timing(result.document), rows_without_timing(reference.document))
    same_to_rounding(analyses(out), analyses(reference_out))


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second worker node (1 CPU each) on 127.0.0.1; stopped, whatever happens."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    port = free_port()
    common = ["--num-cpus", "1", "--object-store-memory", str(100 * 1024 * 1024), "--node-ip-address", "127.0.0.1",
              "--disable-usage-stats"]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    worker = None
    try:
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir",
                        temp_dir, "--dashboard-agent-listen-port",
                        str(free_port()), *common], env=env, check=True, capture_output=True, timeout=90)  # fmt: skip
        worker = subprocess.Popen(  # --block: this process owns the node's raylet and workers (its process group)
            [RAY, "start", "--address", f"127.0.0.1:{port}", "--dashboard-agent-listen-port", str(free_port()),
             "--block", *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = subprocess.run([RAY, "status", "--address", f"127.0.0.1:{port}"], env=env, capture_output=True,
                                    text=True, timeout=30)  # fmt: skip
            if status.stdout.count("node_") >= 2:
                break
            time.sleep(1)
        else:
            pytest.fail(
                f"the worker node did not join the head at 127.0.0.1:{port}: {status.stdout}{status.stderr}"
            )
        yield {"address": f"127.0.0.1:{port}", "worker": worker}
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cluster_scan_equals_in_process(ray_inputs, in_process, cluster, tmp_path):
    """The base SVDs are computed on the cluster (a cold cache of its own); the in-process scan then reads the same
    cache: every count and rank of every row and every analysis is equal, every value to float rounding."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["scan", ray_inputs["base"], *ray_inputs["tuned"], "--out", str(out),
                                 "--ray-address", cluster["address"], "--cache", str(out / "svd_cache"), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["tuned"] for r in rows] == ray_inputs["tuned"]
    assert rows[2]["error"] is not None and "another model" in rows[2]["error"]
    document = json.loads((out / "leaderboard.json").read_text())
    assert document["units"]["base_svd"] == 14 and document["ray_address"] == cluster["address"]
    again = scan(ray_inputs["base"], ray_inputs["tuned"], tmp_path / "again", cache_dir=out / "svd_cache")
    same_to_rounding(rows_without_timing(document), rows_without_timing(json.loads(json.dumps(again.document))))
    same_to_rounding(analyses(out), analyses(tmp_path / "again"))
    # and the in-process reference of its own (its own cold cache): the same counts
    reference, reference_out = in_process
    assert [r["total_intruders"] for r in rows] == [r["total_intruders"] for r in reference.rows]


@pytest.fixture(scope="module")
def trainable_bert(tmp_path_factory):
    """A 2-layer random BERT with the generated tasks' word-level tokenizer (as test_train builds it)."""
    import test_train
    from transformers import BertConfig, BertModel

    return test_train._save_random_model(tmp_path_factory, "ray_bert", lambda vocab_size: BertModel(BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )))  # fmt: skip


def test_sweep_on_cluster_equals_in_process(trainable_bert, cluster, tmp_path):
    """`sweep --ray-address`: each run is a Ray task (1 CPU, so one thread) on the two-node cluster; its numbers,
    tracked intruders and trained weights equal the same sweep run in this process at one thread."""
    import torch
    from safetensors.torch import load_file

    recipe = ["--model", str(trainable_bert), "--task", "sentiment", "--ranks", "2,full", "--steps", "4",
              "--eval-every", "4", "--checkpoint-every", "2", "--max-train-examples", "48",
              "--max-validation-examples", "16", "--max-length", "32", "--quiet", "--no-figures"]  # fmt: skip
    result = runner.invoke(app, ["sweep", *recipe, "--ray-address", cluster["address"], "--out", str(tmp_path / "ray")])
    assert result.exit_code == 0, result.output
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = runner.invoke(app, ["sweep", *recipe, "--out", str(tmp_path / "local")])
    finally:
        torch.set_num_threads(threads)
    assert local.exit_code == 0, local.output
    on_ray, here = (json.loads((tmp_path / name / "sweep.json").read_text()) for name in ("ray", "local"))
    assert (on_ray["engine"], on_ray["ray_address"], here["engine"]) == ("ray", cluster["address"], "local")

    def numbers(document):
        return [{k: v for k, v in row.items() if k != "run_dir"} for row in document["runs"]]

    assert numbers(on_ray) == numbers(here) and [r["run"] for r in on_ray["runs"]] == ["r-2", "full"]
    assert on_ray["prediction"]["observations"] == here["prediction"]["observations"] == 2 * 2 * 12  # steps 2, 4
    for run, weights in (("r-2", "adapter_model.safetensors"), ("full", "model.safetensors")):
        a, b = (load_file(str(tmp_path / name / run / "final" / weights)) for name in ("ray", "local"))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6), (run, key)


def test_sweep_asking_for_gpus_the_cluster_lacks_is_refused(trainable_bert, cluster, tmp_path):
    result = runner.invoke(app, ["sweep", "--model", str(trainable_bert), "--ranks", "1", "--steps", "2", "--quiet",
                                 "--ray-address", cluster["address"], "--ray-gpus-per-run", "1",
                                 "--out", str(tmp_path / "s")])  # fmt: skip
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "has 2 CPUs and 0 GPUs" in text and "Nothing was trained" in text and "Traceback" not in text
    assert not (tmp_path / "s" / "r-1").exists()


def test_killed_worker_node_loses_no_result(ray_inputs, in_process, cluster, tmp_path):
    reference, reference_out = in_process
    worker = cluster["worker"]
    killed_at = []

    busy_on_killed_node = []

    def kill_after_first_units(done: int, total: int, name: str) -> None:
        if not killed_at and done >= 20:  # the base SVDs and some matrix units are in
            busy_on_killed_node.extend(ray_task_processes(worker.pid))  # it was running the scan's units
            os.killpg(worker.pid, signal.SIGKILL)
            killed_at.append(done)

    out = tmp_path / "out"
    config = ScanConfig(engine="ray", ray_address=cluster["address"])
    result = scan(ray_inputs["base"], ray_inputs["tuned"], out, config, cache_dir=reference_out / "svd_cache",
                  progress=kill_after_first_units)  # fmt: skip
    assert killed_at and worker.wait(timeout=30) is not None
    assert busy_on_killed_node, "the worker node ran none of the scan's units: the kill tested nothing"
    total = sum(result.document["units"].values()) + 4  # + one report unit per analysed input
    assert killed_at[0] < total
    same_to_rounding(rows_without_timing(result.document), rows_without_timing(reference.document))
    same_to_rounding(analyses(out), analyses(reference_out))

"""Shared machines: intrudim beside a CPU-bound neighbour, OpenMP spin-waiting (the old default) vs passive waiting.

A cold ``analyze`` (every base SVD computed: the embedded SmolLM2 against itself with an empty cache, 210
matrices) and 30 MiniLM training steps each run alone and then beside a neighbour process that keeps both cores
busy with torch work under the OpenMP default (someone else's training run). Each is run with
``OMP_WAIT_POLICY=ACTIVE`` (threads spin at barriers: what torch did before intrudim chose) and ``PASSIVE``
(intrudim's default since issue 15, :mod:`intrudim.threads`). The script prints wall-clock seconds and the
slowdown busy/alone per policy; the goal is a slowdown near 2x (the neighbour takes half the machine), not 15x.

    python benchmarks/bench_shared.py            # SmolLM2 cold analyze + MiniLM steps (~5 minutes on 2 cores)
    python benchmarks/bench_shared.py --quick    # MiniLM only

Run it on an otherwise idle machine. Writes bench_out/bench_shared.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import load_average

OUT_DIR = Path("bench_out")

NEIGHBOUR = """
import torch
torch.manual_seed(0)
a = torch.randn(384, 384)
while True:  # MiniLM-sized matmuls on every core, forever (killed by the benchmark)
    for _ in range(50):
        a = torch.tanh(a @ a.T / 20)
"""

TRAIN_STEPS = """
import time, torch
from transformers import AutoModel, AutoTokenizer
from intrudim.models.embedded import embedded_model_path
path = embedded_model_path("minilm")
model, tok = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
batch = tok(["the movie was great and i loved every minute of it"] * 16, return_tensors="pt",
            padding="max_length", max_length=32)
opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
start = time.perf_counter()
for _ in range(30):
    model(**batch).last_hidden_state.mean().backward()
    opt.step()
    opt.zero_grad()
print(time.perf_counter() - start)
"""


def _env(policy: str) -> dict[str, str]:
    return {**os.environ, "OMP_WAIT_POLICY": policy, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_workload(name: str, policy: str, cache_root: Path) -> float:
    """Wall-clock seconds of one workload in a fresh process with the given OpenMP wait policy."""
    if name == "train":
        done = subprocess.run([sys.executable, "-c", TRAIN_STEPS], env=_env(policy), capture_output=True, text=True,
                              check=True)  # fmt: skip
        return float(done.stdout.strip().splitlines()[-1])
    cache = Path(tempfile.mkdtemp(dir=cache_root))  # empty: every base SVD is computed (cold)
    base = name.split(":", 1)[1]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "intrudim.cli", "analyze", base, base, "--cache", str(cache), "--json",
                    "--no-effective-rank"], env=_env(policy), capture_output=True, check=True)  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MiniLM only (cold analyze of minilm, training steps)")
    args = parser.parse_args()
    workloads = ["analyze:minilm", "train"] if args.quick else ["analyze:smollm2", "train"]
    if not args.quick:  # convert SmolLM2 once, outside the timings
        subprocess.run([sys.executable, "-c", "from intrudim.models.embedded import embedded_model_path; "
                        "embedded_model_path('smollm2', progress=False)"], env=_env("PASSIVE"), check=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for workload in workloads:
            for policy in ("ACTIVE", "PASSIVE"):
                alone = run_workload(workload, policy, root)
                default_env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # the OpenMP default
                neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env=default_env)
                try:
                    time.sleep(2.0)
                    busy = run_workload(workload, policy, root)
                finally:
                    neighbour.kill()
                    neighbour.wait()
                rows.append({"workload": workload, "policy": policy, "alone_seconds": round(alone, 2),
                             "beside_neighbour_seconds": round(busy, 2), "slowdown": round(busy / alone, 2)})  # fmt: skip
                print(f"{workload:16} {policy:8} alone {alone:7.1f} s   beside a busy neighbour {busy:7.1f} s   "
                      f"slowdown ×{busy / alone:.1f}", flush=True)  # fmt: skip
    print(f"cores {os.cpu_count()}, load average at the end {load_average()}")
    OUT_DIR.mkdir(exist_ok=True)
    (OUT_DIR / "bench_shared.json").write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cores": os.cpu_count(), "rows": rows,
    }, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

"""`intrudim scan`: adapters per minute in-process vs on a local Ray runtime with 1 and 2 workers, on the same 8
adapters, in the same run.

Model: a LLaMA (LlamaConfig, random weights) with hidden 1024, 4 layers, MLP 2816 (28 analysed matrices), and 8
LoRA adapters r = 16, α = 32 on all seven projections, each with its own trained-looking B (as in
bench_vs_peft.py). Base and adapters are saved to a temp dir and scanned from disk, each mode into a fresh OUT
with the same warm base SVD cache (the cold base SVDs are a one-time cost per base, timed separately), so the
modes differ only in how the (adapter, matrix) units and the per-adapter reports (JSON, CSV, figures, HTML)
run. Ray is started before its scan and timed apart (``ray start``), so both "scan only" and "with start-up"
rates are shown; the scan time includes the workers' first imports (torch, intrudim). The script checks that
every mode writes the same analyses: the same counts, ranks and sweeps, values equal to float rounding (a Ray task
runs a matrix-major run's stacked products on one thread, this process on every core).

    python benchmarks/bench_scan.py            # 8 adapters, hidden 1024, 4 layers
    python benchmarks/bench_scan.py --quick    # 4 adapters, hidden 512, 2 layers

Writes the table to bench_out/bench_scan.json. Needs the ray extra (pip install 'intrudim[ray]').
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compare_analyses, load_average  # noqa: E402

OUT_DIR = Path("bench_out")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_inputs(
    work: Path, hidden: int, layers: int, mlp: int, r: int, adapters: int
) -> tuple[Path, list[str]]:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.layer import LoraLayer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64, vocab_size=1024, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(work / "base")
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0)
    )
    paths = []
    for i in range(adapters):
        g = torch.Generator().manual_seed(100 + i)
        for _, layer in peft_model.named_modules():
            if isinstance(layer, LoraLayer):
                std = float(10 ** torch.empty(1).uniform_(-2.5, -1.2, generator=g))  # 0.003 … 0.06
                with torch.no_grad():
                    layer.lora_A["default"].weight.copy_(
                        torch.randn(layer.lora_A["default"].weight.shape, generator=g) / hidden**0.5
                    )
                    layer.lora_B["default"].weight.copy_(
                        std * torch.randn(layer.lora_B["default"].weight.shape, generator=g)
                    )
        peft_model.save_pretrained(work / f"adapter_{i}")
        paths.append(str(work / f"adapter_{i}"))
    return work / "base", paths


def cpu_seconds_of_this_process_tree() -> float:
    """User + system CPU seconds of this process and every live descendant (a local Ray runtime's GCS, raylet
    and workers are descendants): the work a scan costs, whatever else shares the cores."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def analyses(out: Path) -> dict[str, list[dict]]:
    return {
        run.name: json.loads((run / "analysis.json").read_text())["matrices"]
        for run in sorted((out / "runs").iterdir())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 adapters, hidden 512, 2 layers")
    args = parser.parse_args()
    hidden, layers, mlp, n_adapters = (512, 2, 1408, 4) if args.quick else (1024, 4, 2816, 8)
    r = 16
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local runtime on this machine only
    import ray

    from intrudim.scan import ScanConfig, scan

    load_start = load_average()
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
          f"threads; LLaMA hidden={hidden} layers={layers} MLP={mlp}, {n_adapters} LoRA adapters r={r}; "
          f"load average at start: {load_start}")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="intrudim_bench_scan_"))
    rows: list[dict] = []
    try:
        base, adapters = build_inputs(work, hidden, layers, mlp, r, n_adapters)
        cache = work / "svd_cache"
        t0 = time.perf_counter()
        scan(base, adapters[:1], work / "cold", cache_dir=cache)
        cold = time.perf_counter() - t0
        print(f"cold base SVDs + first adapter (in-process, once per base): {cold:.1f} s")

        def run(label: str, workers: int | None) -> dict:
            out = work / label.replace(" ", "_")
            startup = 0.0
            if workers is not None:
                t = time.perf_counter()
                ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=200 * 1024 * 1024,
                         log_to_driver=False, logging_level=logging.WARNING)  # fmt: skip
                startup = time.perf_counter() - t
            try:
                config = ScanConfig(engine="ray") if workers is not None else ScanConfig()
                cpu_before = cpu_seconds_of_this_process_tree()
                t = time.perf_counter()
                result = scan(base, adapters, out, config, cache_dir=cache)
                wall = time.perf_counter() - t
                cpu = (
                    cpu_seconds_of_this_process_tree() - cpu_before
                )  # before shutdown: the workers still live
            finally:
                if workers is not None:
                    ray.shutdown()
            assert all(row["error"] is None for row in result.rows), result.rows
            row = {
                "mode": label, "workers": workers, "scan_s": round(wall, 2), "startup_s": round(startup, 2),
                "cpu_s": round(cpu, 2), "adapters_per_min": round(60 * len(adapters) / wall, 2),
                "adapters_per_min_with_startup": round(60 * len(adapters) / (wall + startup), 2),
                "total_intruders": [row["total_intruders"] for row in result.rows], "out": out,
            }  # fmt: skip
            print(f"{label:>16}: scan {wall:6.1f} s (+ start {startup:4.1f} s), {row['adapters_per_min']:5.1f} "
                  f"adapters/min ({row['adapters_per_min_with_startup']:5.1f} with start-up); CPU {cpu:6.1f} s "
                  f"in all processes")  # fmt: skip
            return row

        rows.append(run("in-process", None))
        rows.append(run("ray 1 worker", 1))
        rows.append(run("ray 2 workers", 2))
        reference = analyses(rows[0]["out"])
        agreement = [compare_analyses(reference, analyses(row["out"])) for row in rows[1:]]
        identical = all(text.startswith("same") for text in agreement)
        same_counts = all(row["total_intruders"] == rows[0]["total_intruders"] for row in rows)
        print(
            "\n| mode | scan s | start-up s | adapters/min | with start-up | vs in-process | CPU s (all processes) |"
        )
        print("|---|---|---|---|---|---|---|")
        for row in rows:
            ratio = row["adapters_per_min"] / rows[0]["adapters_per_min"]
            print(f"| {row['mode']} | {row['scan_s']:.1f} | {row['startup_s']:.1f} | {row['adapters_per_min']:.1f} | "
                  f"{row['adapters_per_min_with_startup']:.1f} | {ratio:.2f}x | {row['cpu_s']:.1f} |")  # fmt: skip
        print(
            f"analyses across modes: {'; '.join(agreement)}; intruders per adapter: {rows[0]['total_intruders']}"
        )
        load_end = load_average()
        print(
            f"load average at end: {load_end} (on {os.cpu_count()} cores; well above that means the cores were shared)"
        )
        OUT_DIR.mkdir(exist_ok=True)
        for row in rows:
            row.pop("out")
        (OUT_DIR / "bench_scan.json").write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "hidden": hidden, "layers": layers,
            "mlp": mlp, "r": r, "adapters": n_adapters, "matrices_per_adapter": 7 * layers, "cold_first_s": round(cold, 2),
            "rows": rows, "identical": identical, "same_counts": same_counts, "load_start": load_start,
            "load_end": load_end, "cores": os.cpu_count(),
        }, indent=2) + "\n")  # fmt: skip
        if not (identical and same_counts):
            raise SystemExit("modes disagree: see above")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

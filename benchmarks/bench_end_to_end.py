"""`intrudim analyze` end to end (process start, imports, reading, planning, output) vs a dense SVD reference.

Builds, in a temporary directory, a synthetic LLaMA-shaped base (hidden 4096, MLP 11008; per layer q/k/v/o
4096×4096, gate/up 11008×4096, down 4096×11008; bf16 safetensors, ``config.json`` model_type "llama"; written by
``bench_streaming.write_base``) and a PEFT LoRA adapter (r = 16, α = 32, all seven projections;
``adapter_config.json`` + ``adapter_model.safetensors``): B ~ N(0, 0.01²) on q/v/gate/down, a few strong
directions in B on k/o/up. At this width both kinds put intruders among the top 10 (24 in the default layer), so the
count check below compares non-zero counts.

* **end to end**: one cold ``intrudim analyze BASE ADAPTER --cache DIR`` fills the base SVD cache (timed once);
  then ``python -m intrudim.cli analyze BASE ADAPTER --json --cache DIR --threads T`` runs as a fresh subprocess
  ``--repeats`` times (median). CPU seconds are the child's ``getrusage(RUSAGE_CHILDREN)`` user + system delta:
  interpreter start, imports, reading, planning, analysis, JSON output and exit all included.
* **dense reference** (in this process, same threads): per matrix, W_t = W₀ + (α/r)·B·A in float32, a dense
  ``torch.linalg.svd`` of W_t (float32) and the max |cos| of its top-10 left vectors against every base left
  singular vector U₀ (U₀ read from the cache outside the timer; reading the checkpoint is not timed either, which
  favours the reference). Intruders at k = 10, ε = 0.5; the per-matrix ranks must equal intrudim's.
* **breakdown**: one more child run with CPU-time accumulators wrapped around the phases (interpreter start,
  imports, opening/planning, per matrix: reading W₀, cache lookup (hash + load), reading the factors, the
  structured analysis; JSON output; exit), and the slowest imports of ``-X importtime``.

    python benchmarks/bench_end_to_end.py --threads 1 --clock cpu   # ~12 min on one core (cold cache ~5, dense ~4)
    python benchmarks/bench_end_to_end.py --quick                    # hidden 2048 / MLP 5504: ~2 min

Goal (issue 15): end to end ≥ 30× faster than the dense reference at 4096 wide. Writes bench_out/bench_end_to_end.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from _common import limit_threads, load_average
from bench_streaming import layer_shapes, write_base
from safetensors import safe_open
from safetensors.torch import save_file

OUT_DIR = Path("bench_out")
K, EPSILON, R, ALPHA = 10, 0.5, 16, 32
PLANTED = ("k_proj", "o_proj", "up_proj")
GOAL = 30.0

PROFILED_CHILD = r"""
import json, os, sys, time
T0_CPU, T0_WALL = time.process_time(), time.perf_counter()  # CPU so far = interpreter start + site
acc = {}

def wrap(owner, name, label):
    original = getattr(owner, name, None)
    if original is None:
        return
    def timed(*args, **kwargs):
        c0 = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            entry = acc.setdefault(label, [0.0, 0])
            entry[0] += time.process_time() - c0
            entry[1] += 1
    setattr(owner, name, timed)

import intrudim.cli as cli
T_IMPORT = time.process_time()
from intrudim.analysis import planning, results, running
analyze_module = sys.modules["intrudim.analyze"]  # the attribute intrudim.analyze is the function
from intrudim.weights import svd_cache
wrap(analyze_module, "analyze", "analyze()")
wrap(running, "open_inputs", "open + plan")
wrap(running, "analyze_job", "matrices")
wrap(planning.AnalysisInputs, "base_matrix", "read W0 (+ orient, finite check)")
wrap(svd_cache.BaseSVDCache, "get", "cache get")
wrap(svd_cache, "matrix_hash", "cache: hash W0")
wrap(svd_cache, "load_file", "cache: load U,S,Vh")
wrap(planning.AnalysisInputs, "lora_factors", "read A, B")
wrap(running, "analyze_lora_matrix", "structured analysis")
wrap(running, "lora_core", "lora_core (projections)")
wrap(running, "core_top_k", "core_top_k (ARPACK)")
wrap(running, "low_rank_svd", "low_rank_svd (ΔW)")
wrap(running, "_finish", "_finish")
wrap(results.AnalysisResult, "to_json", "to_json")
sys.argv = ["intrudim"] + sys.argv[1:]
T_MAIN = time.process_time()
try:
    cli.main()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
T_END = time.process_time()
with open(os.environ["BENCH_PHASES"], "w") as fh:
    json.dump({"entry_cpu": T0_CPU, "import_cpu": T_IMPORT - T0_CPU, "main_cpu": T_END - T_MAIN,
               "between_cpu": T_MAIN - T_IMPORT, "wall_in_python": time.perf_counter() - T0_WALL,
               "phases": acc}, fh)
"""


def write_adapter(path: Path, layers: int, hidden: int, mlp: int, seed: int) -> None:
    """PEFT LoRA r=16, α=32 on all seven projections. A ~ N(0, 1/in). B ~ N(0, 0.01²), except on PLANTED
    projections: columns of size c_j = c₀·0.75ʲ (c₀ ≈ 0.6·σ_max(W₀)/s), so the strongest few become intruders."""
    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    scale = ALPHA / R
    for layer in range(layers):
        for name, (out_dim, in_dim) in layer_shapes(hidden, mlp).items():
            prefix = f"base_model.model.model.layers.{layer}.{name}"
            A = torch.randn(R, in_dim, generator=g) / in_dim**0.5
            if name.split(".")[-1] in PLANTED:
                sigma_max = 0.02 * (out_dim**0.5 + in_dim**0.5)  # the Gaussian base's largest σ
                c = 0.6 * sigma_max / scale * 0.75 ** torch.arange(R, dtype=torch.float32)
                B = torch.randn(out_dim, R, generator=g) / out_dim**0.5 * c
            else:
                B = 0.01 * torch.randn(out_dim, R, generator=g)
            tensors[f"{prefix}.lora_A.weight"] = A.contiguous()
            tensors[f"{prefix}.lora_B.weight"] = B.contiguous()
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": R, "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "task_type": "CAUSAL_LM", "base_model_name_or_path": "synthetic-llama",
    }, indent=2))  # fmt: skip


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is not None:
        env.update({n: str(threads) for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    return env


def run_child(argv: list[str], env: dict[str, str]) -> tuple[dict[str, float], str]:
    """Run ``python argv`` to completion; its wall seconds and CPU seconds (user + system, from RUSAGE_CHILDREN)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:3]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu}, proc.stdout


def cli_has_threads(env: dict[str, str]) -> bool:
    proc = subprocess.run([sys.executable, "-m", "intrudim.cli", "analyze", "--help"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    return "--threads" in proc.stdout


def dense_reference(base: Path, adapter: Path, cache: Path, layers: int, hidden: int, mlp: int, clock: str):
    """Per matrix: float32 dense SVD of W₀ + s·B·A and max |cos| against U₀; time and intruder ranks."""
    from intrudim.spectral.intruders import intruder_ranks
    from intrudim.weights.svd_cache import BaseSVDCache

    svd_cache = BaseSVDCache(cache)
    scale = ALPHA / R
    rows = {}
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="pt") as factors:
        for layer in range(layers):
            for name in layer_shapes(hidden, mlp):
                key = f"model.layers.{layer}.{name}.weight"
                with safe_open(str(base / index[key]), framework="pt") as shard:
                    W0_stored = shard.get_tensor(key)
                prefix = f"base_model.model.model.layers.{layer}.{name}"
                A = factors.get_tensor(f"{prefix}.lora_A.weight").to(torch.float32)
                B = factors.get_tensor(f"{prefix}.lora_B.weight").to(torch.float32)
                U0 = svd_cache.get(W0_stored).U.to(torch.float32)  # outside the timer (cache hit)
                W0 = W0_stored.to(torch.float32)
                c0, t0 = time.process_time(), time.perf_counter()
                W_t = W0 + scale * (B @ A)
                U, _, _ = torch.linalg.svd(W_t, full_matrices=False)
                max_cos = (U[:, :K].T @ U0).abs().amax(dim=1).to(torch.float64)
                ranks = intruder_ranks(max_cos, EPSILON)
                seconds = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
                rows[key] = {
                    "seconds": seconds,
                    "ranks": ranks,
                    "min_margin": float((max_cos - EPSILON).abs().min()),
                }
                print(f"  dense {key:40s} {tuple(W_t.shape)} {seconds[clock]:7.2f}s  intruders {len(ranks)} {ranks}",
                      flush=True)  # fmt: skip
                del W_t, U, W0, U0
    if svd_cache.misses:
        print(
            f"  note: {svd_cache.misses} base SVD(s) were not in the cache and were recomputed (outside the timer)"
        )
    return rows


def import_profile(env: dict[str, str], top: int = 12) -> list[tuple[str, float, float]]:
    """Cumulative import times (ms) of the slowest top-level-ish imports of `import intrudim.cli`."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import intrudim.cli"], capture_output=True,
                          text=True, env=env)  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        name = parts[2]
        depth = (len(name) - len(name.lstrip())) // 2
        rows.append((depth, name.strip(), int(parts[0]) / 1000, int(parts[1]) / 1000))
    chosen = [(name, cum, own) for depth, name, own, cum in rows if depth <= 3 and cum >= 10]
    chosen.sort(key=lambda row: -row[1])
    return chosen[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="hidden 2048 / MLP 5504 instead of 4096 / 11008")
    parser.add_argument(
        "--layers", type=int, default=1, help="layers of the synthetic base (7 matrices each)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="end-to-end subprocess runs (median)")
    parser.add_argument(
        "--threads", type=int, default=None, help="pin torch/BLAS threads, here and in the child"
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time used for the ratio: wall-clock, or CPU seconds (robust on a busy machine with --threads 1)")  # fmt: skip
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where to build the checkpoints (default: a temp dir)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints and cache")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="a directory kept by --keep (same shapes): reuse it"
    )
    parser.add_argument(
        "--skip-dense", action="store_true", help="no dense reference (end-to-end timing only)"
    )
    args = parser.parse_args()
    hidden, mlp = (2048, 5504) if args.quick else (4096, 11008)
    clock = args.clock
    pool = limit_threads(args.threads)
    pool.__enter__()
    env = child_env(args.threads)
    load_start = load_average()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads here, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; clock={clock}; LLaMA hidden={hidden} MLP={mlp}, {args.layers} layer(s), "
          f"LoRA r={R} α={ALPHA}; load average at start: {load_start}", flush=True)  # fmt: skip
    work = args.reuse or Path(tempfile.mkdtemp(prefix="intrudim_bench_e2e_", dir=args.workdir))
    keep = args.keep or args.reuse is not None
    base, adapter, cache = work / "base", work / "adapter", work / "cache"
    try:
        if args.reuse is None:
            write_base(base, args.layers, hidden, mlp, torch.bfloat16, seed_of_layer=lambda layer: layer)
            write_adapter(adapter, args.layers, hidden, mlp, seed=1)
        threads_flag = (
            ["--threads", str(args.threads)] if args.threads is not None and cli_has_threads(env) else []
        )
        analyze_argv = ["analyze", str(base), str(adapter), "--json", "--cache", str(cache), *threads_flag]
        cold, _ = run_child(["-m", "intrudim.cli", *analyze_argv], env)
        print(f"first run ({'cache reused: warm' if args.reuse else 'cold: computes and caches the base SVDs'}): "
              f"wall {cold['wall']:.1f}s, CPU {cold['cpu']:.1f}s", flush=True)  # fmt: skip

        # interpreter alone and `import torch` alone: the floor under any torch-based CLI
        floor = {what: run_child(["-c", code], env)[0] for what, code in
                 (("python -c pass", "pass"), ("import torch", "import torch"),
                  ("import intrudim.cli", "import intrudim.cli"))}  # fmt: skip
        runs, outputs = [], []
        for _ in range(args.repeats):
            seconds, stdout = run_child(["-m", "intrudim.cli", *analyze_argv], env)
            runs.append(seconds)
            outputs.append(json.loads(stdout))
        e2e = {c: statistics.median(run[c] for run in runs) for c in ("wall", "cpu")}
        print(f"end to end `intrudim analyze --json {' '.join(threads_flag)}` (median of {args.repeats}): "
              f"wall {e2e['wall']:.2f}s, CPU {e2e['cpu']:.2f}s  (runs, {clock}: "
              f"{', '.join(f'{run[clock]:.2f}' for run in runs)})", flush=True)  # fmt: skip
        ours = {m["name"]: m["intruder_ranks"] for m in outputs[0]["matrices"]}
        stable = all({m["name"]: m["intruder_ranks"] for m in out["matrices"]} == ours for out in outputs)

        # breakdown of one more run, CPU seconds per phase
        phases_file = work / "phases.json"
        profiled, _ = run_child(
            ["-c", PROFILED_CHILD, *analyze_argv], dict(env, BENCH_PHASES=str(phases_file))
        )
        phases = json.loads(phases_file.read_text())
        imports = import_profile(env)

        dense = (
            {} if args.skip_dense else dense_reference(base, adapter, cache, args.layers, hidden, mlp, clock)
        )
        dense_total = {c: sum(row["seconds"][c] for row in dense.values()) for c in ("wall", "cpu")}
        mismatched = sorted(key for key in dense if dense[key]["ranks"] != ours.get(key))
        same = stable and not mismatched and (not dense or set(dense) == set(ours))

        # ---- report
        print(f"\n| what | {clock} s |")
        print("|---|---|")
        print(
            f"| dense reference: {len(dense)} × (W₀+sBA, f32 SVD, max|cos|), sum | {dense_total[clock]:.1f} |"
            if dense
            else "| dense reference | skipped |"
        )
        print(f"| `intrudim analyze --json` end to end, median of {args.repeats} | {e2e[clock]:.2f} |")
        ratio = dense_total[clock] / e2e[clock] if dense else float("nan")
        print(f"| ratio (dense / end to end) | **{ratio:.1f}×** |")
        print(
            f"| first run ({'warm, reused cache' if args.reuse else 'cold: fills the cache'}) | {cold[clock]:.1f} |"
        )
        for what, sec in floor.items():
            print(f"| `python -c '{what}'` (process) | {sec[clock]:.2f} |")

        total_cpu = profiled["cpu"]
        acc = {label: value[0] for label, value in phases["phases"].items()}
        counts = {label: value[1] for label, value in phases["phases"].items()}
        analyze_cpu = acc.get("analyze()", 0.0)
        matrices_cpu = acc.get("matrices", 0.0)
        breakdown = [
            ("interpreter start (+ site)", phases["entry_cpu"]),
            ("imports (`import intrudim.cli`)", phases["import_cpu"]),
            ("open BASE/adapter + plan", acc.get("open + plan", 0.0)),
            (f"matrices ({counts.get('matrices', 0)})", matrices_cpu),
            ("  read W₀ (+ orient, finite check)", acc.get("read W0 (+ orient, finite check)", 0.0)),
            ("  cache get", acc.get("cache get", 0.0)),
            ("    hash W₀", acc.get("cache: hash W0", 0.0)),
            ("    load U, S (and Vh of tall matrices)", acc.get("cache: load U,S,Vh", 0.0)),
            ("  read A, B (+ finite check)", acc.get("read A, B", 0.0)),
            ("  structured analysis", acc.get("structured analysis", 0.0)),
            ("    lora_core (B, A on U₀ and V₀; wide/square: on U₀ and W₀)", acc.get("lora_core (projections)", 0.0)),
            ("    core_top_k (ARPACK)", acc.get("core_top_k (ARPACK)", 0.0)),
            ("    low_rank_svd (ΔW)", acc.get("low_rank_svd (ΔW)", 0.0)),
            ("    _finish (sweeps, energy, alignment)", acc.get("_finish", 0.0)),
            ("rest of analyze() (cache open, progress, result)", analyze_cpu - acc.get("open + plan", 0.0) - matrices_cpu),
            ("CLI around analyze() (option parsing, JSON dump, write)", phases["main_cpu"] - analyze_cpu),
            ("  of which to_json", acc.get("to_json", 0.0)),
            ("interpreter exit (after main)", total_cpu - phases["entry_cpu"] - phases["import_cpu"]
             - phases["between_cpu"] - phases["main_cpu"]),
        ]  # fmt: skip
        print(
            f"\nbreakdown of one end-to-end run (CPU s; this run {total_cpu:.2f}s CPU, {profiled['wall']:.2f}s wall):"
        )
        print("| phase | CPU s | share |")
        print("|---|---|---|")
        for label, seconds in breakdown:
            print(f"| {label} | {seconds:.3f} | {100 * seconds / total_cpu:.0f} % |")
        print("\nslowest imports of `import intrudim.cli` (-X importtime, cumulative ms, one run):")
        for name, cumulative, _own in imports:
            print(f"  {cumulative:8.1f} ms  {name}")

        if dense:
            print(f"\nper matrix: dense {clock} s, intruder ranks dense vs intrudim")
            for key, row in dense.items():
                print(f"  {key:40s} {row['seconds'][clock]:7.2f}s  {row['ranks']} vs {ours.get(key)} "
                      f"(min |max|cos| − ε| {row['min_margin']:.3f}){'' if row['ranks'] == ours.get(key) else '  <-- MISMATCH'}")  # fmt: skip
            print(f"\nCHECK intruder ranks (k={K}, ε={EPSILON}) dense float32 == intrudim on all {len(dense)} matrices "
                  f"({sum(len(v) for v in ours.values())} intruders): {'PASS' if same else 'FAIL ' + str(mismatched)}")  # fmt: skip
            print(
                f"goal ≥{GOAL:.0f}× end to end vs dense: measured {ratio:.1f}× → {'met' if ratio >= GOAL else 'MISSED'}"
            )
        OUT_DIR.mkdir(exist_ok=True)
        out = OUT_DIR / ("bench_end_to_end_quick.json" if args.quick else "bench_end_to_end.json")
        out.write_text(json.dumps({
            "benchmark": "bench_end_to_end", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": args.threads, "clock": clock, "hidden": hidden, "mlp": mlp,
            "layers": args.layers, "lora_r": R, "lora_alpha": ALPHA, "k": K, "epsilon": EPSILON,
            "load_average_start": load_start, "load_average_end": load_average(),
            "end_to_end_s": e2e, "end_to_end_runs": runs, "cold_run_s": cold, "floor_s": floor,
            "dense_total_s": dense_total, "ratio": ratio, "goal": GOAL, "check_pass": same, "mismatched": mismatched,
            "breakdown_cpu_s": dict(breakdown), "profiled_run_s": profiled, "imports_ms": imports,
            "dense": dense, "intrudim_ranks": ours,
        }, indent=2) + "\n")  # fmt: skip
        print(f"load average at end: {load_average()}")
        print(f"wrote {out}")
        if dense and not same:
            raise SystemExit(1)
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

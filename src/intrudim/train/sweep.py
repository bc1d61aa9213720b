"""The paper's rank sweep (Sec. 3-4, Figs. 6, 14, 15, 18): one run per LoRA rank plus full fine-tuning.

Every run uses the same recipe and the same target accuracy, so the runs are compared at equal task
performance (Tables 1-2); they share one base-SVD cache.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.fileio import atomic_path, ensure_writable_directory, write_json_atomic
from intrudim.train.config import TrainConfig
from intrudim.train.devices import TRAINING_DEVICES, check_training_device
from intrudim.train.engine import train
from intrudim.train.figures import pressure_figure
from intrudim.train.prediction import observations, prediction_report
from intrudim.train.ray_sweep import RaySweepOptions, describe_options
from intrudim.train.result import TrainResult
from intrudim.weights.svd_cache import default_cache_dir

PAPER_RANKS: tuple[int | str, ...] = (1, 2, 4, 8, 16, 64, "full")
"""App. A sweeps {1, 2, 4, 8, 16, 64, 768} and full FT; 768 is RoBERTa's width (MiniLM's is 384)."""

SWEEP_FILE = "sweep.json"


def parse_ranks(text: str) -> tuple[int | str, ...]:
    """``"1,2,8,full"`` → (1, 2, 8, "full"), with a clear message for anything else."""
    ranks: list[int | str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item == "full":
            ranks.append("full")
        elif item.isdigit() and int(item) > 0:
            ranks.append(int(item))
        else:
            raise IntrudimError(f"--ranks: '{item}' is neither a positive integer nor 'full' (e.g. --ranks 1,8,64,full).")
    if not ranks:
        raise IntrudimError("--ranks is empty; give e.g. --ranks 1,2,4,8,16,64,full.")
    return tuple(dict.fromkeys(ranks))


def run_name(rank: int | str) -> str:
    return "full" if rank == "full" else f"r-{rank}"


@dataclass(frozen=True)
class SweepResult:
    out_dir: Path
    runs: dict[str, TrainResult]
    prediction: dict[str, Any] | None = None  # intrudim.train.prediction.prediction_report over the runs

    def rows(self) -> list[dict[str, Any]]:
        return [
            {"run": name, "steps": result.steps, "accuracy": result.final_accuracy,
             "reached_target": result.reached_target, "intruders": result.final_intruders,
             "run_dir": str(result.run_dir)}  # fmt: skip
            for name, result in self.runs.items()
        ]


def _config_for(base: TrainConfig, rank: int | str) -> TrainConfig:
    if rank == "full":
        return replace(base, method="full")
    method = base.method if base.method != "full" else "lora"
    return replace(base, method=method, rank=int(rank))


def _completed(run_dir: Path) -> TrainResult | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    data.pop("reached_target", None)
    for key in ("run_dir", "final_dir"):
        data[key] = Path(data[key])
    data["best_dir"] = None if data.get("best_dir") is None else Path(data["best_dir"])
    return TrainResult(**data)


def _sweep_figure(result: SweepResult, destination: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [row for row in result.rows() if row["intruders"] is not None]
    if not rows:
        return
    figure, axis = plt.subplots(figsize=(6, 3.6))
    axis.bar([row["run"] for row in rows], [row["intruders"] for row in rows], color="tab:red")
    axis.set(xlabel="run", ylabel="intruder dimensions (sum over matrices)", title="Intruders by LoRA rank")
    figure.tight_layout()
    with atomic_path(destination) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def prepare_output(out: Path, kind: str, marker: str, *, resume: bool, overwrite: bool) -> Path:
    """OUT of a sweep or a map, ready to write: a non-empty one is refused unless ``resume`` (kept) or ``overwrite``
    (replaced, only when it holds ``marker``: one of ours)."""
    if out.exists() and any(out.iterdir()) and not resume:
        if not overwrite:
            raise IntrudimError(
                f"{kind.capitalize()} directory '{out}' already exists and is not empty. Nothing was changed. Choose "
                f"another --out, pass --resume to finish the {kind} in it, or --overwrite to replace it."
            )
        if not (out / marker).exists():
            raise IntrudimError(f"--overwrite refused: '{out}' is not an intrudim {kind} (no {marker}); choose another --out.")
        shutil.rmtree(out)
    return ensure_writable_directory(out)


def rank_sweep(
    base_config: TrainConfig,
    out_dir: str | Path,
    ranks: tuple[int | str, ...] = PAPER_RANKS,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    cache_dir: str | Path | None = None,
    ray: RaySweepOptions | None = None,
    device: str = "auto",
) -> SweepResult:
    """Train ``base_config`` once per rank (``"full"`` = full fine-tuning) into ``out_dir/r-<rank>``, ``out_dir/full``.

    Writes ``sweep.json`` (steps, accuracy, intruders per run, and how well intruder pressure predicted the
    intruders, :mod:`intrudim.train.prediction`) and ``figures/``. With ``resume``, finished runs are kept and an
    interrupted one continues. The runs share one base-SVD cache, ``cache_dir`` (default: the one every verb uses, ``$INTRUDIM_CACHE`` or
    the user cache; :func:`~intrudim.weights.svd_cache.default_cache_dir`).
    ``ray``: run the runs as Ray tasks (:mod:`intrudim.train.ray_sweep`) instead of one after the other here.
    ``device``: where each run trains (:func:`intrudim.train.engine.train`); on Ray, checked on the worker.
    """
    if ray is None or device not in TRAINING_DEVICES:  # on Ray, a GPU is the worker's: checked there
        check_training_device(device)
    out = prepare_output(Path(out_dir), "sweep", SWEEP_FILE, resume=resume, overwrite=overwrite)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()  # the cache every verb shares
    engine = {"engine": "local"} if ray is None else describe_options(ray)
    runs: dict[str, TrainResult] = {}

    def record(name: str, done: TrainResult) -> None:
        runs[name] = done
        ordered = {run_name(rank): runs[run_name(rank)] for rank in ranks if run_name(rank) in runs}
        write_json_atomic(out / SWEEP_FILE, {"ranks": list(ranks), "config": base_config.to_json(), **engine,
                                             "runs": SweepResult(out, ordered).rows()})  # fmt: skip

    write_json_atomic(out / SWEEP_FILE, {"ranks": list(ranks), "config": base_config.to_json(), **engine, "runs": []})
    todo: list[tuple[str, TrainConfig, Path]] = []
    for rank in ranks:
        name = run_name(rank)
        done = _completed(out / name) if resume else None
        if done is not None:
            record(name, done)
        else:
            todo.append((name, _config_for(base_config, rank), out / name))
    if ray is None:
        for name, config, run_dir in todo:
            record(name, train(config, run_dir, resume=resume and (run_dir / "config.json").exists(),
                               progress=progress, cache_dir=cache, figures=figures, device=device))  # fmt: skip
    elif todo:
        _on_ray(todo, cache, ray, figures, record, progress, device)
    runs = {run_name(rank): runs[run_name(rank)] for rank in ranks}
    tracked = observations([result.run_dir for result in runs.values()])
    result = SweepResult(out, runs, prediction_report(tracked) if tracked else None)
    write_json_atomic(out / SWEEP_FILE, {"ranks": list(ranks), "config": base_config.to_json(), **engine,
                                         "runs": result.rows(), "prediction": result.prediction})  # fmt: skip
    if figures:
        _sweep_figure(result, out / "figures" / "intruders_by_rank.png")
        if result.prediction is not None:
            pressure_figure(tracked, result.prediction, out / "figures" / "pressure_vs_intruders.png")
    return result


def _on_ray(todo: list[tuple[str, TrainConfig, Path]], cache: Path, options: RaySweepOptions, figures: bool,
            record, progress: bool, device: str) -> None:  # fmt: skip
    """The runs of ``todo`` as Ray tasks; a line on stderr as each finishes (and every minute while they run)."""
    from rich.console import Console

    from intrudim.plain_progress import PlainProgress
    from intrudim.train.ray_sweep import run_sweep_on_ray

    console = Console(stderr=True)
    lines = PlainProgress(console, "sweep on Ray", every=60.0)
    finished: list[str] = []

    def done(name: str, result: TrainResult) -> None:
        record(name, result)
        finished.append(name)
        if progress:
            lines(f"{name} finished ({result.message}); {len(finished)}/{len(todo)} runs done, "
                  f"{lines.elapsed:.0f} s", force=True)  # fmt: skip

    def waiting(running: list[str], seconds: float) -> None:
        if progress:
            lines(f"{len(finished)}/{len(todo)} runs done, waiting for {', '.join(running)} ({seconds:.0f} s)")

    if progress:
        lines(f"{len(todo)} runs as Ray tasks ({', '.join(name for name, _, _ in todo)}), "
              f"{options.cpus_per_run} CPU and {options.gpus_per_run:g} GPU each", force=True)  # fmt: skip
    run_sweep_on_ray(todo, cache, options, figures=figures, on_done=done, on_wait=waiting, device=device)

"""The learning-rate × rank map (issue 27, beyond the paper): where do intruders begin?

One rank sweep (:func:`intrudim.train.sweep.rank_sweep`) per LoRA total learning rate α·η, into OUT/lr-<α·η>/,
and full fine-tuning at each of its own learning rates η into OUT/full-lr-<η>/; then, for every run, the forgetting
on a pre-training-like text (the same definition as ``intrudim forgetting``: tuned − base loss with its paired
bootstrap interval, one prepared probe, BASE scored once). Each cell of the map is one run: its intruders, its
held-out task accuracy and its forgetting. ``map.json`` holds every cell, the α·η at which each rank first shows
an intruder, and the recipe that :func:`choose_lr` picks by its written rule; ``figures/lr_rank_map.png`` draws the
three measures side by side.

LoRA's learning rate is its total α·η (App. A keeps it fixed across ranks, α = 2r); full fine-tuning has no α, so
its η is a list of its own (``full_lrs``). A finished map in OUT is reused cell by cell with ``resume``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.evaluate.forgetting_config import ForgettingConfig
from intrudim.fileio import atomic_path, write_json_atomic
from intrudim.train.config import TrainConfig
from intrudim.train.ray_sweep import RaySweepOptions
from intrudim.train.sweep import _completed, _config_for, prepare_output, rank_sweep, run_name

MAP_FILE = "map.json"
FULL_LRS: tuple[float, ...] = (1e-4,)
"""Full fine-tuning's η when none is given: the engine's default on the embedded MiniLM (docs/train.md)."""
MAP_FORGETTING = ForgettingConfig(text="news", max_tokens=4096)
"""Each run's forgetting in the map: 4,096 tokens of the embedded news text (`intrudim forgetting`'s definition)."""
REACHED = 0.9
"""A run "reached the task" when its held-out accuracy is at least this (or its target, when the recipe has one)."""


def parse_lrs(text: str, option: str = "--lrs") -> tuple[float, ...]:
    """``"1e-3,6e-3"`` → (0.001, 0.006), with a clear message for anything else."""
    values: list[float] = []
    for item in (part.strip() for part in text.split(",")):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise IntrudimError(f"{option}: '{item}' is not a positive learning rate (e.g. {option} 1e-3,3e-3,1e-2).")
        values.append(value)
    return tuple(sorted(dict.fromkeys(values)))


def lr_folder(lr: float, *, full: bool = False) -> str:
    return f"{'full-' if full else ''}lr-{lr:g}"


@dataclass(frozen=True)
class MapCell:
    """One run of the map: LoRA at (rank, α·η) or full fine-tuning at η (``rank`` "full", ``lr`` its η)."""

    rank: int | str
    lr: float
    run_dir: str
    steps: int
    accuracy: float | None
    intruders: int | None
    forgetting: float | None = None  # tuned − base loss on the text (nats per token or per sentence pair)
    forgetting_ci95: tuple[float, float] | None = None

    @property
    def is_full(self) -> bool:
        return self.rank == "full"


@dataclass(frozen=True)
class LrMapResult:
    out_dir: Path
    lrs: tuple[float, ...]
    ranks: tuple[int | str, ...]
    full_lrs: tuple[float, ...]
    cells: tuple[MapCell, ...]
    forgetting: dict[str, Any] | None  # measure, text, base loss: how the forgetting column was measured
    reached: float

    def cell(self, rank: int | str, lr: float) -> MapCell | None:
        return next((c for c in self.cells if c.rank == rank and math.isclose(c.lr, lr)), None)

    def lora_ranks(self) -> list[int]:
        return [int(r) for r in self.ranks if r != "full"]

    def first_intruder_lr(self) -> dict[str, float | None]:
        """rank → the smallest α·η of the map at which that rank's run has an intruder (None: at none)."""
        first: dict[str, float | None] = {}
        for rank in self.lora_ranks():
            hits = [lr for lr in self.lrs if (c := self.cell(rank, lr)) is not None and (c.intruders or 0) > 0]
            first[str(rank)] = min(hits) if hits else None
        return first

    def to_json(self) -> dict[str, Any]:
        chosen, rule = choose_lr(self)
        return {
            "lrs": list(self.lrs), "ranks": list(self.ranks), "full_lrs": list(self.full_lrs), "reached": self.reached,
            "cells": [asdict(c) for c in self.cells], "forgetting": self.forgetting,
            "first_intruder_lr": self.first_intruder_lr(), "chosen_lr": chosen, "rule": rule,
        }  # fmt: skip


def choose_lr(result: LrMapResult, rank: int = 1) -> tuple[float | None, str]:
    """The recipe rule of issue 27, written down before any claim is decided: the smallest α·η of the map at which
    LoRA r=``rank`` reaches the task (held-out accuracy ≥ the threshold) within the step budget. None when it
    reaches it at no α·η of the map."""
    rule = (f"the smallest α·η of the map at which LoRA r={rank} reaches held-out accuracy ≥ {result.reached:g} "
            f"within the step budget")  # fmt: skip
    for lr in result.lrs:
        cell = result.cell(rank, lr)
        if cell is not None and cell.accuracy is not None and cell.accuracy >= result.reached:
            return lr, rule
    return None, rule


def _prepare_probe(model: str, config: ForgettingConfig) -> Any:
    """The forgetting probe, prepared before any training so that a model or text it cannot score fails at once."""
    from intrudim.evaluate.forgetting import ForgettingProbe

    return ForgettingProbe.prepare(model, config.text, config)


def _measure_forgetting(probe: Any, cells: list[MapCell]) -> tuple[list[MapCell], dict[str, Any]]:
    base_scores = probe.scores(probe.load_base_model())
    measured = []
    for cell in cells:
        if cell.forgetting is None:
            tuned, _ = probe.load_tuned_model(Path(cell.run_dir) / "final")
            result = probe.summarize(base_scores, probe.scores(tuned))
            cell = replace(cell, forgetting=float(result.delta), forgetting_ci95=(float(result.ci95[0]), float(result.ci95[1])))
        measured.append(cell)
    about = {"measure": probe.measure, "text": probe.text.to_json(), "max_tokens": probe.config.max_tokens,
             "settings": _forgetting_settings(probe.config),
             "base_loss": float(base_scores.losses.mean())}  # fmt: skip
    return measured, about


def _forgetting_settings(config: ForgettingConfig) -> dict[str, Any]:
    return {"text": str(config.text), "max_tokens": config.max_tokens, "seq_len": config.seq_len}


def _stored_forgetting(out: Path, config: ForgettingConfig | None) -> dict[str, tuple[float, tuple[float, float] | None]]:
    """run dir → the forgetting a previous map in OUT measured with the same text, tokens and windows (reused
    with ``resume``; measured again otherwise)."""
    path = out / MAP_FILE
    if config is None or not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return {}
    if (stored.get("forgetting") or {}).get("settings") != _forgetting_settings(config):
        return {}
    cells = stored.get("cells", [])
    return {c["run_dir"]: (c["forgetting"], tuple(c["forgetting_ci95"]) if c.get("forgetting_ci95") else None)
            for c in cells if c.get("forgetting") is not None}  # fmt: skip


def lr_rank_map(
    base_config: TrainConfig,
    out_dir: str | Path,
    lrs: tuple[float, ...],
    ranks: tuple[int | str, ...],
    *,
    full_lrs: tuple[float, ...] = FULL_LRS,
    forgetting: ForgettingConfig | None = MAP_FORGETTING,
    reached: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    figures: bool = True,
    cache_dir: str | Path | None = None,
    ray: RaySweepOptions | None = None,
    device: str = "auto",
    workers: int = 1,
    on_step: Callable[[Any, int], None] | None = None,
) -> LrMapResult:
    """Train every (rank, α·η) cell (and full fine-tuning at each of ``full_lrs``) into OUT, measure each run's
    forgetting as ``forgetting`` says (its text, tokens, windows; None: not measured), write OUT/map.json and
    OUT/figures/lr_rank_map.png.

    ``reached``: the accuracy a run must reach to count as having learned the task (default: the recipe's
    ``target_accuracy``, else :data:`REACHED`). ``workers`` > 1 (in-process, not ``ray``): every unfinished
    cell of the map trains first, that many runs side by side (:mod:`intrudim.train.side_by_side`, the same weights
    as one after the other), ``on_step((lr, rank), step)`` after each of their steps; the sweeps then find them
    finished. Every other argument is :func:`~intrudim.train.sweep.rank_sweep`'s.
    """
    if not lrs:
        raise IntrudimError("--lrs is empty; give e.g. --lrs 1e-3,3e-3,1e-2.")
    out = prepare_output(Path(out_dir), "map", MAP_FILE, resume=resume, overwrite=overwrite)
    lora_ranks = tuple(dict.fromkeys(r for r in ranks if r != "full"))
    threshold = reached if reached is not None else (base_config.target_accuracy or REACHED)
    stored = _stored_forgetting(out, forgetting) if resume else {}
    if forgetting is not None and device == "cuda":
        forgetting = replace(forgetting, device="cuda")
    probe = None if forgetting is None else _prepare_probe(base_config.model, forgetting)
    options = dict(progress=progress, figures=figures, cache_dir=cache_dir, ray=ray, device=device)
    cells: list[MapCell] = []

    def collect(result: Any, lr: float, swept: tuple[int | str, ...]) -> None:
        for rank, run in zip(swept, result.runs.values(), strict=True):  # rank_sweep keeps the order of its ranks
            forgetting, ci = stored.get(str(run.run_dir), (None, None))
            cells.append(MapCell(rank=rank, lr=lr, run_dir=str(run.run_dir), steps=run.steps,
                                 accuracy=run.final_accuracy, intruders=run.final_intruders, forgetting=forgetting,
                                 forgetting_ci95=ci))  # fmt: skip

    if workers > 1 and ray is None:
        _train_cells_side_by_side(base_config, out, lrs, lora_ranks, full_lrs if "full" in ranks else (),
                                  cache_dir, workers, figures, on_step, device)  # fmt: skip
    if lora_ranks:
        for lr in lrs:
            config = _rate_config(base_config, lr)
            collect(rank_sweep(config, out / lr_folder(lr), lora_ranks, resume=True, **options), lr, lora_ranks)  # type: ignore[arg-type]
    if "full" in ranks:
        for lr in full_lrs:
            config = _rate_config(base_config, lr, full=True)
            collect(rank_sweep(config, out / lr_folder(lr, full=True), ("full",), resume=True, **options), lr, ("full",))  # type: ignore[arg-type]
    about = None
    if probe is not None:
        cells, about = _measure_forgetting(probe, cells)
    result = LrMapResult(out, tuple(lrs), tuple(ranks), tuple(full_lrs) if "full" in ranks else (), tuple(cells),
                         about, threshold)  # fmt: skip
    write_json_atomic(out / MAP_FILE, {"config": base_config.to_json(), **result.to_json()})
    if figures:
        from intrudim.train.figures import lr_map_figure

        with atomic_path(out / "figures" / "lr_rank_map.png") as tmp:
            lr_map_figure(result).savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return result


def _rate_config(base_config: TrainConfig, lr: float, *, full: bool = False) -> TrainConfig:
    """The recipe of one learning rate of the map: LoRA's total α·η (``lr`` unset), or full fine-tuning's η."""
    return replace(base_config, lr=lr) if full else replace(base_config, total_lr=lr, lr=None)


def _train_cells_side_by_side(
    base_config: TrainConfig, out: Path, lrs: tuple[float, ...], lora_ranks: tuple[int | str, ...],
    full_lrs: tuple[float, ...], cache_dir: str | Path | None, workers: int, figures: bool,
    on_step: Callable[[Any, int], None] | None, device: str = "auto",
) -> None:
    """Train every cell of the map that has no finished run yet, ``workers`` at a time on ``device``, into the
    folder its rank sweep reads (OUT/lr-<α·η>/r-<rank>, OUT/full-lr-<η>/full)."""
    from intrudim.train.side_by_side import train_side_by_side
    from intrudim.weights.svd_cache import default_cache_dir

    jobs: dict[Any, tuple[TrainConfig, Path]] = {}
    for lr in lrs:
        for rank in lora_ranks:
            run_dir = out / lr_folder(lr) / run_name(rank)
            if _completed(run_dir) is None:
                jobs[(lr, rank)] = (_config_for(_rate_config(base_config, lr), rank), run_dir)
    for lr in full_lrs:
        run_dir = out / lr_folder(lr, full=True) / run_name("full")
        if _completed(run_dir) is None:
            jobs[(lr, "full")] = (_config_for(_rate_config(base_config, lr, full=True), "full"), run_dir)
    if jobs:
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        train_side_by_side(jobs, cache, workers=workers, figures=figures, device=device, on_step=on_step)

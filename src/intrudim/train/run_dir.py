"""The run directory: refuse to clobber, resume only what matches, record the frozen config."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.fileio import ensure_writable_directory, write_json_atomic
from intrudim.train.config import TrainConfig

RUN_KIND = "intrudim-train-run"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"


def _read_run_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("kind") == RUN_KIND else None


# Fields added to TrainConfig after format 1 was first written, with the behaviour that runs written before
# them had: a run directory without the key trained that way, so resuming compares against it.
FIELDS_ADDED_LATER: dict[str, Any] = {"schedule": "linear", "max_grad_norm": None, "objective": "classification"}
# Fields whose command-line option is worth naming because it is not the field's name, or needs a word.
_OPTION_OF_FIELD = {
    "max_grad_norm": "--max-grad-norm (0 turns clipping off)", "max_steps": "--steps", "intruder_k": "--k",
    "intruder_epsilon": "--epsilon", "track_intruders": "--track/--no-track",
    "objective": "--objective",
}  # fmt: skip


def _config_differences(stored: dict[str, Any], config: TrainConfig) -> list[str]:
    differences = []
    for key, value in config.to_json().items():
        if key == "resolved":
            continue
        recorded = stored.get(key, FIELDS_ADDED_LATER.get(key))
        if recorded != value:
            option = f" (option {_OPTION_OF_FIELD[key]})" if key in _OPTION_OF_FIELD else ""
            differences.append(f"{key}: {recorded!r} in the run, {value!r} now{option}")
    return differences


def prepare_run_dir(
    run_dir: Path, config: TrainConfig, base_model: Path, *, resume: bool, overwrite: bool
) -> bool:
    """Check and create ``run_dir``; write config.json. Returns True when an existing run is resumed."""
    if check_run_dir(run_dir, config, resume=resume, overwrite=overwrite):
        return True
    if run_dir.exists() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)  # check_run_dir allowed it: --overwrite of an intrudim run
    ensure_writable_directory(run_dir)
    write_json_atomic(run_dir / CONFIG_FILE, run_config_json(config, base_model))
    return False


def check_run_dir(run_dir: Path, config: TrainConfig, *, resume: bool, overwrite: bool) -> bool:
    """Raise unless ``run_dir`` may be used as asked; changes nothing. True when an existing run is resumed."""
    if resume and overwrite:
        raise IntrudimError("--resume and --overwrite contradict each other; give one of them.")
    exists_with_content = run_dir.exists() and any(run_dir.iterdir())
    stored = _read_run_config(run_dir) if run_dir.exists() else None
    if resume:
        if stored is None:
            raise IntrudimError(
                f"Nothing to resume in '{run_dir}': it holds no intrudim run (no {CONFIG_FILE} of a training run). "
                f"Run without --resume to start one."
            )
        differences = _config_differences(stored, config)
        if differences:
            raise IntrudimError(
                f"Cannot resume '{run_dir}' with different options ({'; '.join(differences)}). Resume with the "
                f"options of {run_dir / CONFIG_FILE}, or start a new run in another --out."
            )
        return True
    if exists_with_content:
        if not overwrite:
            raise IntrudimError(
                f"Output directory '{run_dir}' already exists and is not empty. Nothing was changed. Choose another "
                f"--out, pass --resume to continue the run in it, or --overwrite to replace it."
            )
        if stored is None:
            raise IntrudimError(
                f"--overwrite refused: '{run_dir}' is not an intrudim training run (no {CONFIG_FILE} of one), so "
                f"intrudim will not delete it. Choose another --out."
            )
    return False


def run_config_json(config: TrainConfig, base_model: Path) -> dict[str, Any]:
    """config.json of a run: the TrainConfig fields, the resolved values, and the base model's folder."""
    return {
        "kind": RUN_KIND,
        "format_version": 1,
        "producer": "intrudim",
        **config.to_json(),
        "base_model": str(base_model),
        "head": (
            "none: the causal LM's own LM head (frozen) scores each label's answer text after the prompt"
            if config.objective == "causal-lm"
            else "a sequence-classification head (fresh if the base has none) is trained, with BERT's pooler"
        ),
    }

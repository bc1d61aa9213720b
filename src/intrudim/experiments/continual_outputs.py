"""A continual run's out_dir: refusing to clobber, resuming only matching settings, writing the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.experiments.continual_config import (
    _PER_RUN_FIELDS,
    ACCURACY_FIGURE,
    CONFIG_FILE,
    CONTINUAL_KIND,
    CSV_FILE,
    FORMAT_VERSION,
    INTRUDERS_FIGURE,
    RESULT_FILE,
    ContinualConfig,
)
from intrudim.experiments.continual_results import ContinualResult
from intrudim.fileio import ensure_writable_directory, write_json_atomic, write_text_atomic


def _config_differences(stored: dict[str, Any], config: ContinualConfig) -> list[str]:
    """'field: stored → now' for every setting that differs (the template's per-stage fields excepted)."""
    from intrudim.train.run_dir import _OPTION_OF_FIELD

    now = config.to_json()
    differences = []
    for key in ("tasks", "ranks", "method", "k", "epsilon"):
        if stored.get(key) != now[key]:
            differences.append(f"{key}: {stored.get(key)!r} in the run, {now[key]!r} now")
    stored_train = stored.get("train", {}) if isinstance(stored.get("train"), dict) else {}
    for key, value in now["train"].items():
        if key in _PER_RUN_FIELDS or key == "resolved":
            continue
        if stored_train.get(key) != value:
            option = f" (option {_OPTION_OF_FIELD[key]})" if key in _OPTION_OF_FIELD else f" (option --{key.replace('_', '-')})"
            differences.append(f"train.{key}: {stored_train.get(key)!r} in the run, {value!r} now{option}")
    return differences


def _prepare_out(out: Path, config: ContinualConfig, base_model: Path, objective: str, resume: bool) -> None:
    """Refuse to clobber, resume only what matches; write config.json for a new run. Changes nothing on error."""
    exists_with_content = out.is_dir() and any(out.iterdir())
    if out.exists() and not out.is_dir():
        raise IntrudimError(f"--out '{out}' is a file, not a directory. Choose a directory for the continual run.")
    if resume:
        path = out / CONFIG_FILE
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if not isinstance(stored, dict) or stored.get("kind") != CONTINUAL_KIND:
            raise IntrudimError(
                f"Nothing to resume in '{out}': it holds no continual run (no {CONFIG_FILE} of one). Run without "
                f"--resume to start one."
            )
        differences = _config_differences(stored, config)
        if differences:
            raise IntrudimError(
                f"Cannot resume '{out}' with different settings ({'; '.join(differences)}). Resume with the settings "
                f"stored in {path}, or start a new run in another --out."
            )
        ensure_writable_directory(out)
        return
    if exists_with_content:
        raise IntrudimError(
            f"Output directory '{out}' already exists and is not empty. Nothing was changed. Choose another --out, "
            f"or pass --resume to continue the continual run in it."
        )
    ensure_writable_directory(out)
    write_json_atomic(out / CONFIG_FILE, {
        "kind": CONTINUAL_KIND, "format_version": FORMAT_VERSION, "producer": "intrudim", **config.to_json(),
        "base_model": str(base_model), "objective": objective,
    })  # fmt: skip


def _write_outputs(result: ContinualResult) -> None:
    from intrudim.report.continual_figures import accumulation_figure, accuracy_figure

    out = result.out_dir
    result.paths = {"json": out / RESULT_FILE, "csv": out / CSV_FILE, "accuracy_figure": out / ACCURACY_FIGURE,
                    "intruders_figure": out / INTRUDERS_FIGURE}  # fmt: skip
    from intrudim.fileio import write_bytes_atomic

    write_bytes_atomic(result.paths["accuracy_figure"], accuracy_figure(result.to_json()))
    write_bytes_atomic(result.paths["intruders_figure"], accumulation_figure(result.to_json()))
    write_text_atomic(result.paths["csv"], result.to_csv())
    write_json_atomic(result.paths["json"], result.to_json())

"""The TUNED inputs of a scan: paths given one by one and by ``--glob``, in input order, each with a short unique
name for its analysis directory (``OUT/runs/<name>/``)."""

from __future__ import annotations

import glob as globbing
import re
from pathlib import Path

from intrudim.errors import IntrudimError
from intrudim.models.references import trainer_output_checkpoints

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[list[str | int], str]:
    """Sort key that reads numbers as numbers: ``checkpoint-5`` before ``checkpoint-10``, ``r2`` before ``r16``
    (ties, such as ``r02`` and ``r2``, by the text itself)."""
    parts = _DIGITS.split(text)  # text, number, text, …: numbers at odd positions, so keys compare like with like
    return [int(part) if i % 2 else part for i, part in enumerate(parts)], text


def expand_inputs(tuned: list[str], pattern: str | None) -> list[str]:
    """``tuned`` as given, then what ``pattern`` matches, in natural order (numbers as numbers: ``checkpoint-5``
    before ``checkpoint-10``); a pattern that matches nothing is an error, and so is no input at all. A Trainer
    ``output_dir`` (``checkpoint-N`` folders and no model of its own) stands for its checkpoints, ordered by
    training step."""
    inputs = [str(t) for t in tuned]
    if pattern is not None:
        matches = sorted(globbing.glob(str(Path(pattern).expanduser()), recursive=True), key=natural_key)
        if not matches:
            raise IntrudimError(
                f"--glob {pattern!r} matches nothing (relative to '{Path.cwd()}'). Quote the pattern so the shell "
                f"does not expand it, and check it with `ls {pattern}`; e.g. --glob 'runs/*/final'."
            )
        inputs += [m for m in matches if m not in inputs]
    inputs = [item for spec in inputs for item in _checkpoints_or_itself(spec)]
    if not inputs:
        raise IntrudimError(
            "Nothing to scan: give TUNED adapters, run directories or fine-tuned models after BASE, or --glob PATTERN."
        )
    return inputs


def run_names(inputs: list[str]) -> list[str]:
    """One directory name per input, unique: the input's last path component (a run's name rather than its
    ``final``), with parent components prepended only where two inputs would share a name."""
    parts = [_name_parts(spec) for spec in inputs]
    depth = [1] * len(inputs)
    while True:
        names = ["__".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]
        grow = [i for i, n in enumerate(names) if depth[i] < len(parts[i])
                and any(m == n and parts[j] != parts[i] for j, m in enumerate(names))]  # fmt: skip
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    unique = []
    for name in names:  # the same path given twice: number the repeats
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def _name_parts(spec: str) -> list[str]:
    path = Path(spec).expanduser()
    try:
        path = path.resolve()
    except OSError:
        pass
    parts = [_UNSAFE.sub("_", p) for p in path.parts if p not in ("/", "")]
    if len(parts) > 1 and parts[-1] == "final":  # RUN_DIR/final: the run's name says which one it is
        parts = parts[:-1]
    return parts or ["tuned"]


def _checkpoints_or_itself(spec: str) -> list[str]:
    checkpoints = trainer_output_checkpoints(Path(spec).expanduser())
    return [str(Path(spec) / checkpoint.name) for _, checkpoint in checkpoints] or [spec]

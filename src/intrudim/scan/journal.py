"""The matrices a scan has finished for an input whose files are not written yet: ``OUT/runs/<name>/matrices.jsonl``,
one line per matrix result, appended as each matrix unit finishes, so that ``--resume`` after a kill redoes no
finished matrix (a matrix-major scan finishes its inputs only at the end of each batch). The file goes once the
input's files are written."""

from __future__ import annotations

import json
from pathlib import Path

from intrudim.analysis.results import MatrixResult
from intrudim.scan.units import UnitOutcome

JOURNAL = "matrices.jsonl"


def journal_path(out_dir: Path, name: str) -> Path:
    return out_dir / "runs" / name / JOURNAL


def record(out_dir: Path, name: str, tuned: str, base_key: str, outcome: UnitOutcome) -> None:
    """Append one finished matrix of input ``name`` (its whole result, similarity rows included)."""
    assert outcome.result is not None
    path = journal_path(out_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"tuned": tuned, "base_key": base_key, "seconds": outcome.seconds, "cache_hit": outcome.cache_hit,
                       "result": outcome.result.to_json(include_similarity=True)})  # fmt: skip
    with open(path, "a+b") as journal:
        if journal.tell():  # a line cut short by a kill stays a line of its own (skipped when read)
            journal.seek(-1, 2)
            if journal.read(1) != b"\n":
                line = "\n" + line
        journal.write((line + "\n").encode("utf-8"))


def recorded(out_dir: Path, name: str, tuned: str) -> dict[str, UnitOutcome]:
    """base key → outcome of every matrix an earlier scan into OUT finished for this input (same TUNED). A line cut
    short by a kill, or one that does not read back, is left out: that matrix is analysed again."""
    path = journal_path(out_dir, name)
    found: dict[str, UnitOutcome] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
            if entry["tuned"] != tuned:
                continue
            found[entry["base_key"]] = UnitOutcome(result=MatrixResult.from_json(entry["result"]),
                                                   cache_hit=bool(entry["cache_hit"]), seconds=float(entry["seconds"]))
        except (ValueError, KeyError, TypeError):
            continue
    return found


def forget(out_dir: Path, name: str) -> None:
    """Remove the input's journal (its files are written: they hold every matrix; or it failed: it is analysed
    whole again), and its folder if nothing else is in it."""
    path = journal_path(out_dir, name)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()  # only when empty
    except OSError:
        pass

"""Loaders for the paper's six tasks (Section 3, Appendix A) through ``datasets``, offline.

Each task is read from a local path given by the user (a ``save_to_disk`` folder, or a folder of
``<split>.jsonl|json|csv|parquet`` files in the dataset's own column format) or from the local
``datasets`` cache, never from the network. Input formatting follows the recipe of the paper
(Hu et al. 2021 for GLUE; the official RoBERTa recipes for WinoGrande and Social IQa):

- MNLI: (premise, hypothesis), labels entailment / neutral / contradiction; validation = matched.
- SST-2: sentence, labels negative / positive.
- QQP: (question1, question2), labels not duplicate / duplicate.
- WinoGrande: multiple choice; the sentence is split at ``_`` into (prefix, option + rest), once per
  option, as the AllenAI baseline does; ``answer`` "1"/"2".
- SIQA: multiple choice over (context + question, answerA|B|C); ``label`` "1"/"2"/"3".
- FEVER: claim, with its evidence text as a pair when the rows carry one (``evidence`` column);
  labels SUPPORTS / REFUTES / NOT ENOUGH INFO; rows repeated per evidence id are kept once per ``id``.

Rows without a gold label (the unlabelled test splits: label -1 or an empty answer) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError
from intrudim.tasks.base import Example, Task, TaskInfo, TaskKind

_DATA_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_FEVER_LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")

Row = Mapping[str, Any]


@dataclass(frozen=True)
class RealTaskSpec:
    """Where a paper task lives on the Hub (for the local cache) and how its rows become examples."""

    name: str
    kind: TaskKind
    label_names: tuple[str, ...]
    hub_path: str
    hub_config: str | None
    train_splits: tuple[str, ...]
    validation_splits: tuple[str, ...]
    columns: tuple[str, ...]
    format_row: Callable[[Row], Example | None]
    description: str

    def info(self) -> TaskInfo:
        return TaskInfo(
            name=self.name,
            kind=self.kind,
            num_classes=len(self.label_names),
            description=self.description,
            offline=False,
            train_size=None,
            validation_size=None,
            paper="Sec. 3, App. A, Tables 1-2",
            source=f"datasets: {self.hub_path}" + (f"/{self.hub_config}" if self.hub_config else ""),
        )


def _int_label(value: Any, offset: int = 0) -> int | None:
    """An integer label (strings like "1" accepted), shifted by ``offset``; None for unlabelled rows."""
    if value is None or value == "":
        return None
    label = int(value) + offset
    return None if label < 0 else label


def _format_mnli(row: Row) -> Example | None:
    label = _int_label(row["label"])
    return None if label is None else Example(((row["premise"], row["hypothesis"]),), label)


def _format_sst2(row: Row) -> Example | None:
    label = _int_label(row["label"])
    return None if label is None else Example(((row["sentence"], None),), label)


def _format_qqp(row: Row) -> Example | None:
    label = _int_label(row["label"])
    return None if label is None else Example(((row["question1"], row["question2"]),), label)


def _format_winogrande(row: Row) -> Example | None:
    label = _int_label(row["answer"], offset=-1)
    sentence: str = row["sentence"]
    if label is None or "_" not in sentence:
        return None
    cut = sentence.index("_")
    prefix, rest = sentence[:cut].rstrip(), sentence[cut + 1 :]
    choices = tuple((prefix, f"{row[option]}{rest}") for option in ("option1", "option2"))
    return Example(choices, label)


def _format_siqa(row: Row) -> Example | None:
    label = _int_label(row["label"], offset=-1)
    if label is None:
        return None
    context = f"{row['context']} {row['question']}"
    return Example(tuple((context, row[key]) for key in ("answerA", "answerB", "answerC")), label)


def _format_fever(row: Row) -> Example | None:
    raw = row["label"]
    if isinstance(raw, str):
        if raw.upper() not in _FEVER_LABELS:
            return None
        label = _FEVER_LABELS.index(raw.upper())
    else:
        label = _int_label(raw)
        if label is None:
            return None
    evidence = row.get("evidence")
    if isinstance(evidence, Sequence) and not isinstance(evidence, str):
        evidence = " ".join(str(part) for part in evidence if part)
    return Example(((row["claim"], evidence or None),), label)


def real_task_specs() -> tuple[RealTaskSpec, ...]:
    """The paper's six tasks, in the order of its tables."""
    return (
        RealTaskSpec(
            "mnli", "classification", ("entailment", "neutral", "contradiction"), "nyu-mll/glue", "mnli",
            ("train",), ("validation_matched", "validation", "dev_matched", "dev"),
            ("premise", "hypothesis", "label"), _format_mnli, "entailment over sentence pairs (3 classes)",
        ),
        RealTaskSpec(
            "sst2", "classification", ("negative", "positive"), "nyu-mll/glue", "sst2",
            ("train",), ("validation", "dev"), ("sentence", "label"), _format_sst2,
            "sentiment of movie-review sentences",
        ),
        RealTaskSpec(
            "qqp", "classification", ("not_duplicate", "duplicate"), "nyu-mll/glue", "qqp",
            ("train",), ("validation", "dev"), ("question1", "question2", "label"), _format_qqp,
            "duplicate Quora question pairs",
        ),
        RealTaskSpec(
            "winogrande", "multiple_choice", ("option1", "option2"), "allenai/winogrande", "winogrande_xl",
            ("train",), ("validation", "dev"), ("sentence", "option1", "option2", "answer"),
            _format_winogrande, "pronoun resolution, 2-way multiple choice",
        ),
        RealTaskSpec(
            "siqa", "multiple_choice", ("answerA", "answerB", "answerC"), "allenai/social_i_qa", None,
            ("train",), ("validation", "dev"),
            ("context", "question", "answerA", "answerB", "answerC", "label"), _format_siqa,
            "social commonsense QA, 3-way multiple choice",
        ),
        RealTaskSpec(
            "fever", "classification", ("supports", "refutes", "not_enough_info"), "fever/fever", "v1.0",
            ("train",), ("labelled_dev", "validation", "paper_dev", "dev"), ("claim", "label"), _format_fever,
            "fact verification of claims (3 classes)",
        ),
    )


def _how_to_provide(spec: RealTaskSpec) -> str:
    config = f", '{spec.hub_config}'" if spec.hub_config else ""
    return (
        f"Provide it with --data-path DIR: either a folder written by datasets' save_to_disk, or a folder of "
        f"files named by split (train.jsonl and one of {'/'.join(spec.validation_splits)} as "
        f".jsonl/.json/.csv/.parquet) with the columns {', '.join(spec.columns)}; or download it once on a "
        f"machine with network (datasets.load_dataset('{spec.hub_path}'{config})) so that it is in the "
        f"local datasets cache."
    )


def _load_local(spec: RealTaskSpec, path: Path) -> Mapping[str, Any]:
    """Read a save_to_disk folder or a folder of per-split data files."""
    import datasets

    if not path.exists():
        raise IntrudimError(f"Data path '{path}' for task '{spec.name}' does not exist. {_how_to_provide(spec)}")
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    files = sorted(p for p in path.iterdir() if p.suffix in _DATA_FILE_BUILDERS) if path.is_dir() else []
    if not files:
        raise IntrudimError(
            f"Data path '{path}' for task '{spec.name}' holds no dataset_dict.json and no "
            f".jsonl/.json/.csv/.parquet files. {_how_to_provide(spec)}"
        )
    builders = {_DATA_FILE_BUILDERS[p.suffix] for p in files}
    if len(builders) > 1:
        raise IntrudimError(
            f"Data path '{path}' mixes file formats ({', '.join(sorted(builders))}); keep one format per folder."
        )
    data_files = {p.stem: str(p) for p in files}
    try:
        return datasets.load_dataset(builders.pop(), data_files=data_files)
    except Exception as exc:  # datasets raises many kinds for malformed files
        raise IntrudimError(f"Could not read the files in '{path}' for task '{spec.name}': {exc}") from None


def _load_cached(spec: RealTaskSpec) -> Mapping[str, Any]:
    """Read the task from the local ``datasets`` cache only; never touch the network."""
    import datasets

    previous = os.environ.get("HF_DATASETS_OFFLINE")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        return datasets.load_dataset(spec.hub_path, spec.hub_config)
    except Exception:
        raise IntrudimError(
            f"Task '{spec.name}' is not in the local datasets cache and no --data-path was given. "
            f"{_how_to_provide(spec)}"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("HF_DATASETS_OFFLINE", None)
        else:
            os.environ["HF_DATASETS_OFFLINE"] = previous


def _pick_split(spec: RealTaskSpec, splits: Mapping[str, Any], names: tuple[str, ...], where: str) -> Any:
    for name in names:
        if name in splits:
            return splits[name]
    raise IntrudimError(
        f"Task '{spec.name}' from {where} has the splits {sorted(splits)}; expected one of {list(names)}. "
        f"Name the files or splits accordingly."
    )


def _format_split(spec: RealTaskSpec, rows: Any, where: str, limit: int | None) -> tuple[Example, ...]:
    missing = [column for column in spec.columns if column not in rows.column_names]
    if missing:
        raise IntrudimError(
            f"Task '{spec.name}' from {where}: columns {missing} are missing (found {rows.column_names}). "
            f"The loader expects the dataset's own column names: {', '.join(spec.columns)}."
        )
    examples: list[Example] = []
    seen_ids: set[Any] = set()
    for row in rows:
        if "id" in row and spec.name == "fever":
            if row["id"] in seen_ids:
                continue
            seen_ids.add(row["id"])
        example = spec.format_row(row)
        if example is not None:
            examples.append(example)
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise IntrudimError(f"Task '{spec.name}' from {where}: no labelled rows in the split.")
    return tuple(examples)


def load_real_task(
    spec: RealTaskSpec,
    data_path: str | os.PathLike[str] | None,
    max_train_examples: int | None = None,
    max_validation_examples: int | None = None,
) -> Task:
    """Load and format one of the paper's tasks from a local path or the local cache."""
    if data_path is not None:
        where = f"'{data_path}'"
        splits = _load_local(spec, Path(data_path))
    else:
        where = "the datasets cache"
        splits = _load_cached(spec)
    train = _format_split(spec, _pick_split(spec, splits, spec.train_splits, where), where, max_train_examples)
    validation = _format_split(
        spec, _pick_split(spec, splits, spec.validation_splits, where), where, max_validation_examples
    )
    return Task(
        name=spec.name,
        kind=spec.kind,
        label_names=spec.label_names,
        train=train,
        validation=validation,
        source=str(data_path) if data_path is not None else spec.info().source,
    )

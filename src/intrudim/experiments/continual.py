"""Continual learning (Fig. 8 / 17, v2 abstract): tasks trained one after another, intruders accumulating.

For every method (a LoRA rank, or full fine-tuning) the tasks are trained in order. Stage t starts from the
weights after stage t − 1; a LoRA adapter is merged into the weights before the next stage, and the next stage
trains a fresh adapter on them (Sec. 4.2: "we merge the LoRA weights into the model and reinitialize them").
After every stage:

- every task's held-out accuracy is measured: the **accuracy matrix** (stage × task). An encoder keeps one
  head per task (BERT's pooler and the classifier, the modules intrudim trains as the head), saved right after
  the task's own stage and put back on the current weights to evaluate it later; a task not trained yet has no
  head, so its entry is None. A causal LM scores each label's answer text with its own LM head, so every task
  is measured at every stage, stage 0 being the base model.
- the intruder dimensions of the current (merged) weights are counted against the ORIGINAL base model, so that
  they accumulate over stages, together with their share of each matrix's energy.

A task's **baseline** is the accuracy it reached right after its own stage (measured on the merged weights with
its head); its **forgetting** is the baseline minus its accuracy after the last stage. The paper retrains each
task's classification head at every stage and draws the pre-trained model's accuracy as the baseline; keeping
the head measures the change of the shared weights alone, without a probe fitted per stage (docs/continual.md).

Layout of ``out_dir``::

    config.json                      the ContinualConfig (``--resume`` compares against it)
    continual.json, continual.csv    the accuracy matrices, baselines, intruders per stage, per method
    figures/continual_accuracy.png   Fig. 8: accuracy per task over stages, one panel per task
    figures/continual_intruders.png  intruders (and energy share) against the original base, per stage
    svd_cache/                       the original base's SVDs, shared by every count
    <method>/stage-0.json            the base model's accuracies (causal LM), or none (encoder)
    <method>/stage-<t>-<task>/       run/ (the `train` run), merged/ (weights after the stage, heads removed),
                                     head.safetensors (encoder: the task's head), stage.json (written last:
                                     a stage with a stage.json is finished and is skipped by ``--resume``)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from intrudim.errors import IntrudimError, InvalidConfigError
from intrudim.fileio import ensure_writable_directory, write_json_atomic, write_text_atomic
from intrudim.train.config import TrainConfig

CONTINUAL_KIND = "intrudim-continual"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
RESULT_FILE = "continual.json"
CSV_FILE = "continual.csv"
ACCURACY_FIGURE = "figures/continual_accuracy.png"
INTRUDERS_FIGURE = "figures/continual_intruders.png"
STAGE_FILE = "stage.json"
HEAD_FILE = "head.safetensors"
LORA_METHODS: tuple[str, ...] = ("lora", "lora-b-only")
DEFAULT_TASKS: tuple[str, ...] = ("sentiment", "topic", "pair-match", "agreement")
DEFAULT_RANKS: tuple[int | str, ...] = (1, 8, 64, "full")
# Fields of the recipe template that every stage sets itself: they do not decide anything as given.
_PER_RUN_FIELDS = ("task", "method", "rank", "track_intruders")

OnStep = Callable[[str, int, int], None]


def _normalise_ranks(ranks: Any) -> tuple[int | str, ...]:
    if isinstance(ranks, str):
        from intrudim.train.sweep import parse_ranks

        return parse_ranks(ranks)
    normalised: list[int | str] = []
    for rank in ranks:
        if isinstance(rank, str) and rank.strip().lower() == "full":
            normalised.append("full")
        elif isinstance(rank, int) and not isinstance(rank, bool) and rank > 0:
            normalised.append(rank)
        elif isinstance(rank, str) and rank.strip().isdigit() and int(rank) > 0:
            normalised.append(int(rank))
        else:
            raise InvalidConfigError(f"ranks: {rank!r} is neither a positive integer nor 'full' (e.g. ranks=(1, 8, 'full')).")
    if not normalised:
        raise InvalidConfigError("ranks is empty; give e.g. ranks=(1, 8, 64, 'full').")
    if len(set(normalised)) != len(normalised):
        raise InvalidConfigError(f"ranks {tuple(ranks)!r} names a rank twice; each method is trained once.")
    return tuple(normalised)


def method_label(rank: int | str) -> str:
    """The folder and table name of a method: ``r-<rank>`` or ``full``."""
    return "full" if rank == "full" else f"r-{rank}"


@dataclass(frozen=True)
class ContinualConfig:
    """What a continual-learning experiment trains (Fig. 8).

    ``tasks``: trained in this order. ``ranks``: one method per entry, a LoRA rank or ``"full"`` (full
    fine-tuning). ``method``: the LoRA variant of the rank entries (``lora`` or ``lora-b-only``, Fig. 10).
    ``train``: the recipe of every stage (model, seed, steps, learning rates, max_length, ...); its ``task``,
    ``method``, ``rank`` and ``track_intruders`` are set per stage (intruders are counted here, against the
    original base). ``k``, ``epsilon``: the intruder definition (Sec. 4).
    """

    tasks: tuple[str, ...] = DEFAULT_TASKS
    ranks: tuple[int | str, ...] = DEFAULT_RANKS
    method: str = "lora"
    train: TrainConfig = field(default_factory=TrainConfig)
    k: int = 10
    epsilon: float = 0.5

    def __post_init__(self) -> None:
        from intrudim.tasks import task_names

        tasks = (self.tasks,) if isinstance(self.tasks, str) else tuple(self.tasks)
        tasks = tuple(str(task).strip().lower() for task in tasks)
        if not tasks or any(not task for task in tasks):
            raise InvalidConfigError(f"tasks {self.tasks!r} is empty; give e.g. tasks=('sentiment', 'topic').")
        known = task_names()
        unknown = [task for task in tasks if task not in known]
        if unknown:
            raise InvalidConfigError(
                f"Unknown task{'s' if len(unknown) > 1 else ''} {', '.join(repr(t) for t in unknown)} in --tasks. "
                f"Known tasks: {', '.join(known)} (run `intrudim tasks` for details)."
            )
        if len(set(tasks)) != len(tasks):
            raise InvalidConfigError(f"--tasks {','.join(tasks)} names a task twice; each task is one stage.")
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "ranks", _normalise_ranks(self.ranks))
        if self.method not in LORA_METHODS:
            raise InvalidConfigError(
                f"method={self.method!r}: the LoRA entries of a continual run use lora or lora-b-only; full "
                f"fine-tuning is the rank 'full'."
            )
        if not isinstance(self.train, TrainConfig):
            raise InvalidConfigError(f"train must be a TrainConfig; got {type(self.train).__name__}.")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidConfigError(f"k={self.k!r} must be a positive integer (top singular vectors checked).")
        if not 0.0 < float(self.epsilon) < 1.0:
            raise InvalidConfigError(f"epsilon={self.epsilon!r} must be in (0, 1); the paper uses 0.5.")

    @property
    def labels(self) -> tuple[str, ...]:
        """``r-1``, ``r-8``, ..., ``full``: one per entry of ``ranks``."""
        return tuple(method_label(rank) for rank in self.ranks)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "ranks": list(self.ranks), "method": self.method, "k": self.k,
                "epsilon": self.epsilon, "train": self.train.to_json()}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContinualConfig:
        return cls(tasks=tuple(data["tasks"]), ranks=tuple(data["ranks"]), method=data.get("method", "lora"),
                   train=TrainConfig.from_json(data.get("train", {})), k=int(data.get("k", 10)),
                   epsilon=float(data.get("epsilon", 0.5)))  # fmt: skip

    def stage_config(self, rank: int | str, task: str, start_model: str, objective: str) -> TrainConfig:
        """The TrainConfig of one stage: the template, on ``task``, starting from ``start_model``.

        The learning rate is resolved once from the template (with its model name), so a stage that starts from
        a merged folder trains at the same η as the first (the embedded MiniLM's full-FT η, among others).
        """
        if rank == "full":
            template = replace(self.train, method="full")
        else:
            template = replace(self.train, method=self.method, rank=int(rank))
        return replace(template, task=task, model=start_model, objective=objective, lr=template.learning_rate,
                       track_intruders=False)  # fmt: skip


# --- results ---------------------------------------------------------------------------------------------------


@dataclass
class StageRecord:
    """One stage of one method: accuracies of every task and intruders against the original base."""

    stage: int  # 0 = the base model, t = after training the t-th task
    task: str | None  # the task trained in this stage (None for stage 0)
    accuracies: dict[str, float | None]
    intruders: int
    energy_share: float  # mean over analysed matrices of Σ_{j∈I} σ_j² / ‖W_t‖_F²
    energy_share_sum: float
    matrices_with_intruders: int
    matrices_analysed: int
    epsilon_sweep: dict[str, int] = field(default_factory=dict)
    train_steps: int | None = None
    train_accuracy: float | None = None  # the run's own last held-out accuracy (before merging)
    train_seconds: float | None = None
    evaluate_seconds: float = 0.0
    analysis_seconds: float = 0.0
    weights: str | None = None  # merged/ folder of the stage (None when pruned, or for stage 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass
class MethodResult:
    """The continual run of one method: its stages, in order."""

    label: str  # r-<rank> | full
    method: str  # lora | lora-b-only | full
    rank: int | None
    tasks: tuple[str, ...]
    stages: list[StageRecord] = field(default_factory=list)

    @property
    def accuracy_matrix(self) -> list[list[float | None]]:
        """(stages + 1) × tasks: row s = accuracies after stage s (row 0 = the base), None where not measured."""
        return [[stage.accuracies.get(task) for task in self.tasks] for stage in self.stages]

    @property
    def baselines(self) -> dict[str, float | None]:
        """Each task's accuracy right after its own stage."""
        return {task: (self.stages[i + 1].accuracies.get(task) if i + 1 < len(self.stages) else None)
                for i, task in enumerate(self.tasks)}  # fmt: skip

    @property
    def intruders(self) -> list[int]:
        return [stage.intruders for stage in self.stages]

    @property
    def energy_shares(self) -> list[float]:
        return [stage.energy_share for stage in self.stages]

    @property
    def forgetting(self) -> dict[str, float | None]:
        """Baseline − accuracy after the last stage, for each task trained before the last one."""
        if len(self.stages) < 2:
            return {}
        last = self.stages[-1].accuracies
        result: dict[str, float | None] = {}
        for task, baseline in list(self.baselines.items())[: len(self.stages) - 2]:
            final = last.get(task)
            result[task] = None if baseline is None or final is None else baseline - final
        return result

    @property
    def mean_forgetting(self) -> float | None:
        values = [value for value in self.forgetting.values() if value is not None]
        return sum(values) / len(values) if values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "method": self.method, "rank": self.rank, "tasks": list(self.tasks),
            "accuracy": self.accuracy_matrix, "baselines": self.baselines, "intruders": self.intruders,
            "energy_share": self.energy_shares, "forgetting": self.forgetting,
            "mean_forgetting": self.mean_forgetting, "stages": [stage.to_json() for stage in self.stages],
        }  # fmt: skip


@dataclass
class ContinualResult:
    """Everything a continual run measured, per method (``methods`` keyed by ``r-<rank>`` / ``full``)."""

    config: ContinualConfig
    out_dir: Path
    base_model: str
    objective: str  # classification | causal-lm
    methods: dict[str, MethodResult]
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def accuracy_matrix(self, label: str) -> list[list[float | None]]:
        return self.methods[label].accuracy_matrix

    def baselines(self, label: str) -> dict[str, float | None]:
        return self.methods[label].baselines

    def intruders(self, label: str) -> list[int]:
        return self.methods[label].intruders

    def energy_shares(self, label: str) -> list[float]:
        return self.methods[label].energy_shares

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "intrudim-continual-result", "format_version": FORMAT_VERSION,
            "config": self.config.to_json(), "base_model": self.base_model, "objective": self.objective,
            "tasks": list(self.config.tasks), "stages": ["base", *self.config.tasks], "k": self.config.k,
            "epsilon": self.config.epsilon,
            "methods": {label: method.to_json() for label, method in self.methods.items()},
            "paths": {name: str(path) for name, path in self.paths.items()}, "seconds": round(self.seconds, 2),
            "definitions": {
                "accuracy": "accuracy[s][i]: held-out accuracy of task i after stage s (s = 0: the base model); "
                "None where the task has no head yet (encoders: a task's head is trained in its own stage)",
                "baseline": "a task's accuracy right after its own stage (its head, the weights merged)",
                "forgetting": "baseline minus the accuracy after the last stage",
                "intruders": "intruder dimensions of the weights after each stage against the ORIGINAL base "
                "(k, epsilon as given), summed over the analysed matrices",
                "energy_share": "mean over analysed matrices of the intruders' share of the matrix energy, "
                "sum_{j in I} sigma_j^2 / ||W_t||_F^2",
                "head": "encoders: BERT's pooler and the classifier (one per task); causal LMs: the LM head scores "
                "each label's answer text",
            },
        }  # fmt: skip

    def to_csv(self) -> str:
        """One row per (method, stage, task): accuracy, the task's baseline, and the stage's intruders."""
        import csv
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["method", "rank", "stage", "trained_task", "task", "accuracy", "baseline", "intruders",
                         "energy_share", "matrices_with_intruders"])  # fmt: skip
        for label, method in self.methods.items():
            baselines = method.baselines
            for stage in method.stages:
                for task in self.config.tasks:
                    accuracy, baseline = stage.accuracies.get(task), baselines.get(task)
                    writer.writerow([
                        label, "full" if method.rank is None else method.rank, stage.stage, stage.task or "",
                        task, "" if accuracy is None else f"{accuracy:.6f}",
                        "" if baseline is None else f"{baseline:.6f}", stage.intruders, f"{stage.energy_share:.6g}",
                        stage.matrices_with_intruders,
                    ])  # fmt: skip
        return buffer.getvalue()


# --- the run -----------------------------------------------------------------------------------------------------


@dataclass
class _Context:
    """What every stage of a run shares."""

    config: ContinualConfig
    out: Path
    base_model: Path
    objective: str
    tasks: dict[str, Any]  # name → Task (the splits every stage trains on and evaluates)
    cache_dir: Path
    progress: bool
    on_step: OnStep | None
    keep_weights: bool
    console: Any = None
    _original_pooler: dict[str, torch.Tensor] | None = None

    @property
    def causal(self) -> bool:
        return self.objective == "causal-lm"

    def say(self, text: str) -> None:
        if self.progress and self.console is not None:
            self.console.print(f"continual: {text}", highlight=False, soft_wrap=True)


def continual_plan(config: ContinualConfig) -> list[tuple[str, int]]:
    """(run label, max steps) of every stage in the order they run: what ``on_step`` will report.

    A run label is ``<method>/stage-<t>-<task>`` (e.g. ``r-1/stage-2-topic``).
    """
    from intrudim.train.engine import total_training_steps

    plan = []
    for rank in config.ranks:
        for index, name in enumerate(config.tasks, start=1):
            task = _load_task(config.train, name)
            plan.append((_run_label(rank, index, name), total_training_steps(replace(config.train, task=name),
                                                                             len(task.train))[0]))  # fmt: skip
    return plan


def _run_label(rank: int | str, index: int, task: str) -> str:
    return f"{method_label(rank)}/stage-{index}-{task}"


def _load_task(train: TrainConfig, name: str):
    from intrudim.tasks import get_task

    return get_task(
        name, seed=train.seed, train_fraction=train.train_fraction, data_path=train.data_path,
        max_train_examples=train.max_train_examples, max_validation_examples=train.max_validation_examples,
    )  # fmt: skip


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


def _head_prefixes(model: nn.Module) -> tuple[list[str], list[str]]:
    """(pooler module names, classifier module names) of an encoder's head (train.methods.head_modules)."""
    from intrudim.train.methods import head_modules

    names = head_modules(model)
    poolers = [name for name in names if name.rsplit(".", 1)[-1] == "pooler"]
    return poolers, [name for name in names if name not in poolers]


def _under(key: str, prefixes: list[str]) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in prefixes)


def _load_for_task(ctx: _Context, folder: Path, task: Any) -> tuple[nn.Module, Any]:
    from intrudim.models.loading import load_base_model, load_causal_lm

    torch.manual_seed(ctx.config.train.seed)  # a fresh head (overwritten by the task's own) is seeded
    if ctx.causal:
        return load_causal_lm(folder)
    return load_base_model(folder, task.head_outputs)


def _original_pooler(ctx: _Context) -> dict[str, torch.Tensor]:
    """The base model's pooler (a new task's head starts from it, as in the first stage)."""
    if ctx._original_pooler is None:
        model, _ = _load_for_task(ctx, ctx.base_model, next(iter(ctx.tasks.values())))
        poolers, _ = _head_prefixes(model)
        ctx._original_pooler = {key: value.detach().clone() for key, value in model.state_dict().items()
                                if _under(key, poolers)}  # fmt: skip
    return ctx._original_pooler


def _merged_model(ctx: _Context, start: Path, final: Path, task: Any) -> tuple[nn.Module, Any]:
    """The weights after a stage: the stage's LoRA adapter merged into its start weights, or the full FT model."""
    from intrudim.weights.peft_adapter import is_adapter_dir

    if is_adapter_dir(final):
        from intrudim.models.tuned import merge_adapter_with_peft

        model, tokenizer = _load_for_task(ctx, start, task)
        model = merge_adapter_with_peft(model, final)
    else:
        model, tokenizer = _load_for_task(ctx, final, task)
    return model.eval(), tokenizer


def _save_folder_atomic(model: nn.Module, tokenizer: Any, destination: Path, state: dict[str, torch.Tensor] | None) -> None:
    from intrudim.models.loading import quiet_transformers

    tmp = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with quiet_transformers():
        if state is None:
            model.save_pretrained(str(tmp))
        else:
            model.save_pretrained(str(tmp), state_dict=state)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(destination, ignore_errors=True)
    os.replace(tmp, destination)


def _write_stage_weights(ctx: _Context, model: nn.Module, tokenizer: Any, stage_dir: Path) -> None:
    """merged/ (an HF folder the next stage starts from) and, for an encoder, head.safetensors (the task's head).

    An encoder's merged/ has no classifier and the base model's pooler: the next task gets a fresh head, as the
    first did; the task's own head is kept in head.safetensors.
    """
    from safetensors.torch import save_file

    if ctx.causal:
        _save_folder_atomic(model, tokenizer, stage_dir / "merged", None)
        return
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    poolers, classifiers = _head_prefixes(model)
    head = {key: value.clone() for key, value in state.items() if _under(key, poolers + classifiers)}
    from intrudim.fileio import atomic_path

    with atomic_path(stage_dir / HEAD_FILE) as tmp:
        save_file(head, str(tmp))
    backbone = {key: value for key, value in state.items() if not _under(key, classifiers)}
    backbone.update(_original_pooler(ctx))
    _save_folder_atomic(model, tokenizer, stage_dir / "merged", backbone)


def _evaluate(ctx: _Context, weights: Path, heads: dict[str, Path]) -> dict[str, float | None]:
    """Held-out accuracy of every task on ``weights``: encoders with each trained task's own head, causal LMs all."""
    from safetensors.torch import load_file

    from intrudim.evaluate.accuracy import accuracy
    from intrudim.tasks.prompts import prompt_format

    train = ctx.config.train
    results: dict[str, float | None] = {name: None for name in ctx.tasks}
    loaded: dict[int, tuple[nn.Module, Any]] = {}
    for name, task in ctx.tasks.items():
        if not ctx.causal and name not in heads:
            continue
        key = 0 if ctx.causal else task.head_outputs
        if key not in loaded:
            loaded[key] = _load_for_task(ctx, weights, task)
        model, tokenizer = loaded[key]
        if not ctx.causal:
            head = load_file(str(heads[name]))
            missing = [k for k in head if k not in model.state_dict()]
            if missing:
                raise IntrudimError(f"The head of task '{name}' ({heads[name]}) does not fit the model in '{weights}' "
                                    f"(no parameter '{missing[0]}'). Start the continual run again in a new --out.")  # fmt: skip
            model.load_state_dict(head, strict=False)
        fmt = prompt_format(task) if ctx.causal else None
        results[name] = accuracy(model.eval(), tokenizer, task.validation, task.kind, max_length=train.max_length,
                                 batch_size=train.eval_batch_size, prompt_format=fmt)  # fmt: skip
    return results


def _count_intruders(ctx: _Context, weights: Path) -> dict[str, Any]:
    from intrudim.analysis import AnalyzeConfig, analyze

    config = AnalyzeConfig(k=ctx.config.k, epsilon=ctx.config.epsilon, effective_rank=False)
    result = analyze(ctx.base_model, weights, config, cache_dir=ctx.cache_dir)
    summary = result.to_json()
    return {
        "intruders": result.total_intruders, "energy_share": summary["intruder_energy_share_mean"],
        "energy_share_sum": summary["intruder_energy_share_sum"],
        "matrices_with_intruders": summary["matrices_with_intruders"], "matrices_analysed": summary["matrices_analysed"],
        "epsilon_sweep": summary["epsilon_sweep"],
    }  # fmt: skip


def _read_stage(path: Path) -> StageRecord | None:
    try:
        return StageRecord.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _stage_zero(ctx: _Context, method_dir: Path) -> StageRecord:
    path = method_dir / "stage-0.json"
    done = _read_stage(path)
    if done is not None:
        return done
    started = time.perf_counter()
    accuracies: dict[str, float | None] = {name: None for name in ctx.tasks}
    if ctx.causal:
        ctx.say(f"{method_dir.name}: stage 0, evaluating the base model on {len(ctx.tasks)} tasks")
        accuracies = _evaluate(ctx, ctx.base_model, {})
    record = StageRecord(stage=0, task=None, accuracies=accuracies, intruders=0, energy_share=0.0,
                         energy_share_sum=0.0, matrices_with_intruders=0, matrices_analysed=0,
                         evaluate_seconds=round(time.perf_counter() - started, 3))  # fmt: skip
    write_json_atomic(path, record.to_json())
    return record


def _run_stage(ctx: _Context, rank: int | str, index: int, name: str, start: Path, method_dir: Path,
               heads: dict[str, Path], resume: bool) -> StageRecord:  # fmt: skip
    from intrudim.train.engine import total_training_steps, train
    from intrudim.train.sweep import _completed

    label = _run_label(rank, index, name)
    stage_dir = method_dir / f"stage-{index}-{name}"
    run_dir = stage_dir / "run"
    stage_config = ctx.config.stage_config(rank, name, str(start), ctx.objective)
    max_steps = total_training_steps(stage_config, len(ctx.tasks[name].train))[0]
    total = len(ctx.config.tasks)
    result = _completed(run_dir) if resume else None
    if result is None:
        ctx.say(f"{label}: stage {index}/{total}, training '{name}' ({max_steps} steps)")
        callback = None if ctx.on_step is None else (lambda step: ctx.on_step(label, step, max_steps))  # type: ignore[misc]
        stage_dir.mkdir(parents=True, exist_ok=True)
        result = train(stage_config, run_dir, resume=resume and (run_dir / CONFIG_FILE).exists(),
                       progress=ctx.progress, cache_dir=ctx.cache_dir, figures=False, on_step=callback)  # fmt: skip
    elif ctx.on_step is not None:
        ctx.on_step(label, max_steps, max_steps)
    ctx.say(f"{label}: merging and evaluating {index if not ctx.causal else total} task(s)")
    model, tokenizer = _merged_model(ctx, start, result.final_dir, ctx.tasks[name])
    _write_stage_weights(ctx, model, tokenizer, stage_dir)
    del model
    if not ctx.causal:
        heads[name] = stage_dir / HEAD_FILE
    started = time.perf_counter()
    accuracies = _evaluate(ctx, stage_dir / "merged", heads)
    evaluate_seconds = time.perf_counter() - started
    ctx.say(f"{label}: counting intruders against the original base")
    started = time.perf_counter()
    counts = _count_intruders(ctx, stage_dir / "merged")
    record = StageRecord(
        stage=index, task=name, accuracies=accuracies, **counts, train_steps=result.steps,
        train_accuracy=result.final_accuracy, train_seconds=round(result.seconds, 3),
        evaluate_seconds=round(evaluate_seconds, 3), analysis_seconds=round(time.perf_counter() - started, 3),
        weights=str(stage_dir / "merged"),
    )  # fmt: skip
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # resume state of a finished stage: never used again
    write_json_atomic(stage_dir / STAGE_FILE, record.to_json())
    return record


def _prune(previous: StageRecord) -> None:
    """Without ``keep_weights``: an earlier stage's merged/ and best/ go once the next stage is finished."""
    if previous.weights is None:
        return
    merged = Path(previous.weights)
    shutil.rmtree(merged, ignore_errors=True)
    shutil.rmtree(merged.parent / "run" / "best", ignore_errors=True)
    previous.weights = None
    write_json_atomic(merged.parent / STAGE_FILE, previous.to_json())


def _run_method(ctx: _Context, rank: int | str, resume: bool) -> MethodResult:
    label = method_label(rank)
    method_dir = ctx.out / label
    method_dir.mkdir(parents=True, exist_ok=True)
    result = MethodResult(label=label, method="full" if rank == "full" else ctx.config.method,
                          rank=None if rank == "full" else int(rank), tasks=ctx.config.tasks)  # fmt: skip
    result.stages.append(_stage_zero(ctx, method_dir))
    heads: dict[str, Path] = {}
    start = ctx.base_model
    for index, name in enumerate(ctx.config.tasks, start=1):
        stage_dir = method_dir / f"stage-{index}-{name}"
        record = _read_stage(stage_dir / STAGE_FILE) if resume else None
        if record is None:
            record = _run_stage(ctx, rank, index, name, start, method_dir, heads, resume)
        else:
            ctx.say(f"{_run_label(rank, index, name)}: finished earlier, kept")
            if ctx.on_step is not None:
                ctx.on_step(_run_label(rank, index, name), record.train_steps or 0, record.train_steps or 0)
        if not ctx.causal:
            heads[name] = stage_dir / HEAD_FILE
        if not ctx.keep_weights and len(result.stages) > 1:
            _prune(result.stages[-1])
        result.stages.append(record)
        start = stage_dir / "merged"
    return result


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


def run_continual(
    config: ContinualConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    on_step: OnStep | None = None,
    keep_weights: bool = True,
) -> ContinualResult:
    """Train ``config.tasks`` in order for every entry of ``config.ranks`` and measure the stages (Fig. 8).

    Writes ``out_dir`` (see the module docstring) and returns the accuracy matrices, baselines and intruders.
    ``resume``: continue an interrupted run in ``out_dir`` (finished stages are kept, a half-trained stage
    continues from its last checkpoint); refused when the stored settings differ (each difference is named).
    ``cache_dir``: the original base's SVD cache (default ``out_dir/svd_cache``). ``on_step(run_label, step,
    max_steps)`` is called after every training step of every stage (labels as in :func:`continual_plan`; a
    stage finished earlier reports once, at its last step). ``progress``: status lines and each stage's
    training bar on stderr. ``keep_weights=False`` deletes a stage's merged weights (and the run's best/)
    once the next stage is finished: the last stage's weights are always kept.
    """
    from rich.console import Console

    from intrudim.models.loading import resolve_objective
    from intrudim.models.references import resolve_model_folder

    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    base_model = resolve_model_folder(config.train.model, progress=progress, what="--model")
    objective = resolve_objective(config.train.objective, base_model)
    tasks = {name: _load_task(config.train, name) for name in config.tasks}  # a task that cannot load: refused here
    for name, rank in ((config.tasks[0], rank) for rank in config.ranks):  # bad recipe values: refused here
        config.stage_config(rank, name, str(base_model), objective)
    _prepare_out(out, config, base_model, objective, resume)
    ctx = _Context(
        config=config, out=out, base_model=base_model, objective=objective, tasks=tasks,
        cache_dir=Path(cache_dir) if cache_dir is not None else out / "svd_cache", progress=progress,
        on_step=on_step, keep_weights=keep_weights, console=Console(stderr=True) if progress else None,
    )  # fmt: skip
    methods: dict[str, MethodResult] = {}
    for rank in config.ranks:
        methods[method_label(rank)] = _run_method(ctx, rank, resume)
    result = ContinualResult(config=config, out_dir=out, base_model=str(base_model), objective=objective,
                             methods=methods, seconds=time.perf_counter() - started)  # fmt: skip
    _write_outputs(result)
    return result


def load_continual_result(out_dir: str | Path) -> dict[str, Any]:
    """The continual.json of a finished run (as written)."""
    path = Path(out_dir) / RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IntrudimError(f"Cannot read '{path}' ({exc}); is '{out_dir}' a finished continual run?") from None

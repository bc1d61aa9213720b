"""Hugging Face Hub repo ids as model references: ``org/name`` or ``org/name@revision`` (DESIGN.md, Layout).

A Hub reference resolves to the local snapshot folder of the repo in huggingface_hub's cache
(``<cache>/models--org--name/snapshots/<commit>/``), downloading only the files a verb reads: the config,
the safetensors weights, the tokenizer and a few small JSON files — never GGUF, ONNX, Flax or TensorFlow
weights, and pickle checkpoints (``*.bin``, ``*.pt``…) only when the user allows them. From then on a Hub
model is an ordinary local folder for the rest of intrudim.

The environment is read when a function is called, not when huggingface_hub is imported, so that a user
(or a test) who sets ``HF_HUB_CACHE``, ``HF_HOME``, ``HF_HUB_OFFLINE`` or ``HF_TOKEN`` late is obeyed.
Every failure becomes a :class:`~intrudim.errors.HubError`: one paragraph naming the repo, the revision and
what to do (a typo, a private or gated repo, a missing revision, no network, not cached while offline).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intrudim.errors import HubError, InvalidConfigError
from intrudim.models.hub_env import _offline_variable, hub_cache_dir, hub_fetch_command
from intrudim.models.hub_errors import _where, translate_hub_error

FILE_KINDS = ("model", "adapter", "any")
"""What :func:`hub_snapshot` fetches: a full model, a PEFT adapter, or whichever the repo holds."""


TOKENIZER_PATTERNS = (
    "tokenizer*",  # tokenizer.json, tokenizer_config.json, tokenizer.model (sentencepiece)
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",  # vocab.txt (WordPiece), vocab.json (BPE)
    "merges.txt",
    "spiece.model",
    "sentencepiece*.model",
    "chat_template*",
)
MODEL_PATTERNS = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "trainer_state.json",
    # sentence-transformers: the module list, its settings, and each module's */config.json (1_Pooling/)
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
    "*/config.json",
    *TOKENIZER_PATTERNS,
)
ADAPTER_PATTERNS = ("adapter_config.json", "adapter_model.safetensors", *TOKENIZER_PATTERNS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
MODEL_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin.index.json")
ADAPTER_PICKLE_PATTERNS = ("adapter_model.bin",)
IGNORE_PATTERNS = (
    "original/*",  # Meta's own checkpoint format beside the transformers weights (consolidated.00.pth)
    "consolidated*",  # Mistral's own format: the same weights again in another layout
    "last-checkpoint/*",  # a Trainer's pushed resume checkpoint, optimizer included
    "optimizer.*",
    "scheduler.*",
    "rng_state*",
    "training_args.bin",
)
"""Files the patterns above match that are never weights intrudim reads (training state, duplicates)."""

_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"({_PART})/({_PART})")
_REVISION = re.compile(r"[A-Za-z0-9._-](?:[A-Za-z0-9._/-]*[A-Za-z0-9._-])?")
_FILE_SUFFIXES = (".safetensors", ".json", ".gguf", ".onnx", ".git", *PICKLE_SUFFIXES)
_TRAINING_STATE = ("optimizer", "scheduler", "rng_state", "training_args")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """Read ``spec`` as a Hugging Face Hub repo id: ``'org/name'`` -> ``('org/name', None)`` and
    ``'org/name@rev'`` -> ``('org/name', 'rev')``, where ``rev`` is a branch, a tag or a commit hash
    (``refs/pr/1`` too).

    Anything not shaped like a Hub repo id gives ``None``: no slash, or more than one slash, in the id; path
    markers (``./``, ``../``, ``~``, a leading ``/``, backslashes); a name ending like a file
    (``.safetensors``, ``.bin``, ``.json``…); characters the Hub does not allow (only ASCII letters, digits,
    ``-``, ``_`` and ``.``; no ``--`` or ``..``; each part starts and ends with a letter or a digit; at most
    96 characters a part); an empty or malformed revision. Only the two-part ``org/name`` form is accepted:
    legacy one-word ids such as ``gpt2`` are not (they cannot be told apart from embedded names and local
    folders; write ``openai-community/gpt2``).

    This looks at the string only. A caller that also accepts local paths checks the file system first,
    since a relative folder such as ``runs/lora`` is shaped like a repo id too.
    """
    if not isinstance(spec, str) or not spec or spec != spec.strip():
        return None
    repo_id, at, revision = spec.partition("@")
    if at and (
        not _REVISION.fullmatch(revision)
        or ".." in revision
        or "//" in revision
        or revision.endswith(".lock")
    ):
        return None
    match = _REPO_ID.fullmatch(repo_id)
    if match is None or "--" in repo_id or ".." in repo_id or match.group(2).lower().endswith(_FILE_SUFFIXES):
        return None
    return repo_id, (revision if at else None)


def hub_snapshot(
    repo_id: str,
    revision: str | None = None,
    *,
    files: str = "any",
    allow_pickle: bool = False,
    progress: bool = True,
) -> Path:
    """The local snapshot folder of a Hub model or adapter repo, downloading only the files a verb needs.

    ``files``: ``'model'`` (``config.json``, ``*.safetensors`` and ``*.safetensors.index.json``, tokenizer
    files, ``generation_config.json``, the sentence-transformers files ``modules.json``,
    ``config_sentence_transformers.json``, ``sentence_bert_config.json`` and each module's
    ``*/config.json``, ``trainer_state.json``), ``'adapter'`` (``adapter_config.json``,
    ``adapter_model.safetensors``, tokenizer files) or ``'any'`` (the union). Pickle checkpoints (``*.bin``,
    ``*.pt``, ``*.pth``, ``*.ckpt``; for an adapter ``adapter_model.bin``) only when ``allow_pickle``.
    Nothing else: no GGUF, ONNX, Flax, TensorFlow or images, no training state (``optimizer.pt``…), no
    duplicate formats (``original/``, ``consolidated*``).

    ``revision`` is a branch, a tag or a commit hash (``None``: the default branch). The environment is read
    at call time: the cache is ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default;
    ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to 1/true/yes/on means the cache only, no network;
    the token is ``HF_TOKEN``, else the one huggingface_hub stored at ``hf auth login``.

    ``progress``: show huggingface_hub's own download bars, even where intrudim's CLI switched them off with
    ``HF_HUB_DISABLE_PROGRESS_BARS``; ``False`` shows none. huggingface_hub's warnings are silenced during
    the call; every setting is restored afterwards.

    Raises :class:`~intrudim.errors.HubError` (see :func:`translate_hub_error`) when the repo cannot be had,
    and when the snapshot holds nothing of the kind asked for (e.g. only ``pytorch_model.bin`` without
    ``allow_pickle``, or an adapter repo where a full model is expected).
    """
    allow_patterns, ignore_patterns = download_patterns(files, allow_pickle=allow_pickle)
    from huggingface_hub import snapshot_download

    offline = _offline_variable() is not None
    try:
        with _quiet_hub_call(progress) as tqdm_class:
            folder = snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=hub_cache_dir(),
                local_files_only=offline,
                token=os.environ.get("HF_TOKEN") or None,
                allow_patterns=allow_patterns,
                ignore_patterns=ignore_patterns,
                tqdm_class=tqdm_class,
            )
    except Exception as exc:
        raise translate_hub_error(exc, repo_id, revision) from exc
    snapshot = Path(folder)
    _check_usable(snapshot, repo_id, revision, files=files, allow_pickle=allow_pickle, offline=offline)
    return snapshot


def download_patterns(files: str = "any", *, allow_pickle: bool = False) -> tuple[list[str], list[str]]:
    """``(allow_patterns, ignore_patterns)`` for huggingface_hub's ``snapshot_download`` that select what
    :func:`hub_snapshot` fetches for ``files`` (fnmatch globs; their ``*`` also crosses ``/``)."""
    if files not in FILE_KINDS:
        raise InvalidConfigError(f"files={files!r}: the files to fetch are one of {', '.join(FILE_KINDS)}.")
    patterns: list[str] = []
    if files in ("model", "any"):
        patterns += [*MODEL_PATTERNS, *(MODEL_PICKLE_PATTERNS if allow_pickle else ())]
    if files in ("adapter", "any"):
        patterns += [*ADAPTER_PATTERNS, *(ADAPTER_PICKLE_PATTERNS if allow_pickle else ())]
    ignore = list(IGNORE_PATTERNS)
    if files == "model":
        ignore.append("adapter_model*")  # *.safetensors would fetch an adapter's weights for nothing
    return list(dict.fromkeys(patterns)), ignore


# --- helpers ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_hub_call(progress: bool) -> Iterator[Any]:
    """Run a huggingface_hub call with its progress bars on (``progress``) or off and its warnings silenced,
    and restore both afterwards.

    Yields the ``tqdm_class`` for ``snapshot_download``: ``None`` when huggingface_hub's public switches
    (``enable_progress_bars`` / ``disable_progress_bars``) set the state, or a class of its own when
    ``HF_HUB_DISABLE_PROGRESS_BARS`` was set before huggingface_hub was imported (intrudim's CLI does that):
    that variable pins the switches, which then only warn.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    tqdm_module = importlib.import_module("huggingface_hub.utils.tqdm")
    pinned = getattr(tqdm_module, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # True/False/None, read at import
    states = getattr(tqdm_module, "progress_bar_states", None)  # per-group switches, restored exactly
    saved_states = dict(states) if isinstance(states, dict) else None
    was_disabled = are_progress_bars_disabled()
    hub_logger = logging.getLogger("huggingface_hub")
    saved_level = hub_logger.level
    tqdm_class: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pinned is None:  # globally, which also clears any per-group switch until they are restored
            (enable_progress_bars if progress else disable_progress_bars)()
        elif pinned is progress:  # pinned off while bars are wanted, or pinned on while they are not
            tqdm_class = _tqdm_class(shown=progress)
        hub_logger.setLevel(logging.ERROR)
        try:
            yield tqdm_class
        finally:
            hub_logger.setLevel(saved_level)
            if pinned is None:
                if was_disabled and not are_progress_bars_disabled():
                    disable_progress_bars()
                elif not was_disabled and are_progress_bars_disabled():
                    enable_progress_bars()
                if saved_states is not None and isinstance(states, dict):
                    states.clear()
                    states.update(saved_states)


def _tqdm_class(shown: bool) -> type:
    """A plain tqdm class for huggingface_hub's bars that ignores its switches: always drawn, or never."""
    from tqdm.auto import tqdm

    class HubTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's group name, unknown to plain tqdm
            if not shown:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return HubTqdm


def _snapshot_files(snapshot: Path) -> set[str]:
    """Files of a snapshot folder (relative, '/'-separated; symlinks followed, dangling ones left out)."""
    found = set()
    for folder, _, names in os.walk(snapshot):
        for name in names:
            if (Path(folder) / name).is_file():
                found.add((Path(folder) / name).relative_to(snapshot).as_posix())
    return found


def _repo_files(repo_id: str, commit: str) -> set[str] | None:
    """Every file of the repo at ``commit``, from the tree listing huggingface_hub (1.x and later) caches at
    each download, or ``None`` when there is none (a cache from an older release, or copied by hand)."""
    try:
        from huggingface_hub import get_cached_repo_tree

        return {
            entry.path for entry in get_cached_repo_tree(repo_id, revision=commit, cache_dir=hub_cache_dir())
        }
    except Exception:
        return None


def _is_model_weight(name: str, allow_pickle: bool) -> bool:
    """A top-level weights file of a full model (not an adapter's, not training state)."""
    if "/" in name or name.startswith(("adapter_model", "consolidated", *_TRAINING_STATE)):
        return False
    return name.endswith(".safetensors") or (allow_pickle and name.endswith(PICKLE_SUFFIXES))


def _usable(names: set[str], files: str, allow_pickle: bool) -> bool:
    """Whether ``names`` (a snapshot's or a repo's files) hold what ``files`` asks for."""
    model = "config.json" in names and any(_is_model_weight(name, allow_pickle) for name in names)
    adapter_weights = {"adapter_model.safetensors", *(("adapter_model.bin",) if allow_pickle else ())}
    adapter = "adapter_config.json" in names and bool(adapter_weights & names)
    return model if files == "model" else adapter if files == "adapter" else model or adapter


def _check_usable(
    snapshot: Path, repo_id: str, revision: str | None, *, files: str, allow_pickle: bool, offline: bool
) -> None:
    """Raise a :class:`HubError` unless the snapshot holds a model (``files='model'``), an adapter
    (``'adapter'``) or either (``'any'``) that intrudim can read, saying what the repo holds instead."""
    if _usable(_snapshot_files(snapshot), files, allow_pickle):
        return
    listing = _repo_files(repo_id, snapshot.name)
    known = listing if listing is not None else _snapshot_files(snapshot)
    what = {
        "model": "model weights (config.json with *.safetensors)",
        "adapter": "PEFT adapter (adapter_config.json with adapter_model.safetensors)",
        "any": "model or PEFT adapter (config.json with *.safetensors, or adapter_config.json with "
        "adapter_model.safetensors)",
    }[files]
    commit = snapshot.name if re.fullmatch(r"[0-9a-f]{40}", snapshot.name) else None
    message = f"The Hub repo {_where(repo_id, revision, commit)} holds no {what} that intrudim can read"
    if not allow_pickle and _usable(known, files, True):
        pickles = sorted(
            name
            for name in known
            if (files != "adapter" and name.endswith(PICKLE_SUFFIXES) and _is_model_weight(name, True))
            or (files != "model" and name == "adapter_model.bin")
        )
        message += (
            f": its weights are pickle files only ({', '.join(pickles[:3])}), which intrudim loads only with "
            f"--allow-pickle (allow_pickle=True) because unpickling a file can run code: use it only for a "
            f"repo you trust"
        )
    elif files == "model" and "adapter_config.json" in known:
        message += (
            ": it is a PEFT adapter repo (adapter_config.json), not a full model; give it where an adapter "
            "is expected (the tuned model), together with its base model"
        )
    elif files == "adapter" and "config.json" in known and "adapter_config.json" not in known:
        message += ": it is a full model (config.json), not a PEFT adapter; give it where a model is expected"
    else:
        shown = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
        message += f" (files {'in the repo' if listing is not None else 'cached'}: {shown or 'none'})"
    if offline and listing is None:
        message += (
            f". Only part of the repo may be cached ({snapshot}): fetch all of it with "
            f"`{hub_fetch_command(repo_id, revision)}`, or unset {_offline_variable()}"
        )
    raise HubError(message + ".")

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
import shlex
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intrudim.errors import HubError, InvalidConfigError

FILE_KINDS = ("model", "adapter", "any")
"""What :func:`hub_snapshot` fetches: a full model, a PEFT adapter, or whichever the repo holds."""

TRUE_VALUES = {"1", "true", "yes", "on"}

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


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment says now: ``$HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, else huggingface_hub's default (``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_fetch_command(repo_id: str, revision: str | None = None) -> str:
    """The one shell command that puts the repo into the cache, ``hf download org/name [--revision rev]``.
    It fetches the whole repo, a superset of what :func:`hub_snapshot` reads, so the cached copy is
    complete for every ``files``."""
    command = f"hf download {shlex.quote(repo_id)}"
    return command + (f" --revision {shlex.quote(revision)}" if revision else "")


def translate_hub_error(exc: BaseException, repo_id: str, revision: str | None) -> HubError:
    """huggingface_hub's exceptions -> :class:`~intrudim.errors.HubError` with one clear paragraph that names
    the repo and the revision and says what to do.

    Covered: not in the cache while offline (with the ``hf download`` command that fetches it), an
    incomplete cached copy, repository not found (a typo, or private: a token), revision not found, a gated
    repo (accept its conditions, then a token), HTTP 401/403, a disabled repo, other HTTP errors, connection
    failures and timeouts (the repo, and ``HF_HUB_OFFLINE=1`` with a cached copy), an invalid repo id. The
    specific classes are tested before the ones they derive from: ``GatedRepoError`` is a
    ``RepositoryNotFoundError``; both, and ``RevisionNotFoundError``, are ``HfHubHTTPError``;
    ``IncompleteSnapshotError`` is a ``LocalEntryNotFoundError``; ``OfflineModeIsEnabled`` is a
    ``ConnectionError``.
    """
    if isinstance(exc, HubError):
        return exc
    from huggingface_hub import errors as hub_errors

    where = _where(repo_id, revision)
    fetch = hub_fetch_command(repo_id, revision)
    page = f"https://huggingface.co/{repo_id}"
    login = "set HF_TOKEN to a token with read access or run `hf auth login`"
    offline_variable = _offline_variable()
    cache = hub_cache_dir()
    cause = exc.__cause__ or exc.__context__
    incomplete = getattr(hub_errors, "IncompleteSnapshotError", None)

    if incomplete is not None and isinstance(exc, incomplete):
        then = (
            f", or unset {offline_variable} to let intrudim download the missing files"
            if offline_variable
            else " once the Hub can be reached"
        )
        return HubError(
            f"The cached copy of the Hub repo {where} in {cache} is incomplete: huggingface_hub's record of "
            f"the repo lists files intrudim needs that are not on disk (an interrupted or partial download), "
            f"and the Hub cannot be used now. Complete it with `{fetch}`{then}."
        )
    if isinstance(exc, hub_errors.LocalEntryNotFoundError):
        imported_offline = isinstance(cause, _offline_error())
        if (
            offline_variable is None
            and not imported_offline
            and cause is not None
            and _is_network_error(cause)
        ):
            return HubError(
                f"intrudim could not reach the Hugging Face Hub to download {where} ({_short(cause)}), and "
                f"the repo is not in the local cache ({cache}). Check the network connection (and any proxy "
                f"or HF_ENDPOINT setting) and try again; on a machine without access to the Hub, fetch it "
                f"elsewhere with `{fetch}`, copy that cache here and set HF_HUB_OFFLINE=1."
            )
        return HubError(_not_cached_message(where, fetch, offline_variable, imported_offline))
    if isinstance(exc, hub_errors.GatedRepoError):
        return HubError(
            f"The Hub repo {where} is gated: its authors ask you to accept their conditions first. Open "
            f"{page} while logged in, accept the conditions (some repos wait for the authors' approval), "
            f"then give intrudim a token of that account: {login}."
        )
    if isinstance(exc, hub_errors.RevisionNotFoundError):
        return HubError(
            f"The Hub repo '{repo_id}' has no revision '{revision or 'main'}'. Give a branch, a tag or a "
            f"full 40-character commit hash that exists (see {page}/tree/main and its branch list), after "
            f"'@' as in {repo_id}@main, or leave the revision out for the default branch."
        )
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        refused = " (the token in use was refused or has no access to it)" if _token_available() else ""
        return HubError(
            f"The Hub repo {where} was not found. Check the id for a typo: it is 'org/name' as in the "
            f"address {page}. If the repo is private, intrudim needs a token with access to it{refused}: "
            f"{login}."
        )
    disabled = getattr(hub_errors, "DisabledRepoError", None)
    if disabled is not None and isinstance(exc, disabled):
        return HubError(
            f"The Hub repo {where} has been disabled (by its authors or by Hugging Face) and cannot be "
            f"downloaded. Use another copy of the model: a local folder or another repo id."
        )
    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = _status_code(exc)
        if status in (401, 403):
            if _token_available():
                advice = (
                    f"the token in use was refused: check that it is valid and has read access to "
                    f"'{repo_id}' (a fine-grained token must list the repo), or log in again with "
                    f"`hf auth login --force`"
                )
            else:
                advice = f"no token was found: {login}"
            return HubError(
                f"The Hugging Face Hub refused access to {where} (HTTP {status}): the repo needs "
                f"authentication and {advice}."
            )
        return HubError(
            f"The Hugging Face Hub answered HTTP {status or 'error'} while intrudim was getting {where} "
            f"({_short(exc)}). This is usually temporary (Hub downtime or a rate limit): try again later, "
            f"or, if the repo is already in the local cache ({cache}), set HF_HUB_OFFLINE=1 to use it."
        )
    if isinstance(exc, _offline_error()):
        return HubError(_not_cached_message(where, fetch, offline_variable, True))
    if _is_network_error(exc):
        return HubError(
            f"intrudim could not reach the Hugging Face Hub to get {where} ({_short(exc)}). Check the "
            f"network connection (and any proxy or HF_ENDPOINT setting) and try again, or, if the repo is "
            f"already in the local cache ({cache}), set HF_HUB_OFFLINE=1 to use that copy offline."
        )
    if isinstance(exc, hub_errors.HFValidationError):
        return HubError(
            f"'{repo_id}' is not a valid Hugging Face Hub repo id ({_short(exc)}). A Hub id is 'org/name' "
            f"(ASCII letters, digits, '-', '_', '.'), optionally followed by '@revision'; for a local "
            f"folder, give its path."
        )
    return HubError(
        f"intrudim could not get the Hub repo {where}: {type(exc).__name__}: {_short(exc)}. Check the repo "
        f"id and the revision on {page}, the network connection, and the free space in the cache ({cache})."
    )


# --- helpers ------------------------------------------------------------------------------------------------


def _where(repo_id: str, revision: str | None, commit: str | None = None) -> str:
    """``'org/name' (revision 'v1')`` or ``'org/name' (default branch)``, with the commit when known."""
    at = f"revision '{revision}'" if revision else "default branch"
    return f"'{repo_id}' ({at}{f', commit {commit[:12]}' if commit else ''})"


def _not_cached_message(where: str, fetch: str, offline_variable: str | None, imported_offline: bool) -> str:
    if offline_variable is not None:
        reason = f"{offline_variable} is set, so intrudim may not download it"
        undo = f", or unset {offline_variable} to let intrudim download it"
    elif imported_offline:
        reason = "huggingface_hub was started in offline mode (HF_HUB_OFFLINE was set when it was imported)"
        undo = ", or start intrudim without HF_HUB_OFFLINE and TRANSFORMERS_OFFLINE to let it download it"
    else:
        reason = "it could not be downloaded"
        undo = ""
    return (
        f"The Hub repo {where} is not in the local Hugging Face cache ({hub_cache_dir()}) and {reason}. "
        f"Fetch it once with network access: `{fetch}` (with the same HF_HUB_CACHE / HF_HOME){undo}."
    )


def _offline_variable() -> str | None:
    """The variable that puts the Hub in offline mode now (read as huggingface_hub reads it), or ``None``."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return name if value.strip().lower() in TRUE_VALUES else None
    return None


def _token_available() -> bool:
    """Whether huggingface_hub will send a token: ``HF_TOKEN`` or a stored token file (no network)."""
    if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"):
        return True
    if os.environ.get("HF_TOKEN_PATH"):
        token_path = Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    elif os.environ.get("HF_HOME"):
        token_path = Path(os.environ["HF_HOME"]).expanduser() / "token"
    else:
        from huggingface_hub import constants

        token_path = Path(constants.HF_TOKEN_PATH)
    try:
        return bool(token_path.read_text().strip())
    except OSError:
        return False


def _status_code(exc: BaseException) -> int | None:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _short(exc: BaseException) -> str:
    """The first paragraph of an exception's message on one line, for a one-paragraph error."""
    text = " ".join(str(exc).split("\n\n")[0].split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _offline_error() -> type[BaseException]:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return OfflineModeIsEnabled


def _is_network_error(exc: BaseException) -> bool:
    """Connection refused, DNS failure, timeouts, proxy errors: from httpx2 (huggingface_hub 1.x and 2.x),
    httpx or requests (older releases), or Python's own ``ConnectionError`` / ``TimeoutError``."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    candidates = {
        "httpx2": ("TransportError",),
        "httpx": ("TransportError",),
        "requests": ("ConnectionError", "Timeout"),
    }
    for module_name, names in candidates.items():
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
            types += [getattr(module, name) for name in names if hasattr(module, name)]
    return isinstance(exc, tuple(types))


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

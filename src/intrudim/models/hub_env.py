"""The Hugging Face Hub environment as it is when a function is called (not when huggingface_hub was imported):
the cache folder (``HF_HUB_CACHE`` / ``HF_HOME``), offline mode (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), a
token (``HF_TOKEN`` or a stored login), and the one command that fetches a repo. Used by :mod:`intrudim.models.hub`
and :mod:`intrudim.models.hub_errors`."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

TRUE_VALUES = {"1", "true", "yes", "on"}


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

"""huggingface_hub's exceptions as one paragraph each (:class:`~intrudim.errors.HubError`): not cached while offline
(with the command that fetches the repo), repo or revision not found, gated, private without a token, a server or
network error. Each names the repo and the revision and says what to do."""

from __future__ import annotations

import contextlib
import importlib

from intrudim.errors import HubError
from intrudim.models.hub_env import _offline_variable, _token_available, hub_cache_dir, hub_fetch_command


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
        return HubError(_no_such_path(repo_id, _not_cached_message(where, fetch, offline_variable, imported_offline)))
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
        return HubError(_no_such_path(repo_id, _not_cached_message(where, fetch, offline_variable, True)))
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


def _where(repo_id: str, revision: str | None, commit: str | None = None) -> str:
    """``'org/name' (revision 'v1')`` or ``'org/name' (default branch)``, with the commit when known."""
    at = f"revision '{revision}'" if revision else "default branch"
    return f"'{repo_id}' ({at}{f', commit {commit[:12]}' if commit else ''})"


def _no_such_path(repo_id: str, message: str) -> str:
    """``message`` about a repo missing from the cache, led by the other reading when no such path exists here: a
    reference like ``adapters/r9`` is a relative path as much as a Hub id (``org/name``), and is most often a
    mistyped path."""
    import os

    if os.path.exists(repo_id):
        return message
    return (f"No file or folder '{repo_id}' exists in {os.getcwd()} (check the path); read as a Hub repo id, "
            f"{message[0].lower()}{message[1:]}")


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

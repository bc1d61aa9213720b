"""Atomic file writing: an interrupted run never leaves a half-written file behind.

Every output (cache entries, JSON, CSV, figures, reports, adapters) is written to a temporary file in
the destination directory and then moved into place with :func:`os.replace`, which is atomic on POSIX.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from intrudim.errors import IntrudimError


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``destination``; move it into place only if the block succeeds."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            # mkstemp creates 0600; give outputs the usual permissions (0666 minus the umask).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, destination)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(destination: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(destination)


def write_bytes_atomic(destination: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(destination) as tmp:
        tmp.write_bytes(data)
    return Path(destination)


def write_json_atomic(destination: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(destination, json.dumps(obj, indent=indent) + "\n")


def ensure_writable_directory(directory: str | os.PathLike[str], what: str = "--out") -> Path:
    """Create ``directory`` if needed and prove it is writable, before any long computation starts."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".intrudim-write-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise IntrudimError(
            f"Cannot write to {what} directory '{directory}': {exc.strerror or exc}. "
            f"Choose a directory you can write to, or fix its permissions."
        ) from None
    return directory

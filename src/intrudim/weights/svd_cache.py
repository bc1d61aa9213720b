"""On-disk cache of base-model SVDs, keyed by a content hash of each matrix (DESIGN.md, "Base SVD cache").

The thin SVD of a base matrix is computed once (float64; from the eigendecomposition of its Gram matrix when a
float64 check allows, see ``base_svd``) and stored as safetensors (U, S, Vh), written
atomically, then reused by every adapter, checkpoint, sweep and repair against that base. The key is a
BLAKE2b hash of the matrix's bytes (in the orientation analysed), its shape and dtype, so a renamed or
moved model still hits the cache and a changed matrix never does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from intrudim.fileio import atomic_path
from intrudim.spectral.svd import SVDFactors, base_svd, thin_svd

CACHE_FORMAT = "1"


def default_cache_dir() -> Path:
    """``$INTRUDIM_CACHE``, else ``$XDG_CACHE_HOME/intrudim``, else ``~/.cache/intrudim``; SVDs live in ``svd/``."""
    root = os.environ.get("INTRUDIM_CACHE")
    if root:
        return Path(root).expanduser() / "svd"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "intrudim" / "svd"


def matrix_hash(W: torch.Tensor) -> str:
    """Content hash of a matrix: its raw bytes, shape and dtype."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{CACHE_FORMAT}|{tuple(W.shape)}|{W.dtype}|".encode())
    flat = W.detach().cpu().contiguous().reshape(-1)
    digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


@dataclass(frozen=True)
class CacheLookup:
    """What :meth:`BaseSVDCache.lookup` found for one matrix: its key (None without a cache directory) and the
    stored factors (None when there is no usable entry)."""

    key: str | None
    factors: SVDFactors | None


class BaseSVDCache:
    """Get-or-compute thin SVDs of base matrices. ``directory=None`` disables the disk cache."""

    def __init__(self, directory: str | Path | None, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        self.directory = Path(directory) if directory is not None else None
        self.dtype = dtype
        self.device = device
        self.hits = 0
        self.misses = 0

    def path_for(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _compute(self, W: torch.Tensor, *, exact: bool = False) -> SVDFactors:
        """The base SVD. Factors stored in float32 (the default) come from the symmetric eigensolver on the smaller
        Gram matrix, checked in float64 to float32 precision, or from LAPACK's SVD where that check fails
        (:func:`~intrudim.spectral.svd.base_svd`); a float64 cache and ``exact`` (no cache: nothing rounded) take
        LAPACK's SVD, exact to float64 rounding."""
        svd = thin_svd if exact or self.dtype != torch.float32 else base_svd
        if self.device != "cpu":
            factors = svd(W.to(self.device))
            return SVDFactors(U=factors.U.cpu(), S=factors.S.cpu(), Vh=factors.Vh.cpu())
        return svd(W)

    def lookup(self, W: torch.Tensor) -> CacheLookup:
        """Hash ``W`` and load its stored SVD if there is one; computes nothing and counts nothing.

        Safe to run in a background thread while another matrix is analysed (the hash releases the GIL), which
        is how `analyze` reads the next matrix ahead (:mod:`intrudim.analysis.prefetch`); :meth:`resolve` then
        finishes the lookup on the thread that analyses.
        """
        if self.directory is None:
            return CacheLookup(key=None, factors=None)
        key = matrix_hash(W)
        return CacheLookup(key=key, factors=self._load(key))

    def _load(self, key: str) -> SVDFactors | None:
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            stored = load_file(str(path))
            # U and Vh stay in the stored dtype (no float64 copy of large bases); S is float64.
            return SVDFactors(U=stored["U"], S=stored["S"].to(torch.float64), Vh=stored["Vh"])
        except (SafetensorError, KeyError, OSError):
            return None  # a damaged entry (e.g. disk full when written elsewhere): recompute and replace it

    def get(self, W: torch.Tensor) -> SVDFactors:
        """Thin SVD of ``W`` from the cache when present: S in float64, U and Vh in the cache dtype."""
        return self.resolve(W, self.lookup(W))

    def resolve(self, W: torch.Tensor, found: CacheLookup) -> SVDFactors:
        """The SVD of ``W`` given its :meth:`lookup`: the stored factors (a hit), else computed and stored (a miss).

        An entry missing at lookup time is looked for once more: an earlier matrix with the same content may have
        stored it since (the lookup ran ahead), and it counts as a hit, as in a plain sequential loop.
        """
        if found.key is None:
            self.misses += 1
            return self._compute(W, exact=True)  # nothing is stored, so nothing is rounded
        factors = found.factors if found.factors is not None else self._load(found.key)
        if factors is not None:
            self.hits += 1
            return factors
        self.misses += 1
        factors = self._compute(W)
        stored = {
            "U": factors.U.to(self.dtype).contiguous(),
            "S": factors.S.to(torch.float64).contiguous(),
            "Vh": factors.Vh.to(self.dtype).contiguous(),
        }
        try:
            with atomic_path(self.path_for(found.key)) as tmp:
                save_file(stored, str(tmp), metadata={"format": CACHE_FORMAT, "shape": str(tuple(W.shape))})
        except OSError:
            pass  # an unwritable cache slows later runs but never fails this one
        return SVDFactors(U=stored["U"], S=stored["S"], Vh=stored["Vh"])

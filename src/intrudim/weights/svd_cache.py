"""On-disk cache of base-model SVDs, keyed by a content hash of each matrix (DESIGN.md, "Base SVD cache").

The thin SVD of a base matrix is computed once (float64; from the eigendecomposition of its Gram matrix when a
float64 check allows, see ``base_svd``) and stored as safetensors (U, S, and Vh unless the matrix is wide or
square: then U spans the output space and the warm path forms what it needs of the right vectors from W₀ itself,
see :class:`~intrudim.spectral.structured.GramCore`), written atomically, then reused by every adapter, checkpoint, sweep and repair against that base. The key is a
BLAKE2b hash of the matrix's bytes (in the orientation analysed), its shape and dtype, so a renamed or
moved model still hits the cache and a changed matrix never does.

Hashing a 7B base reads and hashes 13 GB on every run, and ``scan`` does it once per adapter. So the keys are
also remembered per base file (:class:`KeyMemo`, ``keys/`` beside the factors), the way git's index remembers
file hashes: a remembered key is used only while the file's device, inode, size, mtime and ctime (ns) are those
recorded, and only if the file was last changed at least :data:`RACY_SECONDS` before that matrix was read (a
file changed again within the same clock tick as the read could still look unchanged). Anything else is hashed
again. ``INTRUDIM_KEY_MEMO=0`` turns the memo off.

A half-precision cache (float16 or bfloat16, issue 28) stores LAPACK's float64 factors (those ``--no-cache``
computes) rounded, U and, for a tall matrix, Vh, with a certificate of how far each is from the float64 factor
(:func:`~intrudim.spectral.rounding.certify_factors`, in the entry's metadata); the run that writes an entry
analyses with the float64 factors it just computed. A directory holds one half dtype or full-precision entries:
reading an entry of another precision where a half dtype is involved is a :class:`~intrudim.errors.CacheDtypeError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from intrudim.errors import CacheDtypeError
from intrudim.fileio import atomic_path, write_json_atomic
from intrudim.spectral.rounding import HALF_DTYPES, FactorRounding, certify_factors
from intrudim.spectral.svd import SVDFactors, base_svd, thin_svd

CACHE_FORMAT = "1"
KEY_MEMO_ENV = "INTRUDIM_KEY_MEMO"
KEY_MEMO_FORMAT = 1
RACY_SECONDS = 2.0
"""A remembered key is trusted only for a file last changed at least this long before the matrix was read."""


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


FileStat = tuple[int, int, int, int, int]


def file_stat(file: str | Path) -> FileStat | None:
    """(device, inode, size, mtime_ns, ctime_ns) of ``file``; None when it cannot be read."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class KeyMemo:
    """The cache keys of a base file's matrices, remembered against the file's stat (module docstring).

    One small JSON per base file under ``<cache>/keys/``: ``{"format", "file", "stat", "keys"}``, ``keys`` mapping
    ``"<tensor>|<transposed>"`` to [content hash, time.time_ns() when that matrix was read]. Written atomically; a damaged or foreign
    record is ignored (and the matrix hashed). Safe to use from the read-ahead thread.
    """

    def __init__(self, directory: Path):
        self.directory = directory / "keys"
        self._lock = threading.Lock()
        self._records: dict[str, dict] = {}

    @staticmethod
    def _name(tensor: str, transposed: bool) -> str:
        return f"{tensor}|{int(transposed)}"

    def _path(self, file: Path) -> Path:
        digest = hashlib.blake2b(str(Path(file).resolve()).encode(), digest_size=16).hexdigest()
        return self.directory / f"{digest}.json"

    def _record(self, file: Path) -> dict | None:
        path = self._path(file)
        with self._lock:
            if str(path) in self._records:
                return self._records[str(path)]
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("format") != KEY_MEMO_FORMAT or not isinstance(record.get("keys"), dict):
                record = None
            else:
                record["stat"] = tuple(record["stat"])
        except (OSError, ValueError, TypeError, KeyError):
            record = None
        with self._lock:
            self._records[str(path)] = record
        return record

    def get(self, file: Path, tensor: str, transposed: bool) -> str | None:
        """The remembered key, if the file is provably unchanged since it was recorded; else None."""
        record = self._record(file)
        if record is None:
            return None
        stat = file_stat(file)
        if stat is None or record["stat"] != stat:
            return None
        entry = record["keys"].get(self._name(tensor, transposed))
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            return None
        key, read_ns = entry
        if max(stat[3], stat[4]) > int(read_ns) - int(RACY_SECONDS * 1e9):
            return None  # the file changed too close to when this matrix was read to prove it has not changed since
        return key

    def put(
        self, file: Path, tensor: str, transposed: bool, key: str, stat_before: FileStat | None, read_ns: int
    ) -> None:
        """Remember ``key`` for a matrix read from ``file`` at ``read_ns`` (time.time_ns() before the read), when the
        file's stat was ``stat_before``.

        Nothing is recorded if the file changed while it was read. Each key keeps its own read time: the racy test
        of :meth:`get` compares the file's last change with it. Never fails the run (an unwritable cache only means
        hashing again next time)."""
        if stat_before is None or file_stat(file) != stat_before:
            return
        path = self._path(file)
        with self._lock:
            old = self._records.get(str(path))
            keys = dict(old["keys"]) if old is not None and old["stat"] == stat_before else {}
            keys[self._name(tensor, transposed)] = [key, int(read_ns)]
            record = {"format": KEY_MEMO_FORMAT, "file": str(Path(file).resolve()), "stat": stat_before, "keys": keys}
            self._records[str(path)] = record
            try:
                write_json_atomic(path, {**record, "stat": list(stat_before)}, indent=None)
            except OSError:
                pass


def key_memo_enabled() -> bool:
    """False when ``$INTRUDIM_KEY_MEMO`` is ``0`` (or ``false``/``no``/``off``)."""
    return os.environ.get(KEY_MEMO_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class RecentFactors:
    """The factors of the base matrix most recently loaded from a cache, kept for the next lookup of
    the same key: a matrix-major scan (:mod:`intrudim.scan`) analyses every adapter's factors for one base matrix
    in a row, and so reads that matrix's factors from disk once instead of once per adapter. Keys are content
    hashes, so the same key is the same matrix. One entry: it holds no more than the unit being analysed already
    holds. Safe to share with the read-ahead thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._factors: SVDFactors | None = None

    def get(self, key: str) -> SVDFactors | None:
        with self._lock:
            return self._factors if key == self._key else None

    def put(self, key: str, factors: SVDFactors) -> None:
        with self._lock:
            self._key, self._factors = key, factors

    def clear(self) -> None:
        with self._lock:
            self._key, self._factors = None, None


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
        self.memo = KeyMemo(self.directory) if self.directory is not None and key_memo_enabled() else None
        self.recent: RecentFactors | None = None  # set by a matrix-major scan: the last entry loaded, kept

    def path_for(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key[:2] / f"{key}.safetensors"

    def _compute(self, W: torch.Tensor, *, exact: bool = False) -> SVDFactors:
        """The base SVD. Factors stored in float32 (the default) come from the symmetric eigensolver on the smaller
        Gram matrix, checked in float64 to float32 precision, or from LAPACK's SVD where that check fails
        (:func:`~intrudim.spectral.svd.base_svd`); a float64 or half-precision cache and ``exact`` (no cache: nothing
        rounded) take LAPACK's SVD, exact to float64 rounding (a half cache rounds what --no-cache computes). The Gram route leaves out a wide or
        square matrix's right vectors (Vh None): the warm path does not need them (:class:`~intrudim.spectral.structured.GramCore`)."""
        svd = thin_svd if exact or self.dtype != torch.float32 else partial(base_svd, right_vectors=False)
        if self.device != "cpu":
            factors = svd(W.to(self.device))
            Vh = None if factors.Vh is None else factors.Vh.cpu()
            return SVDFactors(U=factors.U.cpu(), S=factors.S.cpu(), Vh=Vh)
        return svd(W)

    def lookup(self, W: torch.Tensor, *, load: bool = True) -> CacheLookup:
        """Hash ``W`` and load its stored SVD if there is one; computes nothing and counts nothing.

        Safe to run in a background thread while another matrix is analysed (the hash releases the GIL), which
        is how `analyze` reads the next matrix ahead (:mod:`intrudim.analysis.prefetch`); :meth:`resolve` then
        finishes the lookup on the thread that analyses.
        """
        if self.directory is None:
            return CacheLookup(key=None, factors=None)
        key = matrix_hash(W)
        return CacheLookup(key=key, factors=self._load(key) if load else None)

    def lookup_key(self, key: str) -> CacheLookup:
        """The stored SVD for a key known without hashing (:class:`KeyMemo`); computes nothing, counts nothing."""
        return CacheLookup(key=key, factors=self._load(key))

    def _load(self, key: str) -> SVDFactors | None:
        if self.recent is not None and (kept := self.recent.get(key)) is not None and kept.U.dtype == self.dtype:
            return kept
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            stored = load_file(str(path))
            U, S, Vh = stored["U"], stored["S"].to(torch.float64), stored.get("Vh")
            metadata = {}
            if U.dtype in HALF_DTYPES.values():
                with safe_open(str(path), framework="pt") as entry:
                    metadata = entry.metadata() or {}
        except (SafetensorError, KeyError, OSError):
            return None  # a damaged entry (e.g. disk full when written elsewhere): recompute and replace it
        self._check_dtype(path, U.dtype)
        # U and Vh stay in the stored dtype (no float64 copy of large bases); S is float64. An entry of a wide or
        # square matrix written by the Gram route has no Vh (entries written before it have one: both are used).
        rounding = None
        if U.dtype in HALF_DTYPES.values():
            name = next(n for n, d in HALF_DTYPES.items() if d == U.dtype)
            V_shape = None if Vh is None else (int(Vh.shape[1]), int(Vh.shape[0]))
            rounding = FactorRounding.from_metadata(metadata.get("rounding"), name, tuple(U.shape), V_shape)
        factors = SVDFactors(U=U, S=S, Vh=Vh, rounding=rounding)
        if self.recent is not None:
            self.recent.put(key, factors)
        return factors

    def _check_dtype(self, path: Path, stored: torch.dtype) -> None:
        """One precision per directory where a half dtype is involved (float32 and float64 entries mix, as before)."""
        half = tuple(HALF_DTYPES.values())
        if stored == self.dtype or (stored not in half and self.dtype not in half):
            return
        have, want = str(stored).removeprefix("torch."), str(self.dtype).removeprefix("torch.")
        raise CacheDtypeError(
            f"The base SVD cache entry {path} holds {have} factors, but this run asked for --cache-dtype {want} "
            f"(cache_dtype={want!r}). A cache directory holds the factors of one half precision (float16 or "
            f"bfloat16) or full-precision ones (float32/float64), never a mix, so that every decision is bounded by "
            f"the precision it was made with. Run with --cache-dtype {have} on this directory, or give {want} its "
            f"own directory with --cache DIR (or use --no-cache)."
        )

    def exact_factors(self, W: torch.Tensor) -> SVDFactors:
        """The float64 SVD of ``W`` that --no-cache takes (on this cache's device), for re-deciding what
        half-precision factors left within their error bound; not stored, not counted."""
        return self._compute(W, exact=True)

    def get(self, W: torch.Tensor) -> SVDFactors:
        """Thin SVD of ``W`` from the cache when present: S in float64, U and Vh in the cache dtype (Vh None for a
        wide or square matrix from the Gram route, see :meth:`_compute`)."""
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
        return self._store(found.key, W, self._compute(W))

    def put(self, W: torch.Tensor, factors: SVDFactors) -> SVDFactors:
        """Store ``factors``, the SVD of ``W`` computed elsewhere (as :meth:`_compute` would: LAPACK's float64 SVD for
        a float64 or half-precision cache), under W's key; returns what a hit will return. For benchmarks that fill
        several caches from one SVD; counts nothing."""
        assert self.directory is not None
        return self._store(matrix_hash(W), W, factors)

    def _store(self, key: str, W: torch.Tensor, factors: SVDFactors) -> SVDFactors:
        half = self.dtype in HALF_DTYPES.values()
        keep_vh = factors.Vh is not None and (not half or W.shape[0] > W.shape[1])  # half: Vh of tall matrices only
        stored = {
            "U": factors.U.to(self.dtype, memory_format=torch.contiguous_format).contiguous(),  # one pass
            "S": factors.S.to(torch.float64).contiguous(),
        }
        if keep_vh:
            assert factors.Vh is not None
            stored["Vh"] = factors.Vh.to(self.dtype, memory_format=torch.contiguous_format).contiguous()
        metadata = {"format": CACHE_FORMAT, "shape": str(tuple(W.shape))}
        if half:
            name = next(n for n, d in HALF_DTYPES.items() if d == self.dtype)
            rounding = certify_factors(name, factors.U, stored["U"], factors.Vh if keep_vh else None, stored.get("Vh"))
            metadata["rounding"] = rounding.to_metadata()
        try:
            with atomic_path(self.path_for(key)) as tmp:
                save_file(stored, str(tmp), metadata=metadata)
        except OSError:
            pass  # an unwritable cache slows later runs but never fails this one
        if half:
            return factors  # this run decides with the float64 factors it computed: nothing is rounded yet
        return SVDFactors(U=stored["U"], S=stored["S"], Vh=stored.get("Vh"))

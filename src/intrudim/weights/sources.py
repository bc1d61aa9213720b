"""Reading weight matrices one at a time from HF model directories, safetensors files and shards.

A :class:`WeightSource` never loads a whole model: it opens the safetensors files lazily and reads one
tensor per call (``safe_open``), so peak memory does not grow with the number of layers (DESIGN.md,
"Streaming"). Pickle checkpoints (.bin/.pt/.pth) are refused unless the caller opts in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from intrudim.errors import CorruptFileError, InputNotFoundError, IntrudimError, PickleRefusedError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_INDEX = "pytorch_model.bin.index.json"


def read_tensor(file: str | Path, key: str, where: str) -> torch.Tensor:
    """One tensor of a safetensors file, through a handle opened for this read only (a memory map kept open keeps
    every page read so far resident); a damaged file is a CorruptFileError naming ``where``."""
    try:
        with _safe_open(file) as handle:
            return handle.get_tensor(key)
    except SafetensorError as exc:
        raise CorruptFileError(
            f"Cannot read tensor '{key}' from {where}: {exc}. The file may be truncated or corrupt."
        ) from None


def _safe_open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as exc:
        raise CorruptFileError(
            f"Cannot read '{path}': it is not a valid safetensors file ({exc}). The file may be truncated "
            f"or corrupt (an interrupted download or copy?); re-create or re-download it."
        ) from None
    except OSError as exc:
        raise CorruptFileError(f"Cannot open '{path}': {exc.strerror or exc}.") from None


@dataclass
class WeightSource:
    """Lazy access to the named tensors of a model (safetensors, possibly sharded; pickle only on opt-in).

    ``config`` is the model's config.json when there is one (used to detect architecture and GPT-2's
    Conv1D layout).
    """

    path: Path
    files: dict[str, Path]  # tensor name -> file holding it
    config: dict[str, Any] | None = None
    is_pickle: bool = False
    in_memory: bool = False  # tensors of a live model (intrudim.models.memory): no files, no key memo
    _handles: dict[Path, Any] = field(default_factory=dict, repr=False)
    _pickle_cache: dict[Path, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def model_type(self) -> str | None:
        return None if self.config is None else self.config.get("model_type")

    def keys(self) -> list[str]:
        return list(self.files)

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def _handle(self, file: Path):
        if file not in self._handles:
            self._handles[file] = _safe_open(file)
        return self._handles[file]

    def _pickle_state(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._pickle_cache:
            self._pickle_cache.clear()  # keep one shard in memory at a time
            self._pickle_cache[file] = _load_pickle(file)
        return self._pickle_cache[file]

    def shape(self, key: str) -> tuple[int, ...]:
        file = self.files[key]
        if self.is_pickle:
            return tuple(self._pickle_state(file)[key].shape)
        return tuple(self._handle(file).get_slice(key).get_shape())

    def load(self, key: str) -> torch.Tensor:
        """Read one tensor (as stored: dtype and layout unchanged).

        The file is opened for this read only: a long-lived memory map would keep every page read so far
        mapped into the process, and resident memory would grow with the number of layers.
        """
        file = self.files[key]
        if self.is_pickle:
            return self._pickle_state(file)[key]
        self._handles.pop(file, None)
        return read_tensor(file, key, f"'{file}'")

    def close(self) -> None:
        self._handles.clear()
        self._pickle_cache.clear()


def _load_pickle(file: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises many kinds here; all mean "cannot read this file"
        raise CorruptFileError(f"Cannot load pickle checkpoint '{file}': {exc}") from None
    if not isinstance(state, dict):
        raise CorruptFileError(f"'{file}' does not hold a state dict (found {type(state).__name__}).")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"Cannot parse JSON file '{path}': {exc}") from None


def _refuse_pickle(path: Path, allow_pickle: bool) -> None:
    if not allow_pickle:
        raise PickleRefusedError(
            f"'{path}' is a pickle checkpoint. Loading pickles can run arbitrary code, so intrudim refuses "
            f"them by default. Convert it to safetensors, or pass --allow-pickle (allow_pickle=True) if you "
            f"trust its source."
        )


def _files_of_safetensors(paths: list[Path]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for file in paths:
        with _safe_open(file) as handle:
            for key in handle.keys():
                files[key] = file
    return files


def open_weights(path: str | Path, *, allow_pickle: bool = False) -> WeightSource:
    """Open the weights of a local model: an HF directory (safetensors, possibly sharded), a .safetensors file, or
    (opt-in) a pickle. Names (embedded models, Hub ids, run directories) are resolved to a path first by
    :func:`intrudim.models.resolve_reference`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise InputNotFoundError(
            f"'{path}' does not exist. Give a Hugging Face model directory, a .safetensors file or a PEFT adapter "
            f"directory."
        )
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path, allow_pickle)
            state = _load_pickle(path)
            return WeightSource(path=path, files={k: path for k in state}, is_pickle=True)
        if path.suffix != ".safetensors":
            raise IntrudimError(
                f"'{path}' is neither a .safetensors file nor a model directory. Give a HuggingFace model "
                f"directory, a .safetensors file or a PEFT adapter directory."
            )
        config_path = path.parent / "config.json"
        config = _read_json(config_path) if config_path.exists() else None
        return WeightSource(path=path, files=_files_of_safetensors([path]), config=config)

    config = _read_json(path / "config.json") if (path / "config.json").exists() else None
    if (path / SAFETENSORS_INDEX).exists():
        index = _read_json(path / SAFETENSORS_INDEX)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CorruptFileError(f"'{path / SAFETENSORS_INDEX}' has no 'weight_map'.")
        missing = sorted({f for f in weight_map.values() if not (path / f).exists()})
        if missing:
            raise InputNotFoundError(
                f"The shard index '{path / SAFETENSORS_INDEX}' names {len(missing)} missing file(s), first "
                f"'{missing[0]}'. Copy every shard into '{path}'."
            )
        return WeightSource(path=path, files={k: path / f for k, f in weight_map.items()}, config=config)
    single = sorted(path.glob("*.safetensors"))
    model_files = [f for f in single if f.name == "model.safetensors"] or [
        f for f in single if f.name != "adapter_model.safetensors"
    ]
    if model_files:
        return WeightSource(path=path, files=_files_of_safetensors(model_files), config=config)
    pickles = [path / "pytorch_model.bin"] if (path / "pytorch_model.bin").exists() else []
    if (path / PICKLE_INDEX).exists():
        index = _read_json(path / PICKLE_INDEX)
        pickles = sorted({path / f for f in index.get("weight_map", {}).values()})
    if pickles:
        _refuse_pickle(pickles[0], allow_pickle)
        files: dict[str, Path] = {}
        for file in pickles:
            for key in _load_pickle(file):
                files[key] = file
        return WeightSource(path=path, files=files, config=config, is_pickle=True)
    raise InputNotFoundError(
        f"No weights found in '{path}': expected model.safetensors, a sharded model.safetensors.index.json, "
        f"or a PEFT adapter (adapter_config.json + adapter_model.safetensors)."
    )

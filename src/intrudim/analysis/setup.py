"""What a matrix verb sets up before its first matrix: the config with overrides, the device, the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from intrudim.analysis.config import CACHE_DTYPES, AnalyzeConfig
from intrudim.errors import IntrudimError
from intrudim.weights.svd_cache import BaseSVDCache, default_cache_dir


def resolve_config(config: AnalyzeConfig | None, overrides: dict[str, Any]) -> AnalyzeConfig:
    """``config`` with keyword overrides applied (or a config built from them); checks that a GPU exists."""
    if config is None:
        config = AnalyzeConfig(**overrides)
    elif overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    check_device(config.device)
    return config


def check_device(device: str) -> None:
    """A clear error when ``cuda`` is asked for on a machine without a CUDA GPU."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise IntrudimError(f"--device {device} was asked for, but no CUDA GPU is available here. Use --device cpu.")


def open_cache(config: AnalyzeConfig, cache_dir: str | Path | None, use_cache: bool) -> BaseSVDCache:
    """The base SVD cache every matrix verb reads (``cache_dir`` or the default; none with ``use_cache=False``)."""
    directory = (cache_dir if cache_dir is not None else default_cache_dir()) if use_cache else None
    return BaseSVDCache(directory, dtype=CACHE_DTYPES[config.cache_dtype], device=config.device)

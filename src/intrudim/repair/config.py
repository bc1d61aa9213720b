"""What `repair` does: :class:`RepairConfig`. Defaults are the paper's (v2): λ = 0.75, k = 10, ε = 0.5."""

from __future__ import annotations

import math
from dataclasses import dataclass

from intrudim.analysis.config import AnalyzeConfig
from intrudim.errors import InvalidConfigError
from intrudim.spectral.repair import CONTROLS

DEFAULT_LAMBDA = 0.75
"""The v2 intervention's default scale for the intruders' singular values (also peft's default)."""


def check_lambda(value: object, what: str = "lambda") -> float:
    """λ must be a finite number ≥ 0 (0 removes the directions, 1 keeps them, > 1 amplifies them)."""
    try:
        lam = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidConfigError(f"{what} must be a number ≥ 0 (e.g. 0.75); got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(lam) or lam < 0:
        raise InvalidConfigError(
            f"{what} must be a finite number ≥ 0: 0 removes the intruders' directions, 1 leaves them as they are; "
            f"got {value!r}."
        )
    return lam


@dataclass(frozen=True)
class RepairConfig:
    """Scale the singular values of the intruders among the top-k by λ (the v2 intervention).

    ``control``: ``none`` (repair the intruders), ``non-intruder`` (scale as many top non-intruder directions
    by λ) or ``shrink`` (W₀ + c·ΔW removing the same Frobenius norm as the intruder repair).
    """

    lam: float = DEFAULT_LAMBDA
    k: int = 10
    epsilon: float = 0.5
    control: str = "none"
    modules: str | None = None
    include_embeddings: bool = False
    include_heads: bool = False
    device: str = "cpu"
    cache_dtype: str = "float32"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        check_lambda(self.lam)
        if self.control not in CONTROLS:
            raise InvalidConfigError(
                f"control must be one of {', '.join(CONTROLS)} ('none' repairs the intruders themselves); "
                f"got {self.control!r}."
            )
        _ = self.analyze_config  # validates k, ε, modules, device, cache dtype with analyze's messages

    @property
    def analyze_config(self) -> AnalyzeConfig:
        """The same matrices, k and ε as ``analyze`` uses (repair plans its work with analyze's steps)."""
        return AnalyzeConfig(
            k=self.k, epsilon=self.epsilon, modules=self.modules, include_embeddings=self.include_embeddings,
            include_heads=self.include_heads, device=self.device, cache_dtype=self.cache_dtype,
            allow_pickle=self.allow_pickle, effective_rank=False,
        )  # fmt: skip

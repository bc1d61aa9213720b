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

    Per matrix, W' = W_t + (λ − 1)·Σ_{j∈I} σ_j u_j v_jᵀ, with I the intruders among the top-k singular vectors of
    W_t (found exactly as ``analyze`` finds them). A frozen dataclass, validated when built; ``repair(...)`` and
    ``intrudim repair`` build one from their options.

    Attributes:
        lam: λ, the factor applied to each intruder's singular value (default 0.75, the v2 paper's and peft's).
            0 removes the intruders' directions, 1 leaves the model as it is, > 1 amplifies them; ≥ 0.
        k: How many top singular vectors of W_t are examined for intruders (default 10; Sec. 4).
        epsilon: The intruder threshold on max |cos| to every base left singular vector (default 0.5; Sec. 4,
            Definition 1).
        control: What is scaled (default ``"none"``): ``"none"`` repairs the intruders; ``"non-intruder"`` scales as
            many of the top non-intruder directions by λ (a control: is the effect specific to intruders?);
            ``"shrink"`` replaces ΔW by c·ΔW, with c per matrix chosen to remove the same Frobenius norm as the
            intruder repair (the norm-matched control).
        modules: A regular expression on parameter names choosing the matrices (default None: those ``analyze``
            takes, every 2-D linear weight inside the transformer blocks that the adapter modifies).
        include_embeddings: Also repair embedding tables (default False), as ``analyze --include-embeddings``.
        include_heads: Also repair heads (default False), as ``analyze --include-heads``.
        device: ``"cpu"`` (default) or ``"cuda[:N]"``: where the base SVDs are computed.
        cache_dtype: Precision of the base SVD cache's factors, ``"float32"`` (default) or ``"float64"``. Not
            ``"float16"``/``"bfloat16"``: a repair writes weights from the tuned singular vectors, which half-precision
            base factors would round (``analyze`` and ``scan`` take them).
        allow_pickle: Allow loading ``.bin``/``.pt`` pickle checkpoints (default False: they can run code).
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
        if self.cache_dtype in ("float16", "bfloat16"):
            raise InvalidConfigError(
                f"repair needs float32 or float64 base factors; got cache_dtype={self.cache_dtype!r}. A repair writes "
                f"weights from the tuned singular vectors, which half-precision factors would round (analyze and scan "
                f"read half-precision caches). Use cache_dtype='float32' (the default) with a cache directory of "
                f"float32 factors."
            )

    @property
    def analyze_config(self) -> AnalyzeConfig:
        """The same matrices, k and ε as ``analyze`` uses (repair plans its work with analyze's steps)."""
        return AnalyzeConfig(
            k=self.k, epsilon=self.epsilon, modules=self.modules, include_embeddings=self.include_embeddings,
            include_heads=self.include_heads, device=self.device, cache_dtype=self.cache_dtype,
            allow_pickle=self.allow_pickle, effective_rank=False,
        )  # fmt: skip

"""What `analyze` (and every verb built on its matrix planning: repair, scan) measures: :class:`AnalyzeConfig`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from intrudim.errors import InvalidConfigError
from intrudim.spectral.intruders import EPSILON_SWEEP, K_SWEEP_FRACTIONS
from intrudim.weights.selection import MatrixSelection

CACHE_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The precisions the base SVD cache stores U₀ (and Vh) in; σ is always float64. float16/bfloat16: half the bytes
of float32, each decision their rounding could change re-decided in float64 (:mod:`intrudim.spectral.rounding`)."""


@dataclass(frozen=True)
class AnalyzeConfig:
    """What `analyze` measures. Defaults are the paper's: k = 10, ε = 0.5 (Sec. 4).

    A frozen dataclass, validated when built (a bad value raises ``InvalidConfigError`` naming it). ``analyze``
    builds one from its keyword arguments (``analyze(base, tuned, k=20)``), and ``repair``, ``scan`` and the
    Trainer callback measure with the same fields.

    Attributes:
        k: How many top singular vectors of each tuned matrix W_t are examined (default 10; the paper's k, Sec. 4,
            Fig. 4). Rank 1 is the largest singular value.
        epsilon: The threshold ε on max |cos| to every base left singular vector: a tuned vector below it is an
            intruder dimension (default 0.5; Sec. 4, Definition 1). In (0, 1].
        modules: A regular expression on parameter names choosing the matrices; None (default) takes every 2-D
            linear weight inside the transformer blocks (attention q/k/v/o, MLP in/out), or for an adapter the
            matrices it modifies. Replaces the default choice, as ``--modules``.
        include_embeddings: Also analyse embedding tables (default False).
        include_heads: Also analyse heads: LM head, classifier, pooler (default False).
        epsilons: The thresholds of the ε-sweep (default 0.1, 0.2, …, 0.9; Fig. 5).
        k_sweep: Also count intruders for k as fractions of each matrix's singular vectors (default False; Fig. 11).
            Needs the full tuned spectrum (a dense SVD of the small LoRA core, or of the dense matrix).
        k_fractions: The fractions of the k-sweep (default 0.2, 0.4, 0.6, 0.8, 1.0; Fig. 11).
        similarity_size: How many base vectors each matrix keeps in its |cos| similarity rows, the heatmap of
            Figs. 1 and 3 (default 50).
        effective_rank: Compute the effective rank of ΔW (default True; Fig. 6, Roy & Vetterli 2007). Cheap for
            LoRA; for a dense model it needs every singular value of ΔW.
        method: ``"auto"`` (default) or ``"structured"``: a LoRA adapter is analysed from its factors and the
            cached base SVD, never merged; ``"dense"``: merge and take a dense top-k SVD (the slow reference). A
            dense tuned model always takes the dense top-k.
        device: ``"cpu"`` (default) or ``"cuda[:N]"``: where the base SVDs are computed.
        cache_dtype: Precision of the factors stored in the base SVD cache: ``"float32"`` (default, half the disk
            of float64), ``"float64"`` (the same counts, ranks and sweeps as no cache; max |cos| and σ to float64
            rounding), or ``"float16"``/``"bfloat16"`` (half the disk of float32; the same counts, ranks and sweeps
            as no cache: every decision within the half factors' certified error of a threshold, or whose rank
            order they could change, is re-decided with a float64 SVD of that base matrix, and the result counts
            the matrices re-decided; max |cos| and σ to the half precision's rounding). A cache directory holds one
            half precision or full-precision factors, not a mix.
        allow_pickle: Allow loading ``.bin``/``.pt`` pickle checkpoints (default False: they can run code).
    """

    k: int = 10
    epsilon: float = 0.5
    modules: str | None = None  # regex on parameter names; default: all 2-D linear weights in the blocks
    include_embeddings: bool = False
    include_heads: bool = False
    epsilons: tuple[float, ...] = EPSILON_SWEEP  # Fig. 5
    k_sweep: bool = False  # Fig. 11: needs the full tuned spectrum (dense SVD of the small core / matrix)
    k_fractions: tuple[float, ...] = K_SWEEP_FRACTIONS
    similarity_size: int = 50  # base vectors kept per matrix for the Fig. 1/3 heatmap
    effective_rank: bool = True  # Fig. 6 (needs all singular values of ΔW; cheap for LoRA)
    method: str = "auto"  # "auto"/"structured": LoRA from factors; "dense": merge and SVD (reference)
    device: str = "cpu"
    cache_dtype: str = "float32"
    allow_pickle: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise InvalidConfigError(f"k must be a positive integer (the number of top tuned vectors); got {self.k!r}.")
        if not (0.0 < float(self.epsilon) <= 1.0):
            raise InvalidConfigError(
                f"epsilon must be in (0, 1] (a threshold on |cos|); got {self.epsilon!r}. The paper uses 0.5."
            )
        for eps in self.epsilons:
            if not (0.0 < float(eps) <= 1.0):
                raise InvalidConfigError(f"every value of epsilons must be in (0, 1]; got {eps!r}.")
        for fraction in self.k_fractions:
            if not (0.0 < float(fraction) <= 1.0):
                raise InvalidConfigError(f"every k fraction must be in (0, 1]; got {fraction!r}.")
        if self.similarity_size < 1:
            raise InvalidConfigError(f"similarity_size must be ≥ 1; got {self.similarity_size!r}.")
        if self.method not in ("auto", "structured", "dense"):
            raise InvalidConfigError(f"method must be 'auto', 'structured' or 'dense'; got {self.method!r}.")
        if self.cache_dtype not in CACHE_DTYPES:
            raise InvalidConfigError(
                f"cache_dtype must be one of {', '.join(repr(name) for name in CACHE_DTYPES)}; got "
                f"{self.cache_dtype!r}. float32 is the default; float16 and bfloat16 store half the bytes and "
                f"re-decide in float64 what their rounding could change."
            )
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InvalidConfigError(f"device must be 'cpu' or 'cuda[:N]'; got {self.device!r}.")
        if self.modules is not None:
            import re

            try:
                re.compile(self.modules)
            except re.error as exc:
                raise InvalidConfigError(f"modules is not a valid regular expression ({self.modules!r}): {exc}.") from None

    @property
    def selection(self) -> MatrixSelection:
        return MatrixSelection(self.modules, self.include_embeddings, self.include_heads)


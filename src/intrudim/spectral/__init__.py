"""Pure tensor math, no I/O: SVDs, the structured LoRA top-k, intruders and their measures, the toy model.

Everything the README names is importable from here, e.g. ``from intrudim.spectral import thin_svd``.
"""

from intrudim.spectral.intruders import (
    EPSILON_SWEEP,
    K_SWEEP_FRACTIONS,
    count_intruders,
    epsilon_sweep,
    intruder_energy_share,
    intruder_ranks,
    k_sweep,
    max_abs_cosine,
    random_vector_max_cosine,
)
from intrudim.spectral.krylov import KrylovResult, block_krylov_top_k
from intrudim.spectral.structured import CoreTopK, LoraCore, core_full_spectrum, core_top_k, lora_core
from intrudim.spectral.svd import (
    DENSE_SVD_MAX_DIM,
    SVDFactors,
    base_svd,
    effective_rank,
    low_rank_singular_values,
    singular_values,
    thin_svd,
    top_k_svd,
)
from intrudim.spectral.toy import (
    RandomBaselinePoint,
    ToyPoint,
    ToySweep,
    random_vector_baseline,
    toy_findings,
    toy_lambda_sweep,
)

__all__ = [
    "DENSE_SVD_MAX_DIM",
    "EPSILON_SWEEP",
    "K_SWEEP_FRACTIONS",
    "CoreTopK",
    "KrylovResult",
    "LoraCore",
    "RandomBaselinePoint",
    "SVDFactors",
    "ToyPoint",
    "ToySweep",
    "base_svd",
    "block_krylov_top_k",
    "core_full_spectrum",
    "core_top_k",
    "count_intruders",
    "effective_rank",
    "epsilon_sweep",
    "intruder_energy_share",
    "intruder_ranks",
    "k_sweep",
    "lora_core",
    "low_rank_singular_values",
    "max_abs_cosine",
    "random_vector_baseline",
    "random_vector_max_cosine",
    "singular_values",
    "thin_svd",
    "toy_findings",
    "toy_lambda_sweep",
    "top_k_svd",
]

"""`intrudim analyze BASE TUNED`: intruder dimensions per matrix (Sec. 3–4, Figs. 1–6, 11, 13).

The implementation lives in :mod:`intrudim.analysis` (config, planning, running, results), which repair
and scan share; this module keeps the public names importable from ``intrudim.analyze``.
"""

from intrudim.analysis import (
    AnalysisResult,
    AnalyzeConfig,
    MatrixResult,
    analyze,
    analyze_dense_matrix,
    analyze_lora_matrix,
    write_json,
)

__all__ = [
    "AnalysisResult", "AnalyzeConfig", "MatrixResult", "analyze", "analyze_dense_matrix", "analyze_lora_matrix",
    "write_json",
]  # fmt: skip

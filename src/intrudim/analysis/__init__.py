"""The steps every matrix verb shares (analyze, repair, scan): config → planning → running → results.

``intrudim.analyze`` (the module) re-exports the public names, so ``from intrudim.analyze import analyze``
keeps working.
"""

from intrudim.analysis.config import AnalyzeConfig
from intrudim.analysis.matrix import analyze_dense_matrix, analyze_lora_matrix
from intrudim.analysis.planning import AnalysisInputs, MatrixJob, open_inputs
from intrudim.analysis.results import AnalysisResult, MatrixResult, write_json
from intrudim.analysis.running import analyze
from intrudim.analysis.setup import open_cache, resolve_config

__all__ = [
    "AnalysisInputs", "AnalysisResult", "AnalyzeConfig", "MatrixJob", "MatrixResult", "analyze",
    "analyze_dense_matrix", "analyze_lora_matrix", "open_cache", "open_inputs", "resolve_config",
    "write_json",
]  # fmt: skip

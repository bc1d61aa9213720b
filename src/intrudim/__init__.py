"""intrudim: find, measure and repair intruder dimensions in fine-tuned transformers.

Reproduces "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (Shuttleworth et al.).
"""

from __future__ import annotations

__version__ = "0.1.0"

from intrudim.threads import prefer_passive_openmp

prefer_passive_openmp()  # before torch loads OpenMP: no spin-waiting on shared cores (intrudim.threads)

from intrudim.analyze import AnalysisResult, AnalyzeConfig, MatrixResult, analyze  # noqa: E402
from intrudim.errors import IntrudimError  # noqa: E402

__all__ = ["AnalysisResult", "AnalyzeConfig", "IntrudimError", "MatrixResult", "analyze", "__version__"]

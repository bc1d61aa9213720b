"""intrudim: find, measure and repair intruder dimensions in fine-tuned transformers.

Reproduces "LoRA vs Full Fine-tuning: An Illusion of Equivalence" (Shuttleworth et al.).
"""

from __future__ import annotations

__version__ = "0.1.0"

from intrudim.analyze import AnalysisResult, AnalyzeConfig, MatrixResult, analyze
from intrudim.errors import IntrudimError

__all__ = ["AnalysisResult", "AnalyzeConfig", "IntrudimError", "MatrixResult", "analyze", "__version__"]

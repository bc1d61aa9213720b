"""Fine-tuning engine: full FT, LoRA (α = 2r, fixed α, rsLoRA) and B-only LoRA (App. A, Figs. 7, 10, 12)."""

from intrudim.train.config import TrainConfig
from intrudim.train.engine import train
from intrudim.train.metrics import read_metrics
from intrudim.train.result import TrainResult
from intrudim.train.sweep import SweepResult, rank_sweep

__all__ = ["SweepResult", "TrainConfig", "TrainResult", "rank_sweep", "read_metrics", "train"]

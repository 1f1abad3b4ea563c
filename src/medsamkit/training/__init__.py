"""Fine-tuning SAM-family segmenters: decoder-only training, threshold sweep."""

from ._engine import FinetuneConfig, FinetuneResult, finetune, sweep_thresholds

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "sweep_thresholds"]

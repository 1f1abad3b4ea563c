"""Fine-tuning SAM-family segmenters: decoder-only or LoRA training, threshold sweep, k-fold cross-validation."""

from ._crossval import CROSSVAL_PROMPTERS, CROSSVAL_SETTINGS, CrossvalResult, crossval
from ._engine import FinetuneConfig, FinetuneResult, finetune, sweep_thresholds
from ._lora import (
    LORA_FILE,
    apply_lora,
    has_lora,
    load_lora,
    lora_settings,
    merge_lora,
    read_lora,
    save_lora,
    unload_lora,
)

__all__ = [
    "CROSSVAL_PROMPTERS",
    "CROSSVAL_SETTINGS",
    "CrossvalResult",
    "LORA_FILE",
    "FinetuneConfig",
    "FinetuneResult",
    "apply_lora",
    "crossval",
    "finetune",
    "has_lora",
    "load_lora",
    "lora_settings",
    "merge_lora",
    "read_lora",
    "save_lora",
    "sweep_thresholds",
    "unload_lora",
]

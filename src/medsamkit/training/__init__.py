"""Fine-tuning SAM-family segmenters: decoder-only or LoRA training, threshold sweep, k-fold cross-validation,
SAM-Mix (classifier + CAM-prompted segmenter trained together) and its two-stage baseline SAM-PP; the shared
epoch loop (:func:`run_epochs`: history, best epoch, patience, resumable ``last.pt``) for other trained parts."""

from ._crossval import CROSSVAL_PROMPTERS, CROSSVAL_SETTINGS, CrossvalResult, crossval
from ._engine import FinetuneConfig, FinetuneResult, finetune, sweep_thresholds
from ._loop import LoopResult, ModulePart, run_epochs
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
from ._recorded import out_of_fold_prompts
from ._sammix import SAMMixConfig, SAMMixResult, fit_sam_pp, fit_sammix, pick_labelled

__all__ = [
    "CROSSVAL_PROMPTERS",
    "CROSSVAL_SETTINGS",
    "LORA_FILE",
    "CrossvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "LoopResult",
    "ModulePart",
    "SAMMixConfig",
    "SAMMixResult",
    "apply_lora",
    "crossval",
    "finetune",
    "fit_sam_pp",
    "fit_sammix",
    "has_lora",
    "load_lora",
    "lora_settings",
    "merge_lora",
    "out_of_fold_prompts",
    "pick_labelled",
    "read_lora",
    "run_epochs",
    "save_lora",
    "sweep_thresholds",
    "unload_lora",
]

"""Recorded training prompts (:func:`out_of_fold_prompts`, defined in ``medsamkit._folds``; prompters use it too)."""

from __future__ import annotations

from .._folds import out_of_fold_prompts

__all__ = ["out_of_fold_prompts"]

"""Prompt providers: where to segment, as boxes or points."""

from ._fixed import FixedPrompter
from ._mean_mask import MeanMaskPointPrompter
from ._oracle import OracleBoxPrompter, PerturbedBoxPrompter

__all__ = ["FixedPrompter", "MeanMaskPointPrompter", "OracleBoxPrompter", "PerturbedBoxPrompter"]

"""SAM-family segmenters behind the :class:`~medsamkit.Segmenter` protocol.

Importing this package does not import torch; each backend imports it when built.
"""

from ._litemedsam import LiteMedSAM, build_litemedsam_model, litemedsam_checkpoint_path

__all__ = ["LiteMedSAM", "build_litemedsam_model", "litemedsam_checkpoint_path"]

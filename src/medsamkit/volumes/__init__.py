"""3D volumes: slice-by-slice segmentation with any pipeline, volume prompts and 3D clean-up.

- :func:`segment_volume` -> :class:`VolumeResult` (a mask :class:`~medsamkit.data.Volume`
  with the input's geometry, plus what was encoded and how long it took).
- Volume prompts: :class:`OracleSliceBoxes`, :class:`Box3D` (CVPR 2024 MedSAM-on-laptop
  box format), :class:`Propagate`, :class:`AutoSlices`; :func:`volume_prompt` by name.
- :func:`consistent_3d`: bridge single-slice gaps, keep the largest 3D components.

Reading and writing volumes is in :mod:`medsamkit.data` (``read_volume``, ``write_volume``,
``write_dicom_seg``); 3D metrics in :mod:`medsamkit.metrics` (``volume_metrics``).
"""

from ._segment import (
    AutoSlices,
    Box3D,
    OracleSliceBoxes,
    Propagate,
    VolumeResult,
    consistent_3d,
    segment_volume,
    volume_prompt,
)

__all__ = [
    "AutoSlices",
    "Box3D",
    "OracleSliceBoxes",
    "Propagate",
    "VolumeResult",
    "consistent_3d",
    "segment_volume",
    "volume_prompt",
]

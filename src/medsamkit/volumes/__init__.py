"""3D volumes: slice-by-slice segmentation with any pipeline, volume prompts and 3D clean-up.

- :func:`segment_volume` -> :class:`VolumeResult` (a mask :class:`~medsamkit.data.Volume`
  with the input's geometry, plus what was encoded and how long it took).
- Volume prompts: :class:`OracleSliceBoxes`, :class:`Box3D` (CVPR 2024 MedSAM-on-laptop
  box format), :class:`Propagate`, :class:`AutoSlices`; :func:`volume_prompt` by name.
- :func:`evaluate_volumes` / :func:`segment_volumes`: a :class:`~medsamkit.data.VolumeFolder`
  to ``metrics.csv`` (Dice, NSD, HD95 in mm), masks in the input's format and pictures.
- :func:`consistent_3d`: bridge single-slice gaps, keep the largest 3D components.

Reading and writing volumes is in :mod:`medsamkit.data` (``read_volume``, ``write_volume``,
``write_dicom_seg``); 3D metrics in :mod:`medsamkit.metrics` (``volume_metrics``).
"""

from ._evaluate import (
    VOLUME_CSV_COLUMNS,
    VolumeReport,
    evaluate_volumes,
    segment_volumes,
)
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
    "VOLUME_CSV_COLUMNS",
    "AutoSlices",
    "Box3D",
    "OracleSliceBoxes",
    "Propagate",
    "VolumeReport",
    "VolumeResult",
    "consistent_3d",
    "evaluate_volumes",
    "segment_volume",
    "segment_volumes",
    "volume_prompt",
]

"""Image/mask IO, folder datasets and seeded splits.

- :func:`read_image`, :func:`read_mask`, :func:`write_image`, :func:`write_mask`:
  file IO keeping native dtypes (uint8, uint16, float32), RGB channel order.
- :func:`read_volume` / :class:`Volume`: NIfTI, NRRD, MHA and DICOM series with their
  geometry (``medical`` extra); :func:`read_dicom_image` for one DICOM file;
  :func:`write_volume` (NIfTI/NRRD/MHA with the source geometry), :func:`write_dicom_seg`
  and :func:`read_dicom_seg` (DICOM Segmentation referencing the source images).
- :func:`atomic_write_bytes`, :func:`atomic_write_text`: crash-safe file writes;
  :func:`csv_text`: the CSV text of every table medsamkit writes.
- :class:`MaskFolder` / :class:`Sample`: ``root/images`` + ``root/masks`` paired by stem.
- :class:`CsvSamples`: image/mask paths listed in a CSV file (CXLSeg layout).
- :class:`VolumeFolder` / :class:`VolumeSample`: ``root/images`` + ``root/masks`` of volume
  files or DICOM series folders (masks as volumes or DICOM-SEG).
- :func:`train_val_test_split` / :func:`kfold_splits`: deterministic, optionally
  stratified splits of stems (:class:`Split`, :class:`Fold`).
"""

from ._folder import MaskFolder, Sample, image_samples, match_masks
from ._io import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    ImageReadError,
    atomic_write_bytes,
    atomic_write_text,
    csv_text,
    read_image,
    read_mask,
    write_image,
    write_mask,
)
from ._medical import (
    VOLUME_SUFFIXES,
    Volume,
    is_dicom_series_folder,
    is_volume_path,
    read_dicom_image,
    read_volume,
    volume_stem,
)
from ._medical_write import read_dicom_seg, write_dicom_seg, write_volume
from ._splits import Fold, Split, kfold_splits, train_val_test_split
from ._table import CsvSamples
from ._volume_folder import VolumeFolder, VolumeSample, looks_like_volume_folder

__all__ = [
    "IMAGE_SUFFIXES",
    "CsvSamples",
    "Fold",
    "ImageReadError",
    "MASK_SUFFIXES",
    "MaskFolder",
    "Sample",
    "Split",
    "VOLUME_SUFFIXES",
    "Volume",
    "VolumeFolder",
    "VolumeSample",
    "atomic_write_bytes",
    "atomic_write_text",
    "csv_text",
    "image_samples",
    "is_dicom_series_folder",
    "is_volume_path",
    "kfold_splits",
    "looks_like_volume_folder",
    "match_masks",
    "read_image",
    "read_dicom_image",
    "read_dicom_seg",
    "read_mask",
    "read_volume",
    "train_val_test_split",
    "volume_stem",
    "write_image",
    "write_dicom_seg",
    "write_mask",
    "write_volume",
]

"""Writing masks in medical formats: NIfTI / NRRD / MHA with the source geometry, and DICOM-SEG.

Needs the ``medical`` extra (``pip install medsamkit[medical]``): SimpleITK writes
the volume files, highdicom and pydicom write and read DICOM Segmentation objects.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Union

import numpy as np

from ._errors import ImageReadError
from ._medical import VOLUME_SUFFIXES, Volume, require_medical

__all__ = ["read_dicom_seg", "write_dicom_seg", "write_volume"]

PathLike = Union[str, "os.PathLike[str]"]


def _volume_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"path: expected a file name ending in one of {', '.join(VOLUME_SUFFIXES)}, got '{path}'")


def write_volume(path: PathLike, volume: Volume, array: np.ndarray | None = None) -> Path:
    """Write a volume (or ``array`` with ``volume``'s geometry) as NIfTI, NRRD or MetaImage.

    The spacing, origin and direction are written as they are, so the file opens
    aligned with its source in 3D Slicer, ITK-SNAP or nibabel. Bool arrays (masks)
    are written as uint8 0/1. The file is written under a temporary name in the same
    folder and renamed into place.

    Args:
        path: Target file; its suffix picks the format (``.nii.gz``, ``.nii``,
            ``.nrrd``, ``.mha``, ...). Parent folders are created.
        volume: The geometry (and, without ``array``, the voxels).
        array: ``(D, H, W)`` voxels of the same shape as ``volume``.

    Returns:
        The written path.
    """
    sitk = require_medical("SimpleITK")
    path = Path(path)
    suffix = _volume_suffix(path)
    if not isinstance(volume, Volume):
        raise TypeError(f"volume: expected a medsamkit.data.Volume (the geometry), got {type(volume).__name__}")
    data = volume.array if array is None else np.asarray(array)
    if data.shape != volume.array.shape:
        raise ValueError(f"array: expected shape {volume.shape} (the volume's), got {data.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        sitk.WriteImage(volume.to_sitk(data), str(tmp), True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _source_datasets(source: Volume) -> list[Any]:
    pydicom = require_medical("pydicom")
    files = source.meta.get("files") if isinstance(source, Volume) else None
    if not files:
        raise ValueError(
            "source: expected a Volume read from DICOM (read_volume of a series folder or a .dcm file), "
            f"got one without DICOM files ({source!r})"
        )
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:  # an empty SpecificCharacterSet (seen in real CTs) means the default; highdicom refuses ''
        if "SpecificCharacterSet" in ds and not str(ds.SpecificCharacterSet or "").strip():
            del ds.SpecificCharacterSet
        if "PixelSpacing" in ds and not all(float(v) > 0 for v in ds.PixelSpacing):
            del ds.PixelSpacing  # "0\\0" (unknown, seen in real radiographs) would make an invalid SEG
    return datasets


def write_dicom_seg(
    path: PathLike,
    mask: np.ndarray,
    source: Volume,
    *,
    label: str = "target",
    algorithm: str = "medsamkit",
) -> Path:
    """Write a binary mask as a DICOM Segmentation (BINARY) referencing its source images.

    Args:
        path: Target ``.dcm`` file.
        mask: ``(D, H, W)`` mask on the source's voxels (``(H, W)`` for a single image).
        source: The :class:`Volume` read by :func:`read_volume` from the DICOM series
            folder or DICOM file the mask belongs to; frame ``k`` of the mask refers
            to its ``k``-th (z-sorted) file.
        label: Segment label.
        algorithm: Algorithm name recorded in the segment description.

    Returns:
        The written path. Empty slices are omitted (highdicom's default); reading
        back with :func:`read_dicom_seg` restores them as empty.
    """
    hd = require_medical("highdicom")
    from pydicom.sr.codedict import codes

    from .._version import __version__

    path = Path(path)
    if not path.name.lower().endswith(".dcm"):
        raise ValueError(f"path: expected a file name ending in '.dcm', got '{path}'")
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    if array.shape != source.array.shape:
        raise ValueError(f"mask: expected shape {source.shape} (the source's), got {array.shape}")
    datasets = _source_datasets(source)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm, version=__version__, family=codes.DCM.ArtificialIntelligence
        ),
    )
    pixels = array.astype(bool).astype(np.uint8)
    if len(datasets) == 1 and "NumberOfFrames" not in datasets[0]:
        pixels = pixels[0]
    import warnings

    with warnings.catch_warnings():
        # highdicom warns about the source's patient-name format; the name is copied as it is.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name", category=UserWarning)
        seg = _segmentation(hd, datasets, pixels, description)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{uuid.uuid4().hex[:12]}.tmp.dcm"
    try:
        seg.save_as(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _segmentation(hd: Any, datasets: list[Any], pixels: np.ndarray, description: Any) -> Any:
    from .._version import __version__

    return hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsamkit",
        manufacturer_model_name="medsamkit",
        software_versions=__version__,
        device_serial_number="0",
    )


def read_dicom_seg(path: PathLike, reference: Volume, *, segment: int = 1) -> Volume:
    """Read one segment of a DICOM-SEG as a bool mask on ``reference``'s voxels.

    Frames are matched to the reference's DICOM files by SOP Instance UID, so the
    mask is aligned whatever the frame order in the file; slices the file omits
    (empty) are empty.

    Args:
        path: The DICOM-SEG file.
        reference: The :class:`Volume` of the DICOM series or image it refers to.
        segment: Segment number.

    Raises:
        ImageReadError: If the file is not a DICOM-SEG or refers to none of the
            reference's images.
    """
    hd = require_medical("highdicom")
    path = Path(path)
    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM Segmentation ({type(exc).__name__}: {exc})") from None
    uids = reference.meta.get("sop_instance_uids")
    if not uids:
        raise ValueError("reference: expected a Volume read from DICOM files (with their SOP Instance UIDs)")
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise ImageReadError(
            path, f"expected a segmentation of {reference.path}, but it refers to none of its {len(uids)} images"
        )
    present = [u for u in uids if u in referenced]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=present,
        segment_numbers=[segment],
        combine_segments=True,
        skip_overlap_checks=True,
        ignore_spatial_locations=True,  # frames are matched by the SOP Instance UID they were derived from
    )
    out = np.zeros(reference.shape, dtype=bool)
    index = {u: k for k, u in enumerate(uids)}
    for frame, uid in zip(pixels, present):
        out[index[uid]] = np.asarray(frame).reshape(reference.shape[1:]) > 0
    return reference.with_array(out, meta={"source": str(path)})

"""A dataset of 3D volumes and their masks: ``root/images`` and ``root/masks`` matched by name.

Layout::

    root/
        images/  case_01.nii.gz   case_02.nrrd   case_03/ (a DICOM series folder)  ...
        masks/   case_01.nii.gz   case_02.nrrd   case_03.dcm (a DICOM-SEG) or case_03.nii.gz

An image is a volume file (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``),
a single DICOM file, or a sub-folder holding one DICOM series; its stem is the name
without the volume suffix (the folder name for a series). Its mask is the volume file
or DICOM-SEG in ``masks/`` with the same stem. Reading needs the ``medical`` extra.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, overload

from ._errors import ImageReadError
from ._medical import (
    VOLUME_SUFFIXES,
    Volume,
    is_dicom_file,
    read_volume,
    volume_stem,
)

__all__ = ["VolumeFolder", "VolumeSample", "looks_like_volume_folder"]

PathLike = Union[str, "os.PathLike[str]"]


def _is_volume_entry(path: Path) -> bool:
    name = path.name.lower()
    if path.name.startswith("."):
        return False
    if path.is_dir():
        return any(p.is_file() and is_dicom_file(p) for p in list(path.iterdir())[:50])
    return name.endswith(VOLUME_SUFFIXES) or (path.is_file() and is_dicom_file(path))


def _list_volumes(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if not _is_volume_entry(path):
            continue
        stem = path.name if path.is_dir() else volume_stem(path.name)
        if stem in found:
            raise ValueError(
                f"duplicate stem '{stem}' in '{directory}': both '{found[stem].name}' and '{path.name}' exist; "
                "keep only one per stem"
            )
        found[stem] = path
    return found


@dataclass(frozen=True)
class VolumeSample:
    """One volume with its (optional) mask.

    Attributes:
        stem: Identifier (file name without the volume suffix, or the DICOM folder's name).
        image_path: Volume file or DICOM series folder.
        mask_path: Mask volume file or DICOM-SEG, or None.
    """

    stem: str
    image_path: Path
    mask_path: Path | None = None

    @property
    def image_format(self) -> str:
        """``"dicom"`` for a DICOM series or file, else the volume suffix (``".nii.gz"``, ...)."""
        if self.image_path.is_dir() or is_dicom_file(self.image_path):
            return "dicom"
        name = self.image_path.name.lower()
        return next(s for s in VOLUME_SUFFIXES if name.endswith(s))

    def load_image(self) -> Volume:
        """Read the image volume (see :func:`medsamkit.data.read_volume`)."""
        return read_volume(self.image_path)

    def load_mask(self, reference: Volume | None = None, *, label: int | None = None) -> Volume:
        """Read the mask as a bool volume, checked against ``reference``'s geometry.

        Args:
            reference: The image volume; its shape, spacing, origin and direction must
                match the mask's (a DICOM-SEG is placed on it by SOP Instance UID).
            label: Keep voxels equal to this label (multi-label masks); default any non-zero.

        Raises:
            ValueError: If there is no mask.
            ImageReadError: If the mask cannot be read, is not on the image's grid
                (naming what differs, expected vs got), or holds NaN.
        """
        if self.mask_path is None:
            raise ValueError(f"sample '{self.stem}' has no mask: no mask was found for '{self.image_path}'")
        path = self.mask_path
        if is_dicom_file(path) and not path.is_dir():
            from ._medical_write import read_dicom_seg

            if reference is None:
                reference = self.load_image()
            mask = read_dicom_seg(path, reference)
        else:
            mask = read_volume(path)
            if reference is not None:
                problem = reference.describe_geometry_mismatch(mask)
                if problem is not None:
                    raise ImageReadError(
                        path, f"mask does not lie on the image's voxel grid: got {problem} (image '{self.image_path}')"
                    )
        values = mask.array
        chosen = values != 0 if label is None else values == label
        return mask.with_array(chosen)

    def load(self, *, label: int | None = None) -> tuple[Volume, Volume]:
        """``(image, mask)`` with the mask checked against the image's geometry."""
        image = self.load_image()
        return image, self.load_mask(image, label=label)


class VolumeFolder(Sequence):
    """Volume/mask pairs from ``root/images`` and ``root/masks`` (see the module docs).

    Args:
        root: Dataset folder.
        images: Images sub-folder name.
        masks: Masks sub-folder name.
        require_masks: If True (default) only volumes with a mask are samples and the
            masks folder must exist; if False every volume is a sample.

    Raises:
        FileNotFoundError: A missing root, images or (with ``require_masks``) masks folder.
        ValueError: No volume found, no pair found, or two entries share a stem.
    """

    def __init__(self, root: PathLike, *, images: str = "images", masks: str = "masks", require_masks: bool = True) -> None:
        self.root = Path(root).absolute()
        if not self.root.is_dir():
            raise FileNotFoundError(f"root: expected a folder with {images}/ and {masks}/, got '{self.root}' (not found)")
        self.images_dir = self.root / images
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"root: expected an images folder '{self.images_dir}', found none")
        masks_dir = self.root / masks
        if require_masks and not masks_dir.is_dir():
            raise FileNotFoundError(f"root: expected a masks folder '{masks_dir}', found none")
        self.masks_dir = masks_dir if masks_dir.is_dir() else None
        image_map = _list_volumes(self.images_dir)
        if not image_map:
            raise ValueError(
                f"no volumes found in '{self.images_dir}': expected {', '.join(VOLUME_SUFFIXES)} files "
                "or DICOM series sub-folders"
            )
        mask_map = _list_volumes(self.masks_dir) if self.masks_dir is not None else {}
        self.unmatched_images = tuple(sorted(set(image_map) - set(mask_map)))
        self.unmatched_masks = tuple(sorted(mask_map[s].name for s in set(mask_map) - set(image_map)))
        stems = sorted(image_map) if not require_masks else sorted(set(image_map) & set(mask_map))
        if not stems:
            raise ValueError(
                f"no image in '{self.images_dir}' has a mask in '{masks_dir}' (images: {sorted(image_map)[:5]}, "
                f"masks: {sorted(mask_map)[:5]})"
            )
        self._samples = tuple(VolumeSample(s, image_map[s], mask_map.get(s)) for s in stems)

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, index: int) -> VolumeSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[VolumeSample]: ...

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self._samples[index])
        return self._samples[index]

    def __iter__(self) -> Iterator[VolumeSample]:
        return iter(self._samples)

    def __repr__(self) -> str:
        return f"VolumeFolder('{self.root}', n={len(self)})"

    @property
    def stems(self) -> tuple[str, ...]:
        """Sample stems, sorted."""
        return tuple(s.stem for s in self._samples)


def looks_like_volume_folder(root: PathLike, *, images: str = "images") -> bool:
    """Whether ``root/images`` holds volumes (volume files or DICOM series), not 2D images."""
    directory = Path(root) / images
    if not directory.is_dir():
        return False
    entries = [p for p in directory.iterdir() if not p.name.startswith(".")]
    return any(_is_volume_entry(p) and (p.is_dir() or p.name.lower().endswith(VOLUME_SUFFIXES)) for p in entries)

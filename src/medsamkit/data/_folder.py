"""A dataset of image/mask pairs stored as two folders with matching file stems."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, overload

import numpy as np

from .._validation import as_mask, describe
from ._io import IMAGE_SUFFIXES, MASK_SUFFIXES, read_image, read_mask

__all__ = ["MaskFolder", "Sample", "image_samples", "match_masks"]

PathLike = Union[str, "os.PathLike[str]"]

_SHOW = 5  # how many names to show in error messages
_DICOM = (".dcm", ".dicom")
_SERIES_CHECK = 64  # DICOM headers read to notice slices of one series listed as 2D images

_log = logging.getLogger("medsamkit")


def _preview(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:_SHOW])
    more = f", ... ({len(names)} in total)" if len(names) > _SHOW else ""
    return f"[{shown}{more}]"


@dataclass(frozen=True)
class Sample:
    """One image with its (optional) mask.

    Attributes:
        stem: The image's file name without suffix; the sample's identifier.
        image_path: Path of the image file.
        mask_path: Path of the mask file, or None when the folder has no mask for it
            (only with ``MaskFolder(..., require_masks=False)``).
    """

    stem: str
    image_path: Path
    mask_path: Path | None = None

    def load_image(self) -> np.ndarray:
        """Read the image (see :func:`medsamkit.data.read_image`)."""
        return read_image(self.image_path)

    def load_mask(self) -> np.ndarray:
        """Read the mask as a boolean ``(H, W)`` array.

        Raises:
            ValueError: If the sample has no mask file.
            ImageReadError: If the mask file cannot be read.
        """
        if self.mask_path is None:
            raise ValueError(f"sample '{self.stem}' has no mask: no mask file was found for image '{self.image_path}'")
        return read_mask(self.mask_path)

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Read image and mask, checking that their heights and widths agree.

        Raises:
            ValueError: If there is no mask or its size differs from the image's.
        """
        image = self.load_image()
        mask = self.load_mask()
        as_mask(mask, name=f"mask file '{self.mask_path}'", size_hw=image.shape[:2])
        return image, mask


def _list_images(
    directory: Path, *, exclude_suffix: str | None = None, suffixes: tuple[str, ...] = IMAGE_SUFFIXES
) -> dict[str, Path]:
    """Map stem -> path for files with one of ``suffixes`` directly in ``directory`` (no recursion)."""
    found: dict[str, Path] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix not in suffixes:
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:  # pragma: no cover - broken entry
                continue
            stem = os.path.splitext(name)[0]
            if exclude_suffix and stem.endswith(exclude_suffix):
                continue
            path = directory / name
            if stem in found:
                first, second = sorted([found[stem].name, name])
                raise ValueError(
                    f"duplicate stem '{stem}' in '{directory}': both '{first}' and '{second}' exist; keep only one file per stem"
                )
            found[stem] = path
    return found


def _series_slices(paths: Iterable[Path]) -> tuple[str, list[str]] | None:
    """A DICOM series of which several of ``paths`` are slices at different positions (its UID and their names).

    Such files are parts of one 3D volume listed as 2D images. Only the first
    ``_SERIES_CHECK`` DICOM files are looked at (their headers), so a large folder costs little.
    """
    dicom = sorted(p for p in paths if p.suffix.lower() in _DICOM)[:_SERIES_CHECK]
    if len(dicom) < 2:
        return None
    try:
        import pydicom
    except ImportError:  # reading the images will name the missing extra
        return None
    positions: dict[str, dict[tuple[float, ...], str]] = {}
    for path in dicom:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "ImagePositionPatient"])
            uid, where = ds.get("SeriesInstanceUID"), ds.get("ImagePositionPatient")
            if uid is None or where is None:
                continue
            key = tuple(round(float(v), 3) for v in where)
        except Exception:  # noqa: BLE001 - an unreadable file is named when it is read as an image
            continue
        positions.setdefault(str(uid), {}).setdefault(key, path.name)
    for uid, names in positions.items():
        if len(names) >= 2:
            return uid, sorted(names.values())
    return None


def _note_series_slices(directory: Path, paths: Iterable[Path]) -> None:
    """Log once per folder listing that DICOM files in a 2D folder are slices of one 3D series."""
    found = _series_slices(paths)
    if found is not None:
        uid, names = found
        _log.warning(
            "medsamkit: %d DICOM files in '%s' (%s) are slices of one series (SeriesInstanceUID %s) at different "
            "positions: each is segmented as a separate 2D image. To segment the series as one 3D volume, put its "
            "files in a sub-folder (%s/<case>/, a VolumeFolder) and give it a volume mask.",
            len(names),
            directory,
            _preview(names),
            uid,
            directory,
        )


def _mask_hint(masks_dir: Path | None) -> str:
    """Why DICOM files in a 2D masks folder were not taken as masks, when there are some."""
    if masks_dir is None:
        return ""
    dicom = sorted(p.name for p in masks_dir.iterdir() if p.suffix.lower() in _DICOM and not p.name.startswith("."))
    if not dicom:
        return ""
    return (
        f"; the DICOM files in '{masks_dir}' (e.g. {_preview(dicom)}) are not read as 2D masks: expected masks as "
        f"{', '.join(MASK_SUFFIXES)} (a DICOM-SEG belongs to a volume: medsamkit.data.VolumeFolder)"
    )


def image_samples(directory: PathLike) -> list[Sample]:
    """One :class:`Sample` (without mask) per image file directly in ``directory``, sorted by stem.

    Hidden files, other files and subfolders are ignored, as in :class:`MaskFolder`.

    Raises:
        FileNotFoundError: If ``directory`` is not a folder.
        ValueError: If two files share a stem (``case.png`` and ``case.jpg``: their
            results would overwrite each other), or if there is no image.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"directory: '{folder}' is not a folder")
    files = _list_images(folder)
    if not files:
        raise ValueError(f"directory: expected image files in '{folder}' (suffixes {', '.join(IMAGE_SUFFIXES)}), found none")
    _note_series_slices(folder, files.values())
    return [Sample(stem, files[stem]) for stem in sorted(files)]


def match_masks(samples: Iterable[Sample], masks_dir: PathLike, *, mask_suffix: str = "") -> list[Sample]:
    """The samples with the mask of exactly ``<stem><mask_suffix>.<image suffix>`` from ``masks_dir``.

    Names are compared exactly (no patterns: ``case[1].png`` only matches the mask
    ``case[1].png``). A sample without a mask file there keeps its own ``mask_path``.

    Raises:
        FileNotFoundError: If ``masks_dir`` is not a folder.
        ValueError: If two mask files share a stem.
    """
    folder = Path(masks_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"masks_dir: '{folder}' is not a folder")
    masks = _list_images(folder, suffixes=MASK_SUFFIXES)
    return [Sample(s.stem, s.image_path, masks.get(s.stem + mask_suffix, s.mask_path)) for s in samples]


class MaskFolder(Sequence):
    """Image/mask pairs from ``root/images`` and ``root/masks``, matched by file stem.

    The expected layout is::

        root/
            images/  case_001.png  case_002.jpg ...
            masks/   case_001.png  case_002.png ...   (stem + mask_suffix)

    Images are files with any suffix in :data:`IMAGE_SUFFIXES` (case-insensitive): PNG,
    JPEG, TIFF, BMP and single-frame 2D DICOM files (``.dcm``/``.dicom``, e.g.
    radiographs, read by :func:`~medsamkit.data.read_image` with their VOI LUT; the
    ``medical`` extra). Masks are 2D raster files (:data:`MASK_SUFFIXES`); masks are
    written back as PNG. If several DICOM images are slices of one series (a CT or MR
    volume split into files), a warning says so: each is still segmented as a 2D image
    (a :class:`VolumeFolder` takes the series as one volume). Hidden
    files (names starting with ``.``), other files and subfolders are ignored. The mask
    for image stem ``s`` is the file with stem ``s + mask_suffix`` in the masks folder
    (e.g. ``mask_suffix="-mask"`` for ``case_001-mask.png``). If ``images`` and ``masks``
    name the same folder, files whose stem ends with ``mask_suffix`` are masks and the
    others are images.

    Samples are sorted by stem (plain string order). The folder behaves as a sequence of
    :class:`Sample`: ``len(folder)``, ``folder[0]``, ``folder[-1]``, ``folder[2:5]`` (a
    view), iteration, and ``"stem" in folder``.

    Args:
        root: Dataset folder.
        images: Name of the images subfolder (relative to ``root``).
        masks: Name of the masks subfolder (relative to ``root``).
        mask_suffix: Text appended to an image stem to get its mask stem.
        require_masks: If True (default), only images with a mask are samples; images
            without one are listed in :attr:`unmatched_images`, and it is an error if
            no pair is found. If False, every image is a sample and ``mask_path`` is
            None where no mask exists (the masks folder may be missing entirely).

    Attributes:
        root: The dataset folder (absolute).
        images_dir: The images folder.
        masks_dir: The masks folder, or None if it does not exist (only possible with
            ``require_masks=False``).
        unmatched_images: Stems of images without a mask file (sorted), for the whole
            folder scan.
        unmatched_masks: Names of mask files without an image (sorted), for the whole
            folder scan.

    Raises:
        FileNotFoundError: If ``root``, the images folder or (with ``require_masks``)
            the masks folder does not exist.
        ValueError: If no image is found, if no image has a mask while
            ``require_masks`` is True, or if two files share a stem (``a.png`` and
            ``a.jpg``).
    """

    root: Path
    images_dir: Path
    masks_dir: Path | None
    unmatched_images: tuple[str, ...]
    unmatched_masks: tuple[str, ...]
    _samples: tuple[Sample, ...]
    _index: dict[str, int]
    _total: int

    def __init__(
        self,
        root: PathLike,
        *,
        images: str = "images",
        masks: str = "masks",
        mask_suffix: str = "",
        require_masks: bool = True,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"root: expected a folder path (str or Path), got {describe(root)}")
        for name, value in (("images", images), ("masks", masks)):
            if not isinstance(value, (str, os.PathLike)) or str(value) == "":
                raise TypeError(f"{name}: expected a subfolder name, got {describe(value)}")
        if not isinstance(mask_suffix, str):
            raise TypeError(f"mask_suffix: expected str, got {describe(mask_suffix)}")
        if "/" in mask_suffix or "\\" in mask_suffix:
            raise ValueError(f"mask_suffix: expected text without path separators, got {mask_suffix!r}")
        if not isinstance(require_masks, bool):
            raise TypeError(f"require_masks: expected bool, got {describe(require_masks)}")

        root_path = Path(os.path.abspath(Path(root).expanduser()))  # normalise '..', keep symlinks
        layout = f"expected layout: '{root_path}/{images}/<stem>.png' and '{root_path}/{masks}/<stem>{mask_suffix}.png'"
        if not root_path.is_dir():
            what = "is not a folder" if root_path.exists() else "does not exist"
            raise FileNotFoundError(f"root: dataset folder '{root_path}' {what}; {layout}")
        images_dir = root_path / images
        if not images_dir.is_dir():
            raise FileNotFoundError(f"images folder '{images_dir}' does not exist; {layout}")
        masks_dir: Path | None = root_path / masks
        if not (root_path / masks).is_dir():
            if require_masks:
                raise FileNotFoundError(
                    f"masks folder '{masks_dir}' does not exist; {layout} (pass require_masks=False to list images without masks)"
                )
            masks_dir = None

        same_dir = masks_dir is not None and os.path.samefile(images_dir, masks_dir)
        if same_dir and not mask_suffix:
            raise ValueError(
                f"images and masks are the same folder '{images_dir}': pass a mask_suffix "
                "(e.g. '_mask') to tell masks from images"
            )
        image_files = _list_images(images_dir, exclude_suffix=mask_suffix if same_dir else None)
        if not image_files:
            raise ValueError(f"no image files found in '{images_dir}' (suffixes {', '.join(IMAGE_SUFFIXES)}); {layout}")
        mask_files = _list_images(masks_dir, suffixes=MASK_SUFFIXES) if masks_dir is not None else {}
        if same_dir:
            mask_files = {s: p for s, p in mask_files.items() if s.endswith(mask_suffix)}

        samples: list[Sample] = []
        unmatched_images: list[str] = []
        used_masks: set[str] = set()
        for stem in sorted(image_files):
            mask_path = mask_files.get(stem + mask_suffix)
            if mask_path is None:
                unmatched_images.append(stem)
                if require_masks:
                    continue
            else:
                used_masks.add(stem + mask_suffix)
            samples.append(Sample(stem, image_files[stem], mask_path))
        unmatched_masks = sorted(mask_files[s].name for s in mask_files if s not in used_masks)

        if not samples:
            raise ValueError(
                f"no image/mask pairs in '{root_path}': {len(image_files)} images in "
                f"'{images_dir}' (e.g. {_preview(sorted(image_files))}) and {len(mask_files)} "
                f"masks in '{masks_dir}' (e.g. {_preview(unmatched_masks)}) share no stem with "
                f"mask_suffix={mask_suffix!r}{_mask_hint(masks_dir)}"
            )
        _note_series_slices(images_dir, (image_files[s.stem] for s in samples))

        self.root = root_path
        self.images_dir = images_dir
        self.masks_dir = masks_dir
        self.unmatched_images = tuple(unmatched_images)
        self.unmatched_masks = tuple(unmatched_masks)
        self._set_samples(samples, total=len(samples))

    # -- construction helpers -----------------------------------------------------------

    def _set_samples(self, samples: Iterable[Sample], *, total: int) -> None:
        self._samples = tuple(samples)
        self._index = {sample.stem: i for i, sample in enumerate(self._samples)}
        self._total = total

    def _view(self, samples: Iterable[Sample]) -> MaskFolder:
        view = object.__new__(type(self))
        view.root = self.root
        view.images_dir = self.images_dir
        view.masks_dir = self.masks_dir
        view.unmatched_images = self.unmatched_images
        view.unmatched_masks = self.unmatched_masks
        view._set_samples(samples, total=self._total)
        return view

    # -- sequence protocol --------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._samples)

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> MaskFolder: ...

    def __getitem__(self, index: Any) -> Sample | MaskFolder:
        if isinstance(index, slice):
            return self._view(self._samples[index])
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            hint = " (use folder.sample(stem) to look up by stem)" if isinstance(index, str) else ""
            raise TypeError(f"index: expected an int or a slice, got {describe(index)}{hint}")
        n = len(self._samples)
        if not -n <= index < n:
            raise IndexError(f"index: expected -{n} <= index < {n}, got {index}")
        return self._samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self._samples)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, Sample):
            return self._index.get(item.stem) is not None and self.sample(item.stem) == item
        return isinstance(item, str) and item in self._index

    def __repr__(self) -> str:
        count = f"{len(self)}" if len(self) == self._total else f"{len(self)} of {self._total}"
        return f"{type(self).__name__}(root='{self.root}', samples={count})"

    # -- lookups and views --------------------------------------------------------------

    @property
    def stems(self) -> tuple[str, ...]:
        """The sample stems in order."""
        return tuple(sample.stem for sample in self._samples)

    @property
    def samples(self) -> tuple[Sample, ...]:
        """The samples in order."""
        return self._samples

    def sample(self, stem: str) -> Sample:
        """The sample with this stem.

        Raises:
            KeyError: If no sample has this stem.
        """
        if not isinstance(stem, str):
            raise TypeError(f"stem: expected str, got {describe(stem)}")
        try:
            return self._samples[self._index[stem]]
        except KeyError:
            raise KeyError(f"stem '{stem}' is not in {self!r}") from None

    def subset(self, stems: Iterable[str]) -> MaskFolder:
        """A view with only the given stems (in the folder's sorted order, duplicates merged).

        Raises:
            TypeError: If ``stems`` is a single string instead of a collection.
            KeyError: If a stem is not in the folder (the message names it).
        """
        if isinstance(stems, (str, bytes)) or not isinstance(stems, Iterable):
            raise TypeError(f"stems: expected a collection of stems (list, tuple, set), got {describe(stems)}")
        wanted = list(stems)
        bad_type = [s for s in wanted if not isinstance(s, str)]
        if bad_type:
            raise TypeError(f"stems: expected str items, got {describe(bad_type[0])}")
        unknown = sorted({s for s in wanted if s not in self._index})
        if unknown:
            label = "stem" if len(unknown) == 1 else f"{len(unknown)} stems"
            raise KeyError(f"{label} not in {self!r}: {_preview(unknown)}")
        keep = set(wanted)
        return self._view(s for s in self._samples if s.stem in keep)

    def limit(self, n: int) -> MaskFolder:
        """A view with the first ``n`` samples in sorted order (all if ``n >= len``).

        Raises:
            TypeError: If ``n`` is not an int.
            ValueError: If ``n < 1``.
        """
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n: expected a positive int, got {describe(n)}")
        if n < 1:
            raise ValueError(f"n: expected a positive int, got {n}")
        return self._view(self._samples[: int(n)])

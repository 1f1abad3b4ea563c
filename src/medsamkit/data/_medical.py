"""Medical image formats: 3D volumes (NIfTI, NRRD, MHA, DICOM series) and 2D DICOM images.

Everything here needs the ``medical`` extra (``pip install medsamkit[medical]``):
SimpleITK reads and writes NIfTI / NRRD / MetaImage and DICOM series, pydicom reads
single DICOM files and highdicom writes DICOM-SEG; nibabel checks float NIfTI files
for NaN (ITK's reader silently turns NaN into 0). They are imported inside the
functions, so ``import medsamkit`` stays light.

Conventions (those of ITK / SimpleITK, which 3D Slicer and ITK-SNAP share):

* :attr:`Volume.array` is ``(D, H, W)`` = ``(z, y, x)``: slice index first, then
  row, then column. ``volume.array[k]`` is the ``k``-th axial slice (for an axial
  acquisition) as a normal ``(H, W)`` image.
* :attr:`Volume.spacing` is in the same order, ``(z, y, x)``, in millimetres.
* :attr:`Volume.origin` (the centre of voxel ``(0, 0, 0)``) and
  :attr:`Volume.direction` (3x3, its columns are the directions of the x, y and z
  voxel axes) are in the patient's LPS frame, in mm, exactly as ITK stores them.
* :attr:`Volume.affine` is the 4x4 voxel -> world matrix in the RAS frame that
  NIfTI / nibabel use, mapping the voxel index ``(x, y, z)`` (the *reversed* array
  index) to millimetres.

Intensities are kept physical (Hounsfield units for CT after the DICOM rescale
slope and intercept), never scaled, until an explicit intensity step
(:class:`medsamkit.Window`, :class:`medsamkit.PercentileClip`, :class:`medsamkit.CLAHE`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from .._validation import describe
from ._errors import ImageReadError

__all__ = [
    "DICOM_SUFFIXES",
    "VOLUME_SUFFIXES",
    "Volume",
    "is_dicom_file",
    "is_dicom_series_folder",
    "is_volume_path",
    "read_dicom_image",
    "read_volume",
    "require_medical",
    "volume_format",
    "volume_stem",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes read as volumes by SimpleITK (compared case-insensitively).
VOLUME_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: File suffixes of single DICOM files (a DICOM file may also have no suffix).
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")

_EXTRA_HINT = "pip install medsamkit[medical]"


def require_medical(module: str) -> Any:
    """Import one of the ``medical`` extra's libraries, or say how to install it.

    Args:
        module: ``"SimpleITK"``, ``"pydicom"``, ``"highdicom"`` or ``"nibabel"``.

    Raises:
        ImportError: Naming ``pip install medsamkit[medical]`` when it is missing.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading and writing medical formats needs {module}; install it with: {_EXTRA_HINT}") from None


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D image (or a stack of one 2D slice) with its geometry.

    Attributes:
        array: ``(D, H, W)`` voxels, slice index first (``(z, y, x)``), in the
            file's physical units (HU for CT). Masks are bool.
        spacing: ``(z, y, x)`` voxel size in mm.
        origin: ``(x, y, z)`` LPS position in mm of the centre of voxel ``(0, 0, 0)``.
        direction: ``(3, 3)`` direction cosines; column ``i`` is the LPS direction of
            voxel axis ``i`` in ``(x, y, z)`` order (ITK's ``GetDirection``).
        modality: DICOM modality (``"CT"``, ``"MR"``, ``"CR"``, ...) when known, else None.
        path: The file or folder it was read from, if any.
        meta: Free-form extra information (DICOM series UID, transfer syntax, ...).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise ValueError(f"array: expected a (D, H, W) volume, got shape {array.shape}")
        spacing = tuple(float(v) for v in self.spacing)
        if len(spacing) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise ValueError(f"spacing: expected 3 positive finite numbers (z, y, x) in mm, got {self.spacing!r}")
        origin = tuple(float(v) for v in self.origin)
        if len(origin) != 3 or not all(math.isfinite(v) for v in origin):
            raise ValueError(f"origin: expected 3 finite numbers (x, y, z) in mm, got {self.origin!r}")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3) if np.size(self.direction) == 9 else None
        if direction is None:
            raise ValueError(f"direction: expected a 3x3 matrix (9 numbers), got {np.shape(self.direction)}")
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)

    def __repr__(self) -> str:
        sp = ", ".join(f"{v:g}" for v in self.spacing)
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing=({sp}) mm, "
            f"modality={self.modality!r}, path={str(self.path) if self.path else None!r})"
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(D, H, W)``."""
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """In-plane ``(row, col)`` spacing in mm, as the 2D metrics take it."""
        return self.spacing[1], self.spacing[2]

    @property
    def affine_lps(self) -> np.ndarray:
        """4x4 matrix mapping a voxel index ``(x, y, z, 1)`` to LPS mm (ITK's frame)."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction * np.array(self.spacing[::-1])[None, :]
        affine[:3, 3] = self.origin
        return affine

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping a voxel index ``(x, y, z, 1)`` to RAS mm (NIfTI / nibabel's frame)."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps

    def same_geometry(self, other: Volume, *, atol: float = 1e-3) -> bool:
        """Whether ``other`` has the same shape, spacing, origin and direction (to ``atol``)."""
        return self.describe_geometry_mismatch(other, atol=atol) is None

    def describe_geometry_mismatch(self, other: Volume, *, atol: float = 1e-3) -> str | None:
        """What differs between the two geometries, or None when they agree."""
        if self.shape != other.shape:
            return f"shape (D, H, W) {other.shape}, expected {self.shape}"
        for name in ("spacing", "origin"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=atol, rtol=1e-5):
                return f"{name} {tuple(np.round(b, 4).tolist())}, expected {tuple(np.round(a, 4).tolist())}"
        if not np.allclose(self.direction, other.direction, atol=atol):
            return f"direction {np.round(other.direction, 4).tolist()}, expected {np.round(self.direction, 4).tolist()}"
        return None

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """The same geometry with another ``(D, H, W)`` array (e.g. a mask)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise ValueError(f"array: expected shape {self.shape} (the volume's), got {array.shape}")
        return replace(self, array=array, **changes)

    def crop(self, z: slice = slice(None), y: slice = slice(None), x: slice = slice(None)) -> Volume:
        """A sub-volume with its origin moved so physical positions are unchanged."""
        start = [s.indices(n)[0] for s, n in zip((z, y, x), self.shape)]
        for s in (z, y, x):
            if s.step not in (None, 1):
                raise ValueError(f"crop: expected slices with step 1, got {s}")
        offset_xyz = np.array(start[::-1], dtype=np.float64) * np.array(self.spacing[::-1])
        origin = np.asarray(self.origin) + self.direction @ offset_xyz
        return replace(self, array=self.array[z, y, x], origin=tuple(origin.tolist()))

    # -- SimpleITK conversion -------------------------------------------------------

    def to_sitk(self, array: np.ndarray | None = None) -> Any:
        """A ``SimpleITK.Image`` of ``array`` (default: this volume's) with this geometry."""
        sitk = require_medical("SimpleITK")
        data = self.array if array is None else np.asarray(array)
        if data.dtype == np.bool_:
            data = data.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data))
        image.SetSpacing(tuple(float(v) for v in self.spacing[::-1]))
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetDirection(tuple(float(v) for v in self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(
        cls, image: Any, *, modality: str | None = None, path: PathLike | None = None, meta: dict[str, Any] | None = None
    ) -> Volume:
        """A :class:`Volume` from a 3D ``SimpleITK.Image``."""
        sitk = require_medical("SimpleITK")
        if image.GetDimension() != 3:
            raise ValueError(f"image: expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(
                f"image: expected one value per voxel, got {image.GetNumberOfComponentsPerPixel()} (vector/RGB image)"
            )
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(image.GetSpacing()[::-1]),
            origin=tuple(image.GetOrigin()),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
            modality=modality,
            path=Path(path) if path is not None else None,
            meta=dict(meta or {}),
        )


# ---------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------


def volume_format(path: PathLike) -> str | None:
    """The volume suffix of ``path`` (``".nii.gz"``, ``".nrrd"``, ...), ``"dicom"`` for a DICOM file or folder, else None."""
    path = Path(path)
    name = path.name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    if path.is_dir():
        return "dicom" if any(is_dicom_file(p) for p in sorted(path.iterdir())[:20] if p.is_file()) else None
    if is_dicom_file(path):
        return "dicom"
    return None


def is_volume_path(path: PathLike) -> bool:
    """Whether ``path`` is a volume file or a folder holding a DICOM series.

    A folder of DICOM files is a series when its files are positioned slices
    (:func:`is_dicom_series_folder`); a folder of 2D DICOM images without a slice
    position (radiographs: CR, DX, MG) is not a volume but a folder of 2D images.
    """
    path = Path(path)
    if path.is_dir():
        return is_dicom_series_folder(path)
    return volume_format(path) is not None


def is_dicom_series_folder(folder: PathLike, *, check: int = 8) -> bool:
    """Whether ``folder`` holds DICOM slices of a volume rather than separate 2D DICOM images.

    Among the first 20 entries (in name order), the headers of up to ``check`` DICOM
    files are read: the folder is a series if one of them has an
    ``ImagePositionPatient`` (CT, MR, PET slices; radiographs have none). Without
    pydicom, any folder with a DICOM file counts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return False
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))[:20]  # as volume_format looks
    files = [p for p in entries if p.is_file() and is_dicom_file(p)]
    if not files:
        return False
    try:
        import pydicom
    except ImportError:
        return True  # reading it names the missing extra
    for path in files[:check]:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["ImagePositionPatient"])
        except Exception:  # noqa: BLE001 - a damaged file is named when the folder is read
            continue
        if "ImagePositionPatient" in ds:
            return True
    return False


def is_dicom_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm`` suffix or the ``DICM`` marker at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def volume_stem(name: str) -> str:
    """A volume or DICOM file name without its suffix (``"lung2.nii.gz"`` -> ``"lung2"``)."""
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES + DICOM_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def _check_finite(volume: Volume, path: Path) -> Volume:
    array = volume.array
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        if bad.any():
            where = tuple(int(v) for v in np.argwhere(bad)[0])
            raise ImageReadError(
                path,
                f"expected finite voxel values, got {int(bad.sum())} NaN/inf voxel(s) (first at (z, y, x) = {where})",
            )
    return volume


def read_volume(path: PathLike) -> Volume:
    """Read a 3D medical image with its geometry.

    Args:
        path: A ``.nii.gz`` / ``.nii`` / ``.nrrd`` / ``.nhdr`` / ``.mha`` / ``.mhd``
            file, a folder holding one DICOM series, or a single DICOM file (a 2D
            image becomes a one-slice volume).

    Returns:
        A :class:`Volume` with the array as ``(D, H, W)`` in the file's physical
        units. DICOM series are sorted by slice position along the slice normal
        (not by file name or instance number); the CT rescale slope/intercept is
        applied (HU).

    Raises:
        ImportError: Without the ``medical`` extra.
        ImageReadError: Naming the file and the reason: missing file, unknown
            format, a 4D (or 2D) file, a vector image, NaN/inf voxels, a folder with
            no or several DICOM series, missing or unevenly spaced slices, slices of
            different sizes or orientations, a compressed DICOM without its decoder.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {describe(path)}")
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    fmt = volume_format(path)
    if fmt is None:
        expected = ", ".join(VOLUME_SUFFIXES)
        raise ImageReadError(path, f"not a volume: expected a {expected} file, a DICOM file or a folder of DICOM files")
    if fmt == "dicom":
        volume = _read_dicom_series(path) if path.is_dir() else read_dicom_image(path)
    else:
        volume = _read_itk_file(path)
    return _check_finite(volume, path)


def _read_itk_file(path: Path) -> Volume:
    sitk = require_medical("SimpleITK")
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(path, f"SimpleITK could not read it ({_first_line(exc)})") from None
    dim = reader.GetDimension()
    if dim != 3:
        size = "x".join(str(v) for v in reader.GetSize())
        raise ImageReadError(path, f"expected a 3D volume, got a {dim}D image of size {size}")
    if reader.GetNumberOfComponents() != 1:
        raise ImageReadError(
            path, f"expected one value per voxel, got {reader.GetNumberOfComponents()} components (vector/RGB volume)"
        )
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(path, f"SimpleITK could not read it ({_first_line(exc)})") from None
    if str(path).lower().endswith((".nii", ".nii.gz")) and "float" in image.GetPixelIDTypeAsString():
        _check_nifti_finite(path)
    modality = None
    for key in ("modality", "Modality"):
        if reader.HasMetaDataKey(key):
            modality = reader.GetMetaData(key).strip() or None
    return Volume.from_sitk(image, modality=modality, path=path)


def _check_nifti_finite(path: Path) -> None:
    """ITK's NIfTI reader turns NaN voxels into 0 without a word; look at the stored values with nibabel."""
    nib = require_medical("nibabel")
    data = np.asanyarray(nib.load(str(path)).dataobj)  # (x, y, z), stored order
    bad = ~np.isfinite(data)
    if bad.any():
        x, y, z = (int(v) for v in np.argwhere(bad)[0][:3])
        raise ImageReadError(
            path,
            f"expected finite voxel values, got {int(bad.sum())} NaN/inf voxel(s) (first at (z, y, x) = {(z, y, x)})",
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # ITK messages start with the source file; the useful part is the description line.
    for line in lines:
        if line.lower().startswith("itk::error") or "description" in line.lower():
            return line
    return lines[-1] if lines else type(exc).__name__


def _slice_normal(ds: Any) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def _read_dicom_series(folder: Path) -> Volume:
    sitk = require_medical("SimpleITK")
    pydicom = require_medical("pydicom")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for p in files:
        try:
            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        except Exception:
            continue  # not DICOM (a README, a thumbnail, ...)
        if "SOPClassUID" not in ds and "Modality" not in ds:
            continue
        headers.append((p, ds))
    if not headers:
        raise ImageReadError(folder, "expected a folder of DICOM files, found no readable DICOM file")
    series: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((p, ds))
    if len(series) > 1:
        detail = "; ".join(
            f"{uid} ({len(items)} files, {items[0][1].get('Modality', '?')}, e.g. {items[0][0].name})"
            for uid, items in series.items()
        )
        raise ImageReadError(folder, f"expected one DICOM series, found {len(series)}: {detail}")
    ((uid, items),) = series.items()
    images = [(p, ds) for p, ds in items if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds]
    if len(images) != len(items):
        odd = [p.name for p, ds in items if (p, ds) not in images][:3]
        raise ImageReadError(
            folder, f"expected image slices with ImagePositionPatient/ImageOrientationPatient, got files without them: {odd}"
        )
    modality = str(items[0][1].get("Modality", "")) or None
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in images}
    if len(sizes) > 1:
        raise ImageReadError(folder, f"expected slices of one size, got sizes (rows, cols) {sorted(sizes)}")
    normals = np.array([_slice_normal(ds) for _, ds in images])
    if not np.allclose(normals, normals[0], atol=1e-3):
        raise ImageReadError(folder, "expected slices with one orientation (ImageOrientationPatient), got several")
    positions = np.array([np.dot(normals[0], [float(v) for v in ds.ImagePositionPatient]) for _, ds in images])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    sorted_files = [str(images[i][0]) for i in order]
    if len(positions) > 1:
        gaps = np.diff(positions)
        if np.any(gaps < 1e-3):
            dup = float(positions[1:][gaps < 1e-3][0])
            raise ImageReadError(folder, f"expected one slice per position, got two or more slices at {dup:.3f} mm")
        step = float(np.median(gaps))
        declared = images[0][1].get("SpacingBetweenSlices")
        if declared is not None and float(declared) > 0:
            step = min(step, float(declared))
        missing = gaps > 1.5 * step
        if missing.any():
            at = ", ".join(f"{positions[i]:.2f}..{positions[i + 1]:.2f} mm" for i in np.flatnonzero(missing)[:3])
            raise ImageReadError(
                folder,
                f"missing slices: expected positions {step:.3g} mm apart, got gaps of "
                f"{', '.join(f'{g:.3g}' for g in gaps[missing][:3])} mm (between {at})",
            )
        if np.ptp(gaps) > 0.01 * step + 1e-3:
            raise ImageReadError(folder, f"expected evenly spaced slices, got gaps from {gaps.min():.3g} to {gaps.max():.3g} mm")
    _check_decoder(Path(sorted_files[0]), images[0][1])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sorted_files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageReadError(folder, f"SimpleITK could not read the series ({_first_line(exc)})") from None
    sop_uids = [str(images[i][1].get("SOPInstanceUID", "")) for i in order]
    meta = {"series_uid": uid, "files": sorted_files, "sop_instance_uids": sop_uids}
    volume = Volume.from_sitk(image, modality=modality, path=folder, meta=meta)
    if volume.shape[0] != len(sorted_files):
        raise ImageReadError(folder, f"expected {len(sorted_files)} slices, SimpleITK read {volume.shape[0]}")
    return volume


_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def _check_decoder(path: Path, ds: Any) -> None:
    """Refuse a compressed transfer syntax that pydicom has no installed decoder for."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsyntax is None or str(tsyntax) in _UNCOMPRESSED:
        return
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(tsyntax)
        available = decoder.is_available
    except Exception:  # pragma: no cover - unknown syntax or old pydicom
        available = False
    if not available:
        name = getattr(tsyntax, "name", str(tsyntax))
        raise ImageReadError(
            path,
            f"compressed transfer syntax {name} ({tsyntax}) and no decoder for it is installed; "
            "expected an uncompressed file or a decoder plugin (pip install pylibjpeg pylibjpeg-libjpeg "
            "pylibjpeg-openjpeg, or python-gdcm)",
        )


#: Modalities whose stored values are physical quantities: no VOI LUT (window) is applied on reading.
_PHYSICAL_MODALITIES = frozenset({"CT", "MR", "PT", "NM", "US"})


def read_dicom_image(path: PathLike) -> Volume:
    """Read one DICOM file (a 2D image, or a multi-frame one) as a :class:`Volume`.

    The modality LUT (rescale slope/intercept, e.g. to HU) is applied. For
    projection images (CR, DX, MG, XA, ... any modality other than CT, MR, PT, NM,
    US) the VOI LUT or window stored in the file is applied too, as a viewer would,
    and ``MONOCHROME1`` images (where high values are dark) are inverted so bright
    means dense everywhere. The in-plane pixel spacing comes from ``PixelSpacing``,
    else ``ImagerPixelSpacing``; a missing or zero spacing is recorded as 1 mm and
    ``meta["spacing_known"]`` is False.

    Raises:
        ImageReadError: Not a DICOM file, no pixel data, colour/multi-sample pixels,
            a compressed transfer syntax without its decoder.
    """
    pydicom = require_medical("pydicom")
    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:
        raise ImageReadError(path, f"not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        sop = ds.get("SOPClassUID")
        raise ImageReadError(
            path, f"expected a DICOM image, got a file without pixel data (SOP class {getattr(sop, 'name', sop)})"
        )
    _check_decoder(path, ds)
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ImageReadError(path, f"expected a grayscale DICOM (SamplesPerPixel 1), got {ds.SamplesPerPixel} samples per pixel")
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise ImageReadError(path, f"could not decode the pixel data ({type(exc).__name__}: {exc})") from None
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = str(ds.get("Modality", "")) or None
    values = apply_modality_lut(pixels, ds)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    voi_applied = False
    if modality not in _PHYSICAL_MODALITIES and ("WindowCenter" in ds or "VOILUTSequence" in ds):
        values = apply_voi_lut(values, ds)
        voi_applied = True
    values = np.asarray(values)
    if photometric == "MONOCHROME1":
        values = values.max() + values.min() - values  # high values dark -> bright
    if values.dtype.kind == "f" and np.all(np.abs(values) < 2**31) and np.array_equal(values, np.round(values)):
        values = values.astype(np.int32)  # e.g. CT: slope 1, integer intercept -> integer HU
    elif values.dtype.kind == "f" or not np.can_cast(values.dtype, np.int32):
        values = values.astype(np.float32)
    spacing_rc = None
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        if key in ds and ds.get(key) is not None:
            candidate = [float(v) for v in ds.get(key)]
            if len(candidate) == 2 and all(v > 0 for v in candidate):
                spacing_rc = candidate
                break
    thickness = ds.get("SliceThickness")
    dz = float(thickness) if thickness not in (None, "") and float(thickness) > 0 else 1.0
    array = values if values.ndim == 3 else values[None]
    x, y, z = (float(v) for v in ds.ImagePositionPatient) if "ImagePositionPatient" in ds else (0.0, 0.0, 0.0)
    origin = (x, y, z)
    direction = np.eye(3)
    if "ImageOrientationPatient" in ds:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        direction = np.column_stack([iop[:3], iop[3:], np.cross(iop[:3], iop[3:])])
    meta = {
        "spacing_known": spacing_rc is not None,
        "photometric": photometric,
        "voi_lut_applied": voi_applied,
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None,
        "sop_instance_uids": [str(ds.get("SOPInstanceUID", ""))],
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "files": [str(path)],
    }
    return Volume(
        array=array,
        spacing=(dz, *(spacing_rc or (1.0, 1.0))),
        origin=origin,
        direction=direction,
        modality=modality,
        path=path,
        meta=meta,
    )

"""Reading and writing images and masks, and atomic file writes.

Images are decoded with OpenCV from the file's bytes (``np.fromfile`` +
``cv2.imdecode``), so paths with non-ASCII characters work on every platform.
"""

from __future__ import annotations

import csv
import io
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from .._validation import as_image, as_mask, describe
from ._errors import ImageReadError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "MASK_SUFFIXES",
    "atomic_write_bytes",
    "atomic_write_text",
    "read_image",
    "read_mask",
    "write_image",
    "write_mask",
]

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes of 2D raster files, the formats of masks in a folder (compared case-insensitively).
MASK_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: File suffixes recognised as 2D images (compared case-insensitively): the raster formats of
#: :data:`MASK_SUFFIXES` and single-frame DICOM files (``.dcm``, ``.dicom``; ``medical`` extra).
IMAGE_SUFFIXES: tuple[str, ...] = (*MASK_SUFFIXES, ".dcm", ".dicom")


def _as_path(path: Any, *, name: str = "path") -> Path:
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        result = Path(path)
        if str(result) in ("", "."):
            raise ValueError(f"{name}: expected a file path, got {path!r}")
        return result
    raise TypeError(f"{name}: expected a str or os.PathLike file path, got {describe(path)}")


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file, keeping its native dtype and bit depth.

    Args:
        path: Image file (PNG, JPEG, TIFF, BMP, ... anything OpenCV decodes). The
            format is detected from the content, not the suffix. A 2D DICOM file
            (``.dcm`` or the ``DICM`` marker) is read with pydicom (``medical``
            extra): modality LUT, VOI LUT for projection images, ``MONOCHROME1``
            inverted; see :func:`~medsamkit.data.read_dicom_image`, which also keeps
            the pixel spacing.

    Returns:
        ``(H, W)`` for grayscale, ``(H, W, 3)`` RGB for colour and ``(H, W, 4)`` RGBA
        for images with alpha. The dtype is the file's: ``uint8``, ``uint16`` (16-bit
        PNG/TIFF) or ``float32`` (floating-point TIFF). A grayscale image stored as
        three identical channels is returned with three channels. For a multi-page
        TIFF only the first page is read. JPEG EXIF orientation is not applied.

    Raises:
        TypeError: If ``path`` is not a str or path-like object.
        ImageReadError: If the file is missing, is a directory, is empty, cannot be
            decoded, or has an unsupported number of channels. The message names the
            path and the reason.
    """
    path = _as_path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, expected an image file")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc.strerror or exc}") from exc
    if data.size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    medical = _read_medical_2d(path, data)
    if medical is not None:
        return medical
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageReadError(path, f"OpenCV could not decode it ({exc})") from exc
    if image is None:
        raise ImageReadError(
            path,
            f"not a decodable image ({data.size} bytes; corrupt, truncated or unsupported format)",
        )
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[..., 0]
        elif channels == 3:
            image = np.ascontiguousarray(image[..., ::-1])  # BGR -> RGB
        elif channels == 4:
            image = np.ascontiguousarray(image[..., [2, 1, 0, 3]])  # BGRA -> RGBA
        else:
            raise ImageReadError(path, f"unsupported number of channels: expected 1, 3 or 4, got {channels}")
    elif image.ndim != 2:
        raise ImageReadError(path, f"unsupported image shape {image.shape}")
    return image


def _read_medical_2d(path: Path, data: np.ndarray) -> np.ndarray | None:
    """A 2D DICOM image as an array; a volume file gets an error pointing to ``read_volume``."""
    from ._medical import VOLUME_SUFFIXES, read_dicom_image

    name = path.name.lower()
    if any(name.endswith(suffix) for suffix in VOLUME_SUFFIXES):
        raise ImageReadError(
            path, "a 3D volume file, not a 2D image: read it with medsamkit.data.read_volume (pip install medsamkit[medical])"
        )
    if not (name.endswith((".dcm", ".dicom")) or bytes(data[128:132]) == b"DICM"):
        return None
    volume = read_dicom_image(path)
    if volume.shape[0] != 1:
        raise ImageReadError(
            path,
            f"expected a single-frame 2D DICOM image, got a multi-frame file of {volume.shape[0]} frames (a volume): "
            "read it with medsamkit.data.read_volume (or list it in a medsamkit.data.VolumeFolder)",
        )
    return volume.array[0]


def read_mask(path: PathLike) -> np.ndarray:
    """Read a binary mask file as a boolean ``(H, W)`` array.

    Any non-zero pixel is foreground (so 0/1, 0/255 and 0/65535 masks all work). For
    colour masks a pixel is foreground if any of its R, G or B values is non-zero;
    an alpha channel is ignored.

    Raises:
        TypeError: If ``path`` is not a str or path-like object.
        ImageReadError: As for :func:`read_image`, or if a floating-point mask holds
            NaN values.
    """
    image = read_image(path)
    if image.ndim == 3:
        image = (image[..., :3] != 0).any(axis=2)
    try:
        return as_mask(image, name=f"mask file '{path}'")
    except (TypeError, ValueError) as exc:
        raise ImageReadError(_as_path(path), f"not a valid mask: {exc}") from exc


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def _fsync_directory(directory: Path) -> None:
    """Best effort: persist the rename itself (POSIX only; ignored elsewhere)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a hidden temporary file in the same directory (``.<name>.<random>.tmp``),
    which is flushed, fsync-ed and then renamed over ``path`` with ``os.replace``. Readers
    therefore see either the old content or the new one, never a partial file. Parent
    directories are created. On any failure the temporary file is removed and the
    exception propagates; an existing ``path`` is left untouched.

    Args:
        path: Target file.
        data: ``bytes``, ``bytearray`` or ``memoryview``.

    Raises:
        TypeError: If ``path`` or ``data`` has the wrong type.
        IsADirectoryError: If ``path`` is an existing directory.
        OSError: If the directory cannot be created or the file cannot be written.
    """
    path = _as_path(path)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data: expected bytes, got {describe(data)}")
    if path.is_dir():
        raise IsADirectoryError(f"path: '{path}' is a directory, expected a file path")
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # os.open with mode 0o666 lets the umask decide the permissions, like open() does.
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`).

    The text is encoded with ``encoding`` and written as-is (no newline translation).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {describe(text)}")
    atomic_write_bytes(path, text.encode(encoding))


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` in ``columns`` order (None as an empty cell, floats with 6 significant digits).

    Keys of a row outside ``columns`` are left out. Every table medsamkit writes
    (``metrics.csv``, ``history.csv``, ``crossval.csv``, ...) goes through here.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: ("" if row.get(key) is None else (f"{row[key]:.6g}" if isinstance(row[key], float) else row[key]))
                for key in columns
            }
        )
    return buffer.getvalue()


def _require_png(path: Path, *, name: str) -> None:
    if path.suffix.lower() != ".png":
        raise ValueError(f"{name}: expected a path ending in '.png' (the file is written as PNG), got '{path}'")


def _encode_png(array: np.ndarray, path: Path) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV only fails here on unsupported input
        raise OSError(f"could not encode PNG for '{path}'")
    return buffer.tobytes()


def write_mask(path: PathLike, mask: Any) -> None:
    """Write a binary mask as an 8-bit single-channel PNG with values 0 and 255.

    Args:
        path: Target ``.png`` file; parent directories are created. Written atomically.
        mask: ``(H, W)`` or ``(H, W, 1)`` array; any non-zero value is foreground.

    Raises:
        TypeError: If ``mask`` is not numeric or ``path`` is not path-like.
        ValueError: If ``mask`` has the wrong shape or ``path`` does not end in ``.png``.
    """
    path = _as_path(path)
    _require_png(path, name="path")
    binary = as_mask(mask, name="mask")
    atomic_write_bytes(path, _encode_png(binary.astype(np.uint8) * np.uint8(255), path))


def write_image(path: PathLike, image: Any) -> None:
    """Write a ``uint8`` or ``uint16`` image as PNG (e.g. an overlay), atomically.

    Args:
        path: Target ``.png`` file; parent directories are created.
        image: ``(H, W)`` gray, ``(H, W, 1)``, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
            array of dtype ``uint8`` or ``uint16``. Other dtypes are rejected rather than
            silently rescaled: convert first (e.g. ``np.clip(x * 255, 0, 255).astype(np.uint8)``).

    Raises:
        TypeError: If the dtype is not uint8/uint16 or ``path`` is not path-like.
        ValueError: If the shape is wrong or ``path`` does not end in ``.png``.
    """
    path = _as_path(path)
    _require_png(path, name="path")
    array = as_image(image, name="image")
    if array.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"image: expected dtype uint8 or uint16, got {array.dtype}")
    if array.ndim == 3:
        channels = array.shape[2]
        if channels == 1:
            array = array[..., 0]
        elif channels == 3:
            array = array[..., ::-1]  # RGB -> BGR
        else:
            array = array[..., [2, 1, 0, 3]]  # RGBA -> BGRA
    atomic_write_bytes(path, _encode_png(np.ascontiguousarray(array), path))

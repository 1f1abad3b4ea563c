"""Tests for medsamkit.data image/mask IO and atomic writes."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit.data import (
    IMAGE_SUFFIXES,
    ImageReadError,
    _io,
    atomic_write_bytes,
    atomic_write_text,
    read_image,
    read_mask,
    write_image,
    write_mask,
)

# name -> (first stem, expected (H, W) or None when sizes vary)
DATASETS = {
    "cxr-shenzhen": ("CHNCXR_0601_1", (1000, 1000)),
    "cxr-montgomery": ("MCUCXR_0196_1", (1024, 841)),
    "us-busi": ("benign_001", None),
    "ct-chaos-liver": ("chaosct_101_1009", (512, 512)),
}


def _write_raw(path: Path, array: np.ndarray) -> None:
    """Write with plain cv2 (BGR order), independent of the code under test."""
    ok, buffer = cv2.imencode(path.suffix, array)
    assert ok
    path.write_bytes(buffer.tobytes())


# ---------------------------------------------------------------------------------------
# Reading real data
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_read_real_pairs(name: str, shared_dataset: Callable[[str], Path]) -> None:
    root = shared_dataset(name)
    stem, size_hw = DATASETS[name]
    image = read_image(root / "images" / f"{stem}.png")
    mask = read_mask(root / "masks" / f"{stem}.png")
    assert image.dtype == np.uint8
    assert image.ndim == 2, "shared images are 8-bit grayscale"
    if size_hw is not None:
        assert image.shape == size_hw
    assert mask.dtype == np.bool_
    assert mask.shape == image.shape
    assert mask.any() and not mask.all()
    raw = cv2.imread(str(root / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(raw).tolist()) <= {0, 255}
    np.testing.assert_array_equal(mask, raw > 0)


def test_read_busi_normal_mask_is_empty(shared_dataset: Callable[[str], Path]) -> None:
    root = shared_dataset("us-busi")
    mask = read_mask(root / "masks" / "normal_001.png")
    assert mask.dtype == np.bool_ and mask.ndim == 2
    assert not mask.any()


# ---------------------------------------------------------------------------------------
# Dtypes, channels and formats
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_uint16_round_trip(tmp_path: Path, suffix: str) -> None:
    array = (np.arange(30 * 20, dtype=np.uint32).reshape(30, 20) * 97 % 65536).astype(np.uint16)
    path = tmp_path / f"img16{suffix}"
    _write_raw(path, array)
    image = read_image(path)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, array)


def test_float32_tiff(tmp_path: Path) -> None:
    array = np.linspace(-1000.0, 3000.5, 12 * 9, dtype=np.float32).reshape(12, 9)
    path = tmp_path / "ct.tif"
    _write_raw(path, array)
    image = read_image(path)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, array)


def test_uint16_rgb_tiff_channel_order(tmp_path: Path) -> None:
    bgr = np.zeros((4, 5, 3), np.uint16)
    bgr[..., 2] = 60000  # red in cv2's BGR order
    path = tmp_path / "red16.tiff"
    _write_raw(path, bgr)
    image = read_image(path)
    assert image.dtype == np.uint16 and image.shape == (4, 5, 3)
    assert image[0, 0].tolist() == [60000, 0, 0]


def test_jpeg_gray_and_colour(tmp_path: Path) -> None:
    gray = np.full((16, 16), 120, np.uint8)
    _write_raw(tmp_path / "g.jpg", gray)
    image = read_image(tmp_path / "g.jpg")
    assert image.shape == (16, 16) and image.dtype == np.uint8
    assert abs(int(image.mean()) - 120) <= 2

    bgr = np.zeros((16, 16, 3), np.uint8)
    bgr[..., 2] = 255
    _write_raw(tmp_path / "c.JPEG", bgr)
    image = read_image(tmp_path / "c.JPEG")
    assert image.shape == (16, 16, 3)
    r, g, b = image[8, 8].tolist()
    assert r > 200 and g < 50 and b < 50


def test_rgb_png_channel_order(tmp_path: Path) -> None:
    bgr = np.zeros((3, 4, 3), np.uint8)
    bgr[1, 2] = (0, 0, 255)  # pure red in BGR
    bgr[0, 0] = (255, 0, 0)  # pure blue in BGR
    _write_raw(tmp_path / "rgb.png", bgr)
    image = read_image(tmp_path / "rgb.png")
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert image[1, 2].tolist() == [255, 0, 0]
    assert image[0, 0].tolist() == [0, 0, 255]
    assert image.flags["C_CONTIGUOUS"]


def test_rgba_png_channel_order(tmp_path: Path) -> None:
    bgra = np.zeros((3, 4, 4), np.uint8)
    bgra[1, 2] = (0, 0, 255, 128)  # red, half transparent
    _write_raw(tmp_path / "rgba.png", bgra)
    image = read_image(tmp_path / "rgba.png")
    assert image.shape == (3, 4, 4)
    assert image[1, 2].tolist() == [255, 0, 0, 128]


def test_bmp_and_gray_as_three_channels(tmp_path: Path) -> None:
    gray3 = np.repeat(np.arange(20, dtype=np.uint8).reshape(4, 5, 1), 3, axis=2)
    _write_raw(tmp_path / "g3.bmp", gray3)
    image = read_image(tmp_path / "g3.bmp")
    assert image.shape == (4, 5, 3)  # kept as stored, not collapsed
    np.testing.assert_array_equal(image[..., 0], gray3[..., 0])


def test_multipage_tiff_reads_first_page(tmp_path: Path) -> None:
    pages = [np.full((4, 4), 7, np.uint8), np.full((4, 4), 9, np.uint8)]
    ok, buffer = cv2.imencodemulti(".tif", pages)
    assert ok
    (tmp_path / "multi.tif").write_bytes(buffer.tobytes())
    image = read_image(tmp_path / "multi.tif")
    assert image.shape == (4, 4) and int(image[0, 0]) == 7


def test_non_ascii_path(tmp_path: Path) -> None:
    folder = tmp_path / "données-影像"
    write_mask(folder / "maske_ü.png", np.eye(5, dtype=bool))
    np.testing.assert_array_equal(read_mask(folder / "maske_ü.png"), np.eye(5, dtype=bool))
    assert read_image(str(folder / "maske_ü.png")).max() == 255


def test_image_suffixes() -> None:
    from medsamkit.data import MASK_SUFFIXES

    assert MASK_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
    assert IMAGE_SUFFIXES == (*MASK_SUFFIXES, ".dcm", ".dicom")  # 2D DICOM images (radiographs), not masks


# ---------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------


def test_read_mask_nonzero_is_foreground(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [255, 0, 0]], np.uint8)
    _write_raw(tmp_path / "m.png", values)
    mask = read_mask(tmp_path / "m.png")
    assert mask.dtype == np.bool_
    assert mask.tolist() == [[False, True, True], [True, False, False]]

    values16 = np.array([[0, 65535], [1, 0]], np.uint16)
    _write_raw(tmp_path / "m16.png", values16)
    assert read_mask(tmp_path / "m16.png").tolist() == [[False, True], [True, False]]


def test_read_mask_colour_any_channel(tmp_path: Path) -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0, 0] = 5  # blue only
    bgr[1, 2, 1] = 200  # green only
    _write_raw(tmp_path / "colour.png", bgr)
    mask = read_mask(tmp_path / "colour.png")
    assert mask.shape == (2, 3)
    assert mask.tolist() == [[True, False, False], [False, False, True]]


def test_read_mask_rgba_ignores_alpha(tmp_path: Path) -> None:
    bgra = np.zeros((2, 2, 4), np.uint8)
    bgra[..., 3] = 255  # fully opaque everywhere
    bgra[0, 1, 2] = 255
    _write_raw(tmp_path / "rgba.png", bgra)
    assert read_mask(tmp_path / "rgba.png").tolist() == [[False, True], [False, False]]


def test_write_mask_round_trip(tmp_path: Path) -> None:
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    path = tmp_path / "deep" / "nested" / "mask.png"
    write_mask(path, mask)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8 and raw.shape == (7, 9)
    assert set(np.unique(raw).tolist()) == {0, 255}
    np.testing.assert_array_equal(read_mask(path), mask)
    # 0/1 uint8 and (H, W, 1) are accepted too
    write_mask(path, mask.astype(np.uint8)[..., None])
    np.testing.assert_array_equal(read_mask(path), mask)


def test_write_mask_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mask: expected shape"):
        write_mask(tmp_path / "m.png", np.zeros((4, 4, 3), bool))
    with pytest.raises(ValueError, match=r"\.png"):
        write_mask(tmp_path / "m.jpg", np.zeros((4, 4), bool))
    with pytest.raises(TypeError, match="path"):
        write_mask(None, np.zeros((4, 4), bool))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_write_image_round_trip(tmp_path: Path, dtype: type) -> None:
    rng = np.random.default_rng(0)
    high = np.iinfo(dtype).max
    for shape in [(6, 5), (6, 5, 3), (6, 5, 4)]:
        image = rng.integers(0, high, size=shape, endpoint=True).astype(dtype)
        path = tmp_path / f"img_{len(shape)}_{shape[-1]}.png"
        write_image(path, image)
        back = read_image(path)
        assert back.dtype == dtype
        np.testing.assert_array_equal(back, image)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    write_image(tmp_path / "red.png", red)
    raw = cv2.imread(str(tmp_path / "red.png"), cv2.IMREAD_UNCHANGED)
    assert raw[0, 0].tolist() == [0, 0, 255]  # stored as BGR on disk


def test_write_image_rejects_float(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="uint8 or uint16, got float32"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="image"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 2), np.uint8))
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match="corrupt") as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert info.value.path == path
    with pytest.raises(ImageReadError, match="corrupt.png"):
        read_mask(path)


def test_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(2).integers(0, 255, (64, 64), dtype=np.uint8)
    ok, buffer = cv2.imencode(".png", noise)
    assert ok
    path = tmp_path / "truncated.png"
    path.write_bytes(buffer.tobytes()[: len(buffer) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty") as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match="not found") as info:
        read_image(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, OSError)
    with pytest.raises(ImageReadError, match="not found"):
        read_mask(missing)
    with pytest.raises(ImageReadError, match="directory"):
        read_image(tmp_path)


def test_bad_path_type() -> None:
    with pytest.raises(TypeError, match="path"):
        read_image(42)  # type: ignore[arg-type]


def test_image_read_error_pickles(tmp_path: Path) -> None:
    error = ImageReadError(tmp_path / "x.png", "file not found")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) and copy.path == error.path and copy.reason == error.reason


# ---------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "result.json"
    atomic_write_text(path, '{"dice": 0.9}\n')
    assert path.read_text(encoding="utf-8") == '{"dice": 0.9}\n'
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(path, "ünïcode")
    assert path.read_bytes() == "ünïcode".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_atomic_write_permissions_follow_umask(tmp_path: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX permissions only")  # pragma: no cover
    path = tmp_path / "perm.txt"
    atomic_write_text(path, "x")
    reference = tmp_path / "ref.txt"
    reference.write_text("x")
    assert (path.stat().st_mode & 0o777) == (reference.stat().st_mode & 0o777)


def test_atomic_write_rejects_wrong_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="data: expected bytes"):
        atomic_write_bytes(tmp_path / "a.bin", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text: expected str"):
        atomic_write_text(tmp_path / "a.txt", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        atomic_write_bytes(tmp_path, b"x")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_at_replace_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("old content")
    seen: list[Path] = []

    def failing_replace(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        seen.append(Path(src))
        assert Path(src).read_text() == "new content"  # fully written before the rename
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(_io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_text(path, "new content")
    assert seen and seen[0].parent == tmp_path  # the temp file was in the same directory
    assert path.read_text() == "old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_atomic_write_failure_midway_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mask.png"
    write_mask(path, np.ones((4, 4), bool))
    before = path.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("simulated disk full")

    monkeypatch.setattr(_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_mask(path, np.zeros((4, 4), bool))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png"]


def test_atomic_write_interrupt_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(src: os.PathLike[str], dst: os.PathLike[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_io.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "new.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_csv_text_formats_every_table_the_same_way():
    import csv
    import io

    from medsamkit.data import csv_text

    rows = [{"stem": "a", "dice": 0.123456789, "n": 3, "note": None, "extra": "left out"}, {"stem": "b", "dice": 1.0}]
    text = csv_text(rows, ("stem", "dice", "n", "note"))
    assert text.splitlines()[0] == "stem,dice,n,note"
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert parsed == [
        {"stem": "a", "dice": "0.123457", "n": "3", "note": ""},  # 6 significant digits, None empty
        {"stem": "b", "dice": "1", "n": "", "note": ""},  # a missing key is an empty cell
    ]

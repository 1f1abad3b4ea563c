"""Hausdorff / HD95: MONAI and scipy agreement, hand-checked shapes, cropping, conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import directed_hausdorff

from medsamkit.metrics import hausdorff, hd95

# MONAI 1.5+ warns about its own deprecated internal argument; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """A few random discs and rectangles (some may touch the image border)."""
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        if rng.random() < 0.5:
            r = rng.integers(2, 9)
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            h, w = rng.integers(2, 12, size=2)
            mask[cy : cy + h, cx : cx + w] = True
    return mask


def _blob_pairs(seed: int, count: int, shape=(37, 45)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(_blobs(rng, shape, 3), _blobs(rng, shape, 3)) for _ in range(count)]


def _monai_hd(pred: np.ndarray, target: np.ndarray, spacing, percentile) -> float:
    y_pred = torch.from_numpy(pred[None, None].astype(np.float32))  # (B, C, H, W)
    y = torch.from_numpy(target[None, None].astype(np.float32))
    out = compute_hausdorff_distance(
        y_pred,
        y,
        include_background=True,
        distance_metric="euclidean",
        percentile=percentile,
        directed=False,
        spacing=list(spacing),
    )
    return float(out.item())


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.7, 2.3), (3.0, 0.5)])
def test_hausdorff_and_hd95_match_monai(spacing) -> None:
    for pred, target in _blob_pairs(seed=7, count=6):
        assert hausdorff(pred, target, spacing=spacing) == pytest.approx(_monai_hd(pred, target, spacing, None), rel=1e-6)
        assert hd95(pred, target, spacing=spacing) == pytest.approx(_monai_hd(pred, target, spacing, 95), rel=1e-6)


def test_other_percentiles_match_monai() -> None:
    for pred, target in _blob_pairs(seed=11, count=3):
        for q in (50.0, 99.0):
            assert hd95(pred, target, spacing=(1.5, 0.8), percentile=q) == pytest.approx(
                _monai_hd(pred, target, (1.5, 0.8), q), rel=1e-6
            )


def _edge_points(mask: np.ndarray, spacing) -> np.ndarray:
    edges = mask ^ binary_erosion(mask)  # border_value=0: outside the image is background
    return np.argwhere(edges) * np.asarray(spacing, dtype=float)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (2.0, 0.5)])
def test_hausdorff_matches_scipy_directed_hausdorff(spacing) -> None:
    for pred, target in _blob_pairs(seed=3, count=6):
        p, t = _edge_points(pred, spacing), _edge_points(target, spacing)
        expected = max(directed_hausdorff(p, t)[0], directed_hausdorff(t, p)[0])
        assert hausdorff(pred, target, spacing=spacing) == pytest.approx(expected, rel=1e-12)


def test_hd95_matches_brute_force_percentiles() -> None:
    for pred, target in _blob_pairs(seed=5, count=4):
        p, t = _edge_points(pred, (1.2, 0.9)), _edge_points(target, (1.2, 0.9))
        d = np.linalg.norm(p[:, None, :] - t[None, :, :], axis=-1)
        expected = max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))
        assert hd95(pred, target, spacing=(1.2, 0.9)) == pytest.approx(expected, rel=1e-12)


def _square(shape, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_squares_offset_by_three_pixels() -> None:
    a = _square((30, 30), 5, 5, 10)
    b = _square((30, 30), 5, 8, 10)  # same square moved 3 columns right
    # Every left-side edge pixel of `a` (col 5) is 3 px from b's left side (col 8);
    # nothing is farther, and the right sides mirror this.
    assert hausdorff(a, b) == 3.0
    assert hausdorff(b, a) == 3.0
    # the offset runs along columns, so only the column spacing matters
    assert hausdorff(a, b, spacing=(7.0, 0.5)) == 1.5
    c = _square((30, 30), 9, 5, 10)  # moved 4 rows down
    assert hausdorff(a, c, spacing=(2.0, 1.0)) == 8.0
    # percentile 100 is the Hausdorff distance
    assert hd95(a, b, percentile=100) == 3.0


def test_hd95_hand_checked_single_pixels() -> None:
    a = np.zeros((10, 10), dtype=bool)
    a[2, 3] = True
    b = np.zeros((10, 10), dtype=bool)
    b[6, 6] = True
    # one edge pixel each, 3-4-5 triangle
    assert hausdorff(a, b) == 5.0
    assert hd95(a, b) == 5.0
    assert hausdorff(a, b, spacing=(0.5, 2.0)) == pytest.approx(math.hypot(4 * 0.5, 3 * 2.0))


def test_identical_masks_have_zero_distance() -> None:
    pred, _ = _blob_pairs(seed=1, count=1)[0]
    assert hausdorff(pred, pred) == 0.0
    assert hd95(pred, pred) == 0.0


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 1.7)])
def test_cropping_invariance_in_larger_canvas(spacing) -> None:
    for pred, target in _blob_pairs(seed=21, count=4, shape=(25, 30)):
        small_h = hausdorff(pred, target, spacing=spacing)
        small_95 = hd95(pred, target, spacing=spacing)
        for top, left in ((0, 0), (40, 17), (75, 70)):
            big_pred = np.zeros((100, 100), dtype=bool)
            big_target = np.zeros((100, 100), dtype=bool)
            big_pred[top : top + 25, left : left + 30] = pred
            big_target[top : top + 25, left : left + 30] = target
            assert hausdorff(big_pred, big_target, spacing=spacing) == small_h
            assert hd95(big_pred, big_target, spacing=spacing) == small_95


def test_full_image_mask_has_edges_at_the_image_border() -> None:
    # A mask filling the whole image: its edge is the image border (outside counts as
    # background), as in MONAI; the target is a single centre pixel.
    full = np.ones((7, 7), dtype=bool)
    dot = np.zeros((7, 7), dtype=bool)
    dot[3, 3] = True
    # farthest border pixel (corner) to the dot: sqrt(3^2 + 3^2); nearest: 3
    assert hausdorff(full, dot) == pytest.approx(math.sqrt(18))
    assert hausdorff(full, dot) == pytest.approx(_monai_hd(full, dot, (1.0, 1.0), None), rel=1e-6)


def test_empty_mask_conventions() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    mask = _square((8, 8), 2, 2, 3)
    assert hausdorff(empty, empty) == 0.0
    assert hd95(empty, empty) == 0.0
    assert math.isnan(hausdorff(empty, mask))
    assert math.isnan(hausdorff(mask, empty))
    assert math.isnan(hd95(empty, mask))
    assert math.isnan(hd95(mask, empty))


@pytest.mark.parametrize(
    "spacing, error",
    [
        ((1.0,), ValueError),
        ((1.0, 2.0, 3.0), ValueError),
        ((0.0, 1.0), ValueError),
        ((1.0, -2.0), ValueError),
        ((float("nan"), 1.0), ValueError),
        ((1.0, float("inf")), ValueError),
        (1.0, TypeError),
        ("ab", TypeError),
        ((True, 1.0), TypeError),
        ((None, 1.0), TypeError),
    ],
)
def test_bad_spacing_rejected(spacing, error) -> None:
    mask = _square((8, 8), 2, 2, 3)
    with pytest.raises(error, match="spacing"):
        hausdorff(mask, mask, spacing=spacing)
    with pytest.raises(error, match="spacing"):
        hd95(mask, mask, spacing=spacing)


def test_spacing_accepts_numpy_and_ints() -> None:
    a = _square((12, 12), 1, 1, 4)
    b = _square((12, 12), 1, 5, 4)
    assert hausdorff(a, b, spacing=np.array([2, 3])) == hausdorff(a, b, spacing=(2.0, 3.0))


@pytest.mark.parametrize("percentile", [-1, 100.5, float("nan")])
def test_bad_percentile_rejected(percentile) -> None:
    mask = _square((8, 8), 2, 2, 3)
    with pytest.raises(ValueError, match="percentile"):
        hd95(mask, mask, percentile=percentile)


def test_distance_bad_masks_rejected() -> None:
    with pytest.raises(ValueError, match=r"target.*\(8, 8\).*\(8, 9\)"):
        hausdorff(np.zeros((8, 8)), np.zeros((8, 9)))
    nan_pred = np.zeros((8, 8))
    nan_pred[1, 1] = np.nan
    with pytest.raises(ValueError, match="pred"):
        hd95(nan_pred, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="pred"):
        hd95(np.zeros((2, 8, 8)), np.zeros((2, 8, 8)))


def test_edges_equal_scipy_erosion_edges():
    """The OpenCV erosion behind the boundary pixels equals scipy's default binary erosion."""
    from scipy import ndimage

    from medsamkit.metrics._distance import mask_edges

    rng = np.random.default_rng(1)
    for trial in range(200):
        mask = rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.uniform(0.1, 0.95)
        expected = np.logical_xor(mask, ndimage.binary_erosion(mask))
        np.testing.assert_array_equal(mask_edges(mask), expected, err_msg=f"trial {trial}")

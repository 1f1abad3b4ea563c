"""Tests for medsamkit.metrics._surface: 2D/3D Dice, IoU, HD95, ASD and NSD, checked against MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
)

from medsamkit.metrics import (
    average_surface_distance,
    compute_metrics,
    normalized_surface_dice,
    nsd,
    volume_dice,
    volume_hd95,
    volume_iou,
    volume_metrics,
)


def _blobs(shape, seed):
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    out = []
    for _ in range(2):
        centre = [rng.uniform(n * 0.3, n * 0.7) for n in shape]
        radii = [rng.uniform(n * 0.15, n * 0.3) for n in shape]
        out.append(sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1)
    return out[0], out[1]


def _t(mask):
    return torch.as_tensor(mask[None, None].astype(np.float32))


SPACINGS_3D = [(1.0, 1.0, 1.0), (5.0, 0.627, 0.627), (2.0, 0.8, 1.3)]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("spacing", SPACINGS_3D)
def test_3d_metrics_match_monai(seed, spacing):
    pred, target = _blobs((12, 30, 28), seed)
    p, t = _t(pred), _t(target)
    ours = volume_metrics(pred, target, spacing=spacing, nsd_tolerance=2.0)
    assert ours["dice"] == pytest.approx(float(compute_dice(p, t)), rel=1e-6)
    assert ours["iou"] == pytest.approx(float(compute_iou(p, t)), rel=1e-6)
    assert ours["hd95"] == pytest.approx(float(compute_hausdorff_distance(p, t, percentile=95, spacing=spacing)), rel=1e-5)
    assert ours["asd"] == pytest.approx(float(compute_average_surface_distance(p, t, symmetric=True, spacing=spacing)), rel=1e-5)
    # compute_surface_dice takes one-hot (B, C, ...) with class 0 = background skipped
    one_hot = lambda m: torch.as_tensor(np.stack([~m, m])[None].astype(np.float32))
    monai_nsd = float(compute_surface_dice(one_hot(pred), one_hot(target), class_thresholds=[2.0], spacing=spacing))
    assert ours["nsd"] == pytest.approx(monai_nsd, rel=1e-6)
    assert 0.0 < ours["nsd"] < 1.0  # a test that can fail both ways
    assert ours["dice"] == volume_dice(pred, target) and ours["iou"] == volume_iou(pred, target)
    assert ours["hd95"] == volume_hd95(pred, target, spacing=spacing)
    assert ours["asd"] == average_surface_distance(pred, target, spacing=spacing)


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 3.0])
def test_2d_nsd_matches_monai(tolerance):
    pred, target = _blobs((40, 50), 5)
    one_hot = lambda m: torch.as_tensor(np.stack([~m, m])[None].astype(np.float32))
    spacing = (0.7, 1.1)
    expected = float(compute_surface_dice(one_hot(pred), one_hot(target), class_thresholds=[tolerance], spacing=spacing))
    assert normalized_surface_dice(pred, target, tolerance=tolerance, spacing=spacing) == pytest.approx(expected, rel=1e-6)


def test_2d_nsd_metric_name_uses_2_units_of_spacing():
    pred, target = _blobs((40, 50), 6)
    got = compute_metrics(pred, target, spacing=(0.5, 0.5), metrics=("nsd",))["nsd"]
    assert got == normalized_surface_dice(pred, target, tolerance=2.0, spacing=(0.5, 0.5))
    assert got == nsd(pred, target, spacing=(0.5, 0.5))
    assert tuple(compute_metrics(pred, target)) == ("dice", "iou", "precision", "recall", "f1", "hd95")


def test_hand_computed_shift_in_mm():
    # A 3D box shifted by one slice along z with 5 mm slices: the faces perpendicular to z
    # are 5 mm apart; the side faces overlap except at the ends.
    target = np.zeros((8, 10, 10), bool)
    target[2:5, 3:7, 3:7] = True
    pred = np.roll(target, 1, axis=0)
    assert volume_dice(pred, target) == pytest.approx(2 * 32 / 96)
    assert volume_hd95(pred, target, spacing=(5.0, 1.0, 1.0)) == pytest.approx(5.0)
    # The z-faces are exactly 5 mm from the other surface: inside a 5 mm tolerance, not a 4.9 mm one.
    assert normalized_surface_dice(pred, target, tolerance=5.0, spacing=(5.0, 1.0, 1.0)) == 1.0
    assert normalized_surface_dice(pred, target, tolerance=4.9, spacing=(5.0, 1.0, 1.0)) < 1.0


def test_empty_conventions():
    empty = np.zeros((3, 4, 5), bool)
    full = empty.copy()
    full[1, 1:3, 1:3] = True
    both = volume_metrics(empty, empty, spacing=(1, 1, 1))
    assert both == {"dice": 1.0, "iou": 1.0, "nsd": 1.0, "hd95": 0.0, "asd": 0.0}
    one = volume_metrics(full, empty, spacing=(1, 1, 1))
    assert one["dice"] == 0.0 and one["nsd"] == 0.0 and math.isnan(one["hd95"]) and math.isnan(one["asd"])


def test_bad_input_names_the_parameter():
    a = np.zeros((3, 4, 5), bool)
    with pytest.raises(ValueError, match=r"target: expected the shape of pred \(3, 4, 5\), got \(3, 4, 6\)"):
        volume_dice(a, np.zeros((3, 4, 6)))
    with pytest.raises(ValueError, match=r"spacing: expected 3 values \(z, y, x\)"):
        volume_hd95(a, a, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="tolerance"):
        normalized_surface_dice(a, a, tolerance=-1)
    with pytest.raises(ValueError, match=r"pred: expected shape \(H, W\) or \(D, H, W\)"):
        volume_dice(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))

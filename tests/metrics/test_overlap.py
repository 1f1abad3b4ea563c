"""Overlap metrics: hand-computed examples, MONAI agreement, conventions, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_dice, compute_iou

from medsamkit.metrics import dice, f1, iou, precision, recall

OVERLAP = (dice, iou, precision, recall, f1)


def _hand_pair() -> tuple[np.ndarray, np.ndarray]:
    # pred: rows 0-1, cols 0-2 -> 6 pixels; target: rows 1-2, cols 1-3 -> 6 pixels.
    # Overlap: row 1, cols 1-2 -> TP = 2; FP = 6 - 2 = 4; FN = 6 - 2 = 4.
    pred = np.zeros((4, 5), dtype=np.uint8)
    pred[0:2, 0:3] = 1
    target = np.zeros((4, 5), dtype=np.uint8)
    target[1:3, 1:4] = 1
    return pred, target


def test_hand_computed_symmetric_counts() -> None:
    pred, target = _hand_pair()
    # TP=2, FP=4, FN=4
    assert dice(pred, target) == pytest.approx(2 * 2 / (6 + 6))  # 1/3
    assert iou(pred, target) == pytest.approx(2 / (2 + 4 + 4))  # 0.2
    assert precision(pred, target) == pytest.approx(2 / 6)
    assert recall(pred, target) == pytest.approx(2 / 6)
    assert f1(pred, target) == pytest.approx(1 / 3)


def test_hand_computed_asymmetric_counts() -> None:
    # pred: 2x2 block (4 px) inside target: 3x4 block (12 px).
    # TP = 4, FP = 0, FN = 8.
    pred = np.zeros((5, 6), dtype=bool)
    pred[1:3, 1:3] = True
    target = np.zeros((5, 6), dtype=bool)
    target[1:4, 0:4] = True
    assert precision(pred, target) == 1.0  # 4 / (4 + 0)
    assert recall(pred, target) == pytest.approx(4 / 12)  # 4 / (4 + 8)
    assert dice(pred, target) == pytest.approx(8 / 16)  # 2*4 / (4 + 12)
    assert iou(pred, target) == pytest.approx(4 / 12)  # 4 / (4 + 0 + 8)
    # F1 = 2PR/(P+R) = 2 * 1 * (1/3) / (4/3) = 0.5 = Dice
    assert f1(pred, target) == pytest.approx(0.5)
    # swapping roles swaps precision and recall, keeps dice / iou
    assert precision(target, pred) == pytest.approx(4 / 12)
    assert recall(target, pred) == 1.0
    assert dice(target, pred) == dice(pred, target)


def test_identical_and_disjoint() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[2:5, 1:4] = True
    for fn in OVERLAP:
        assert fn(mask, mask) == 1.0
    other = np.zeros((6, 6), dtype=bool)
    other[0, 5] = True
    for fn in OVERLAP:
        assert fn(mask, other) == 0.0


def _random_masks(rng: np.random.Generator, n: int, shape: tuple[int, int]) -> np.ndarray:
    fill = rng.uniform(0.05, 0.6, size=(n, 1, 1))
    return rng.random((n, *shape)) < fill


def test_dice_and_iou_match_monai_on_random_masks() -> None:
    rng = np.random.default_rng(1234)
    preds = _random_masks(rng, 20, (17, 23))
    targets = _random_masks(rng, 20, (17, 23))
    y_pred = torch.from_numpy(preds[:, None].astype(np.float32))  # (B, C=1, H, W)
    y = torch.from_numpy(targets[:, None].astype(np.float32))
    monai_dice = compute_dice(y_pred, y, include_background=True)[:, 0].numpy()
    monai_iou = compute_iou(y_pred, y, include_background=True)[:, 0].numpy()
    ours_dice = np.array([dice(p, t) for p, t in zip(preds, targets)])
    ours_iou = np.array([iou(p, t) for p, t in zip(preds, targets)])
    np.testing.assert_allclose(ours_dice, monai_dice, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours_iou, monai_iou, rtol=1e-6, atol=1e-7)
    # F1 from precision and recall equals Dice per image
    ours_f1 = np.array([f1(p, t) for p, t in zip(preds, targets)])
    np.testing.assert_allclose(ours_f1, ours_dice, rtol=1e-12)


def test_precision_recall_match_definition_on_random_masks() -> None:
    rng = np.random.default_rng(99)
    preds = _random_masks(rng, 10, (12, 9))
    targets = _random_masks(rng, 10, (12, 9))
    for p, t in zip(preds, targets):
        tp = np.sum(p & t)
        assert precision(p, t) == pytest.approx(tp / p.sum())
        assert recall(p, t) == pytest.approx(tp / t.sum())


def test_both_empty_is_one_and_matches_monai_ignore_empty_false() -> None:
    empty = np.zeros((4, 4), dtype=bool)
    for fn in OVERLAP:
        assert fn(empty, empty) == 1.0
    zeros = torch.zeros(1, 1, 4, 4)
    assert compute_dice(zeros, zeros, include_background=True, ignore_empty=False).item() == 1.0
    assert compute_iou(zeros, zeros, include_background=True, ignore_empty=False).item() == 1.0


def test_pred_empty_target_non_empty_scores_zero() -> None:
    pred = np.zeros((4, 4), dtype=bool)
    target = np.zeros((4, 4), dtype=bool)
    target[1, 1:3] = True
    assert precision(pred, target) == 0.0  # 0 / 0 predicted pixels
    assert recall(pred, target) == 0.0  # 0 / 2
    assert dice(pred, target) == 0.0
    assert iou(pred, target) == 0.0
    assert f1(pred, target) == 0.0


def test_pred_non_empty_target_empty_scores_zero() -> None:
    pred = np.zeros((4, 4), dtype=bool)
    pred[0, 0] = True
    target = np.zeros((4, 4), dtype=bool)
    assert precision(pred, target) == 0.0  # 0 / 1
    assert recall(pred, target) == 0.0  # 0 / 0 target pixels
    assert dice(pred, target) == 0.0
    assert iou(pred, target) == 0.0
    assert f1(pred, target) == 0.0


def test_accepts_non_bool_dtypes_and_trailing_channel() -> None:
    pred, target = _hand_pair()
    expected = dice(pred, target)
    assert dice(pred.astype(np.float32) * 255, target.astype(np.int64)) == expected
    assert dice(pred[..., None], target[..., None]) == expected
    assert isinstance(expected, float)


@pytest.mark.parametrize("fn", OVERLAP)
def test_shape_mismatch_names_target_and_both_shapes(fn) -> None:
    with pytest.raises(ValueError, match=r"target.*\(4, 5\).*\(4, 6\)"):
        fn(np.zeros((4, 5)), np.zeros((4, 6)))


def test_nan_in_pred_rejected() -> None:
    pred = np.zeros((4, 4), dtype=np.float32)
    pred[0, 0] = np.nan
    with pytest.raises(ValueError, match="pred.*NaN"):
        dice(pred, np.zeros((4, 4)))


def test_three_d_arrays_rejected() -> None:
    with pytest.raises(ValueError, match=r"pred.*\(4, 4, 3\)"):
        iou(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match=r"target.*\(2, 4, 4\)"):
        iou(np.zeros((4, 4)), np.zeros((2, 4, 4)))


def test_non_numeric_rejected() -> None:
    with pytest.raises(TypeError, match="pred"):
        precision(np.array([["a", "b"], ["c", "d"]]), np.zeros((2, 2)))
    with pytest.raises(TypeError, match="target"):
        recall(np.zeros((2, 2)), None)

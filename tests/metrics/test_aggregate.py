"""compute_metrics, summarize and MetricAccumulator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medsamkit import metrics as M
from medsamkit.metrics import (
    DEFAULT_METRICS,
    METRICS,
    MetricAccumulator,
    compute_metrics,
    summarize,
)


def _pair(seed: int, shape=(20, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out = []
    for _ in range(2):
        cy, cx, r = rng.integers(4, 16), rng.integers(4, 20), rng.integers(2, 7)
        out.append((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
    return out[0], out[1]


def test_public_names() -> None:
    assert set(M.__all__) == {
        "DEFAULT_METRICS",
        "METRICS",
        "NSD_TOLERANCE",
        "MetricAccumulator",
        "average_surface_distance",
        "normalized_surface_dice",
        "nsd",
        "surface_distances",
        "volume_dice",
        "volume_hd95",
        "volume_iou",
        "volume_metrics",
        "compute_metrics",
        "dice",
        "f1",
        "hausdorff",
        "hd95",
        "iou",
        "precision",
        "recall",
        "summarize",
    }
    assert set(METRICS) == {"dice", "iou", "precision", "recall", "f1", "hausdorff", "hd95", "nsd"}


def test_compute_metrics_equals_individual_functions() -> None:
    pred, target = _pair(0)
    spacing = (0.8, 1.3)
    names = tuple(METRICS)
    result = compute_metrics(pred, target, spacing=spacing, metrics=names)
    assert list(result) == list(names)
    for name in names:
        fn = METRICS[name]
        if name in ("hausdorff", "hd95", "nsd"):
            expected = fn(pred, target, spacing=spacing)
        else:
            expected = fn(pred, target)
        assert result[name] == expected
        assert isinstance(result[name], float)
    assert result["hausdorff"] >= result["hd95"] > 0.0


def test_compute_metrics_default_names() -> None:
    pred, target = _pair(1)
    assert tuple(compute_metrics(pred, target)) == DEFAULT_METRICS
    assert DEFAULT_METRICS == ("dice", "iou", "precision", "recall", "f1", "hd95")


def test_compute_metrics_empty_conventions() -> None:
    empty = np.zeros((6, 6), dtype=bool)
    mask = empty.copy()
    mask[2:4, 2:4] = True
    names = tuple(METRICS)
    both = compute_metrics(empty, empty, metrics=names)
    assert both == {
        "dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0,
        "hausdorff": 0.0, "hd95": 0.0, "nsd": 1.0,
    }  # fmt: skip
    for pred, target in ((empty, mask), (mask, empty)):
        one = compute_metrics(pred, target, metrics=names)
        for name in ("dice", "iou", "precision", "recall", "f1", "nsd"):
            assert one[name] == 0.0
        assert math.isnan(one["hausdorff"]) and math.isnan(one["hd95"])


def test_unknown_metric_lists_valid_names() -> None:
    pred, target = _pair(2)
    with pytest.raises(ValueError, match=r"'hd99'.*dice.*f1.*hausdorff.*hd95.*iou"):
        compute_metrics(pred, target, metrics=("dice", "hd99"))
    with pytest.raises(ValueError, match="metrics"):
        MetricAccumulator(("jaccard",))
    with pytest.raises(ValueError, match="metrics"):
        compute_metrics(pred, target, metrics=())


def test_compute_metrics_validates_inputs() -> None:
    with pytest.raises(ValueError, match=r"target.*\(5, 5\).*\(5, 4\)"):
        compute_metrics(np.zeros((5, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(np.zeros((5, 5)), np.zeros((5, 5)), spacing=(1.0, 0.0))


def test_summarize_hand_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s == {"mean": 2.5, "median": 2.5, "std": pytest.approx(math.sqrt(1.25)), "n": 4}
    # population std (ddof=0): one value has std 0
    assert summarize([0.7]) == {"mean": 0.7, "median": 0.7, "std": 0.0, "n": 1}


def test_summarize_skips_nan_none_and_inf() -> None:
    s = summarize([1.0, float("nan"), 3.0, None, float("inf")])
    assert s == {"mean": 2.0, "median": 2.0, "std": 1.0, "n": 2}
    s = summarize(np.array([np.nan, 5.0]))
    assert s["n"] == 1 and s["mean"] == 5.0


def test_summarize_no_defined_values_is_json_friendly() -> None:
    for values in ([], [float("nan"), None]):
        s = summarize(values)
        assert s == {"mean": None, "median": None, "std": None, "n": 0}
        assert json.loads(json.dumps(s)) == s


def test_summarize_bad_input() -> None:
    with pytest.raises(TypeError, match="values"):
        summarize(3.0)
    with pytest.raises(TypeError, match="values"):
        summarize(["a", "b"])
    with pytest.raises(ValueError, match="values"):
        summarize(np.zeros((2, 2)))


def test_accumulator_round_trip() -> None:
    names = ("dice", "hausdorff", "hd95")
    acc = MetricAccumulator(names, spacing=(0.5, 0.5))
    pairs = [_pair(s) for s in range(4)]
    empty = np.zeros((20, 24), dtype=bool)
    pairs.append((empty, pairs[0][1]))  # undefined distances
    returned = [acc.update(p, t, key=f"case{i}") for i, (p, t) in enumerate(pairs)]
    assert len(acc) == 5
    rows = acc.rows
    assert [r["key"] for r in rows] == [f"case{i}" for i in range(5)]
    for row, values, (p, t) in zip(rows, returned, pairs):
        assert values == compute_metrics(p, t, spacing=(0.5, 0.5), metrics=names)
        assert {k: v for k, v in row.items() if k != "key"}.keys() == values.keys()
    assert math.isnan(rows[-1]["hd95"]) and rows[-1]["dice"] == 0.0

    summary = acc.compute()
    assert list(summary) == list(names)
    assert summary["dice"] == summarize([r["dice"] for r in rows])
    assert summary["dice"]["n"] == 5
    assert summary["hd95"]["n"] == 4  # the NaN row is skipped
    assert summary["hd95"]["mean"] == pytest.approx(np.mean([r["hd95"] for r in rows[:4]]))

    # re-adding the rows (with their "key" entries) reproduces the summary
    copy = MetricAccumulator(names)
    for row in rows:
        copy.add(row)
    assert len(copy) == len(rows)
    for a, b in zip(copy.rows, rows):
        assert a.keys() == b.keys() and a["key"] == b["key"]
        np.testing.assert_array_equal([a[n] for n in names], [b[n] for n in names])
    assert copy.compute() == summary

    # rows are copies: mutating them does not change the accumulator
    rows[0]["dice"] = -1.0
    assert acc.rows[0]["dice"] != -1.0

    acc.reset()
    assert len(acc) == 0 and acc.rows == []
    assert acc.compute()["dice"] == {"mean": None, "median": None, "std": None, "n": 0}


def test_accumulator_add() -> None:
    acc = MetricAccumulator(("dice", "hd95"))
    acc.add({"dice": 0.5, "hd95": None}, key="a")
    acc.add({"dice": np.float32(1.0), "hd95": 2}, key="b")
    assert acc.rows[0]["key"] == "a" and math.isnan(acc.rows[0]["hd95"])
    assert acc.compute()["hd95"] == {"mean": 2.0, "median": 2.0, "std": 0.0, "n": 1}
    assert acc.compute()["dice"]["mean"] == 0.75
    with pytest.raises(ValueError, match="missing.*hd95"):
        acc.add({"dice": 0.5})
    with pytest.raises(ValueError, match="unknown.*iou"):
        acc.add({"dice": 0.5, "hd95": 1.0, "iou": 0.3})
    with pytest.raises(TypeError, match="dice"):
        acc.add({"dice": "high", "hd95": 1.0})
    with pytest.raises(TypeError, match="values"):
        acc.add([0.5, 1.0])
    assert len(acc) == 2


def test_accumulator_validates_spacing_and_masks() -> None:
    with pytest.raises(ValueError, match="spacing"):
        MetricAccumulator(spacing=(1.0, -1.0))
    acc = MetricAccumulator()
    with pytest.raises(ValueError, match="target"):
        acc.update(np.zeros((4, 4)), np.zeros((4, 3)))
    assert len(acc) == 0

"""Quality estimates per automatic result, failure-detection summary and the cases to check."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._geometry import component_boxes_xyxy
from medsamkit.evaluation import QUALITY_COLUMNS, auroc, cases_to_check, estimate_quality, evaluate, failure_detection
from medsamkit.prompters import FixedPrompter, OracleBoxPrompter
from medsamkit.testing import FakeSegmenter, make_blob_image


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=200), 1)  # many ties
    labels = rng.random(200) < scores.clip(-2, 2) / 4 + 0.5
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert auroc([0.1, 0.2], [True, True]) is None
    with pytest.raises(ValueError, match="positives"):
        auroc([0.1, 0.2], [True])


def test_failure_detection_by_hand():
    rows = [
        {"dice": 0.95, "quality": 0.9},
        {"dice": 0.90, "quality": 0.8},
        {"dice": 0.50, "quality": 0.3},  # failure, least confident
        {"dice": 0.75, "quality": 0.85},  # failure below 0.8 only, confident
        {"dice": 0.92, "quality": None},  # left out
    ]
    out = failure_detection(rows, review_fraction=0.25)
    assert out["n"] == 4
    # Dice < 0.8: failures {0.50, 0.75} with -quality {-0.3, -0.85}; good {-0.9, -0.8}:
    # pairs (failure > good): -0.3 beats both, -0.85 beats -0.9 only -> 3 of 4.
    assert out["auroc_dice_below_0.8"] == pytest.approx(0.75)
    assert out["auroc_dice_below_0.7"] == pytest.approx(1.0)  # 0.50 is the least confident
    assert out["n_dice_below_0.8"] == 2
    assert out["mean_dice"] == pytest.approx(np.mean([0.95, 0.90, 0.50, 0.75]))
    assert out["mean_dice_after_review"] == pytest.approx(np.mean([0.95, 0.90, 0.75]))  # one of 4 set aside
    with pytest.raises(ValueError, match="review_fraction"):
        failure_detection(rows, review_fraction=1.0)


def test_perturbation_agreement_by_hand_and_on_a_clear_object():
    # mode="box": the mask is the box itself, so the agreement is the Dice of a box and its moved copy
    seg = FakeSegmenter(mode="box")
    image = np.zeros((200, 200), dtype=np.uint8)
    pipe = msk.Pipeline(FixedPrompter(msk.Prompts(box_xyxy=[[20, 20, 119, 119]])), seg)  # 100 x 100 px
    enc = seg.encode(image)
    q = estimate_quality(pipe, pipe(image, encoding=enc), enc, n_perturbations=1, fraction=0.05)
    # first perturbation grows the box by 5 px left and right: 110 x 100 px around 100 x 100 px
    assert q["q_agree"] == pytest.approx(2 * 100 * 100 / (100 * 100 + 110 * 100))
    assert q["q_iou"] == pytest.approx(0.9)  # FakeSegmenter's score: mean probability in the box
    assert q["q_presence"] is None  # no presence model
    assert q["quality"] == pytest.approx(np.sqrt(q["q_iou"] * q["q_agree"]))  # geometric mean
    # intensity mode on a bright object: a box a little off still finds the same object
    image, mask = make_blob_image((96, 128), seed=5, noise=0.02)
    seg = FakeSegmenter()
    box = component_boxes_xyxy(mask)[0]
    clear = msk.Pipeline(FixedPrompter(msk.Prompts(box_xyxy=[box + np.array([-4, -4, 4, 4])])), seg)
    enc = seg.encode(image)
    assert estimate_quality(clear, clear(image, encoding=enc), enc)["q_agree"] > 0.97


def test_presence_term_and_empty_result():
    class Present(FixedPrompter):
        def presence(self, encoding):
            return 0.8

    image, _ = make_blob_image(seed=0)
    seg = FakeSegmenter()
    pipe = msk.Pipeline(Present(msk.Prompts.empty()), seg)
    enc = seg.encode(image)
    q = estimate_quality(pipe, pipe(image, encoding=enc), enc)
    assert q["q_presence"] == pytest.approx(0.2)  # nothing predicted although p = 0.8
    assert q["q_iou"] is None and q["q_agree"] is None
    assert q["quality"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="n_perturbations"):
        estimate_quality(pipe, pipe(image), enc, n_perturbations=7)


def test_evaluate_writes_quality_columns_and_cases_to_check(tmp_path):
    root = tmp_path / "data"
    for i in range(6):
        image, mask = make_blob_image((64, 80), seed=i)
        msk.data.write_image(root / "images" / f"im{i}.png", image)
        msk.write_mask(root / "masks" / f"im{i}.png", mask)
    pipe = msk.Pipeline(OracleBoxPrompter(), FakeSegmenter())
    report = evaluate(pipe, root, out_dir=tmp_path / "run", quality=True, progress=False, n_overlays=0)
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert set(QUALITY_COLUMNS) <= set(rows[0])
    assert all(float(r["quality"]) > 0 for r in rows)
    assert report.summary["failure_detection"]["n"] == 6
    # resuming with quality on keeps the columns; a run without quality in the same folder is refused
    with pytest.raises(ValueError, match="different run"):
        evaluate(pipe, root, out_dir=tmp_path / "run", progress=False)
    path = cases_to_check(tmp_path / "run", n=3, data=root)
    with path.open() as handle:
        listed = list(csv.DictReader(handle))
    assert [int(r["rank"]) for r in listed] == [1, 2, 3]
    qualities = [float(r["quality"]) for r in listed]
    assert qualities == sorted(qualities)
    assert qualities[0] == pytest.approx(min(float(r["quality"]) for r in rows), rel=1e-5)
    assert len(list((path.parent / "overlays").glob("*.png"))) == 3
    plain = evaluate(pipe, root, out_dir=tmp_path / "plain", progress=False, n_overlays=0)
    assert "failure_detection" not in plain.summary
    with pytest.raises(ValueError, match="column"):
        cases_to_check(tmp_path / "plain")

"""compare_prompters / box_margin_study: tables, detection breakdown, one encode per image."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter
from medsamkit.cli import main
from medsamkit.evaluation import box_margin_study, compare_prompters, detection_class
from medsamkit.testing import FakeSegmenter, make_blob_image

SIZE = (48, 64)


@pytest.fixture()
def folder(tmp_path):
    """Four blob images and one empty (normal) image."""
    root = tmp_path / "data"
    for i in range(4):
        image, mask = make_blob_image(SIZE, seed=i)
        msk.data.write_image(root / "images" / f"b{i}.png", image)
        msk.write_mask(root / "masks" / f"b{i}.png", mask)
    noise = (np.random.default_rng(9).random(SIZE) * 60).astype(np.uint8)
    msk.data.write_image(root / "images" / "n0.png", noise)
    msk.write_mask(root / "masks" / "n0.png", np.zeros(SIZE, bool))
    return msk.MaskFolder(root)


def test_detection_classes_by_hand():
    target = np.zeros((10, 10), bool)
    target[2:5, 2:5] = True
    empty = np.zeros((10, 10), bool)
    assert detection_class(msk.Prompts(box_xyxy=[[0, 0, 2, 2]]), target) == "detected"  # touches (2, 2)
    assert detection_class(msk.Prompts(box_xyxy=[[6, 6, 9, 9]]), target) == "missed: wrong place"
    assert detection_class(msk.Prompts.empty(), target) == "missed: no prompt"
    assert detection_class(msk.Prompts(points_xy=[[[3, 3]]]), target) == "detected"
    assert detection_class(msk.Prompts(points_xy=[[[3, 3]]], point_labels=[[0]]), target) == "missed: wrong place"
    assert detection_class(msk.Prompts(box_xyxy=[[0, 0, 2, 2]]), empty) == "false positive"
    assert detection_class(msk.Prompts.empty(), empty) == "true negative"


@pytest.mark.real_plots
def test_compare_prompters_table_and_detection_breakdown(folder, tmp_path):
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, tmp_path / "cache")
    corner = msk.FixedPrompter(msk.Prompts(box_xyxy=[[0, 0, 3, 3]]))  # away from every blob
    report = compare_prompters(
        seg, folder, {"oracle": msk.OracleBoxPrompter(), "corner": corner}, out_dir=tmp_path / "study", progress=False
    )
    assert inner.encode_calls == 5  # each image encoded once for the whole study
    rows = {r["provider"]: r for r in csv.DictReader((tmp_path / "study" / "comparison.csv").open())}
    oracle, fixed = rows["oracle"], rows["corner"]
    assert (int(oracle["detected"]), int(oracle["true_negative"]), int(oracle["missed"])) == (4, 1, 0)
    assert (int(fixed["detected"]), int(fixed["missed_wrong_place"]), int(fixed["false_positive"])) == (0, 4, 1)
    # Dice mean of the table equals the per-image CSV of the provider's own evaluate folder.
    per_image = [float(r["dice"]) for r in csv.DictReader((tmp_path / "study" / "oracle" / "metrics.csv").open())]
    assert float(oracle["dice_mean"]) == pytest.approx(np.mean(per_image), abs=1e-6)
    assert float(oracle["dice_mean"]) > 0.9 > float(fixed["dice_mean"])
    detected = [d for d, r in zip(per_image, sorted(folder.stems)) if not r.startswith("n")]
    assert float(oracle["dice_detected_mean"]) == pytest.approx(np.mean(detected), abs=1e-6)
    assert json.loads((tmp_path / "study" / "comparison.json").read_text())[0]["provider"] == "oracle"
    assert (tmp_path / "study" / "dice_boxplot.png").stat().st_size > 1000
    assert "oracle" in str(report) and "corner" in str(report)


def test_compare_prompters_runs_whole_pipelines_with_their_own_segmenter_and_threshold(folder, tmp_path):
    shared, own = FakeSegmenter(), FakeSegmenter()
    own_pipeline = msk.Pipeline(msk.OracleBoxPrompter(), own, threshold=0.99)  # e.g. a fine-tuned pipeline
    report = compare_prompters(
        shared,
        folder,
        {"zero-shot": msk.OracleBoxPrompter(), "tuned": own_pipeline},
        out_dir=tmp_path / "study",
        progress=False,
    )
    assert shared.encode_calls == 4 and own.encode_calls == 4  # the empty image gets no prompt, no encoding
    saved = json.loads((tmp_path / "study" / "tuned" / "pipeline.json").read_text())
    assert saved["threshold"] == 0.99
    assert json.loads((tmp_path / "study" / "zero-shot" / "pipeline.json").read_text())["threshold"] == 0.5
    assert [r["provider"] for r in report.table] == ["zero-shot", "tuned"]


def test_box_margin_study_dice_falls_with_huge_margins(folder, tmp_path):
    report = box_margin_study(FakeSegmenter(mode="box"), folder, out_dir=tmp_path / "m", margins=(0, 10), progress=False)
    dice = {r["provider"]: r["dice_mean"] for r in report.table}
    assert list(dice) == ["margin 0 px", "margin 10 px"]
    assert dice["margin 0 px"] > dice["margin 10 px"]


def test_bad_arguments(folder, tmp_path):
    with pytest.raises(ValueError, match="prompters"):
        compare_prompters(FakeSegmenter(), folder, {}, out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="margins"):
        box_margin_study(FakeSegmenter(), folder, out_dir=tmp_path / "y", margins=())


def test_cli_compare_and_box_margins(folder, tmp_path, capsys):
    code = main(
        [
            "compare",
            str(folder.root),
            "--out",
            str(tmp_path / "c"),
            "--segmenter",
            "fake",
            "--with",
            "oracle-box",
            "--with",
            "perturbed-box:margin=5",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "perturbed-box:margin=5" in out
    assert (tmp_path / "c" / "perturbed-box-margin-5" / "metrics.csv").is_file()
    code = main(
        [
            "box-margins",
            str(folder.root),
            "--out",
            str(tmp_path / "b"),
            "--segmenter",
            "fake",
            "--margins",
            "0",
            "3",
            "--no-progress",
        ]
    )
    assert code == 0 and "margin 3 px" in capsys.readouterr().out
    code = main(
        [
            "compare",
            str(folder.root),
            "--out",
            str(tmp_path / "d"),
            "--segmenter",
            "fake",
            "--with",
            "oracle-box:margin",
            "--no-progress",
        ]
    )
    assert code == 2 and "KEY=VALUE" in capsys.readouterr().err


def test_study_out_dir_inside_the_data_is_refused(folder, tmp_path):
    from medsamkit.evaluation import compare_prompters

    for out in (folder.root, folder.masks_dir, folder.masks_dir / "study"):
        with pytest.raises(ValueError, match="input folder"):
            compare_prompters(FakeSegmenter(), folder, {"oracle": msk.OracleBoxPrompter()}, out_dir=out, progress=False)
    assert not (folder.masks_dir / "study").exists() and not (folder.root / "comparison.csv").exists()

"""Tests for ``medsamkit.evaluation.segment_images``: masks, results.csv, resume, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit import FixedPrompter, OracleBoxPrompter, Pipeline, Prompts
from medsamkit.data import MaskFolder, write_image, write_mask
from medsamkit.evaluation import segment_images
from medsamkit.testing import FakeSegmenter, make_blob_image

SIZE = (40, 56)
STEMS = ("img_c", "img_a", "img_b")  # created unsorted on purpose
BOX = (5, 8, 30, 25)  # x0, y0, x1, y1 (inclusive pixels)
COLUMNS = ["stem", "area_px", "n_prompts", "mean_score", "seconds", "note", "error"]


def make_image_folder(root: Path, stems=STEMS) -> None:
    """``root/images`` only: no masks folder at all."""
    for i, stem in enumerate(stems):
        image, _ = make_blob_image(SIZE, seed=i)
        write_image(root / "images" / f"{stem}.png", image)


def box_pipeline(segmenter: FakeSegmenter | None = None) -> Pipeline:
    return Pipeline(FixedPrompter(Prompts(box_xyxy=[BOX])), segmenter or FakeSegmenter(mode="box"))


def expected_box_mask() -> np.ndarray:
    x0, y0, x1, y1 = BOX
    mask = np.zeros(SIZE, dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def read_png_mask(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"unreadable PNG {path}"
    return array > 0


def read_results(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), list(csv.DictReader(lines))


def test_segment_folder_without_masks(tmp_path):
    make_image_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data", require_masks=False)
    assert folder.masks_dir is None
    out = tmp_path / "out"
    seg = FakeSegmenter(mode="box")
    report = segment_images(box_pipeline(seg), folder, out_dir=out, n_overlays=2, progress=False)

    assert seg.encode_calls == 3
    assert report.errors == {}
    expected = expected_box_mask()
    for stem in STEMS:
        np.testing.assert_array_equal(read_png_mask(out / "masks" / f"{stem}.png"), expected)
        record = json.loads((out / "records" / f"{stem}.json").read_text())
        assert record["prompts"]["box_xyxy"] == [list(map(float, BOX))]
    header, rows = read_results(out / "results.csv")
    assert header == COLUMNS
    assert [r["stem"] for r in rows] == sorted(STEMS)
    for row in rows:
        assert int(row["area_px"]) == int(expected.sum()) == 26 * 18
        assert row["n_prompts"] == "1"
        assert float(row["mean_score"]) == pytest.approx(0.9)
        assert row["error"] == "" and row["note"] == ""
    assert [r["stem"] for r in report.rows] == sorted(STEMS)
    # Overlays of the first two images; the pipeline is saved for re-running.
    overlays = sorted(p.stem for p in (out / "overlays").glob("*.png"))
    assert overlays == sorted(STEMS)[:2]
    assert cv2.imread(str(out / "overlays" / f"{overlays[0]}.png")) is not None
    assert Pipeline.load(out).config == box_pipeline().config


def test_segment_resume_skips_done_images(tmp_path):
    make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    segment_images(box_pipeline(), MaskFolder(tmp_path / "data", require_masks=False), out_dir=out, progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.png")}
    assert len(mtimes) == 3

    # A new image appears: only it is segmented on the next run.
    image, _ = make_blob_image(SIZE, seed=7)
    write_image(tmp_path / "data" / "images" / "img_0.png", image)
    seg = FakeSegmenter(mode="box")
    report = segment_images(box_pipeline(seg), MaskFolder(tmp_path / "data", require_masks=False), out_dir=out, progress=False)
    assert seg.encode_calls == 1
    assert {p.name: p.stat().st_mtime_ns for p in (out / "masks").glob("*.png") if p.name != "img_0.png"} == mtimes
    _, rows = read_results(out / "results.csv")
    assert [r["stem"] for r in rows] == sorted([*STEMS, "img_0"])
    assert [r["stem"] for r in report.rows] == sorted([*STEMS, "img_0"])
    assert all(r["area_px"] == str(expected_box_mask().sum()) for r in rows)
    assert not [p for p in out.rglob(".*.tmp")]


def test_segment_bad_image_is_reported_and_retried(tmp_path, caplog):
    make_image_folder(tmp_path / "data")
    (tmp_path / "data" / "images" / "broken.png").write_bytes(b"\x89PNG garbage")
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="medsamkit"):
        report = segment_images(box_pipeline(), MaskFolder(tmp_path / "data", require_masks=False), out_dir=out, progress=False)
    assert set(report.errors) == {"broken"}
    assert "broken" in caplog.text
    _, rows = read_results(out / "results.csv")
    by_stem = {r["stem"]: r for r in rows}
    assert by_stem["broken"]["error"] != "" and by_stem["broken"]["area_px"] == ""
    assert len(list((out / "masks").glob("*.png"))) == 3

    image, _ = make_blob_image(SIZE, seed=4)
    write_image(tmp_path / "data" / "images" / "broken.png", image)
    seg = FakeSegmenter(mode="box")
    report = segment_images(box_pipeline(seg), MaskFolder(tmp_path / "data", require_masks=False), out_dir=out, progress=False)
    assert report.errors == {} and seg.encode_calls == 1
    np.testing.assert_array_equal(read_png_mask(out / "masks" / "broken.png"), expected_box_mask())


def test_segment_uses_masks_as_targets_when_present(tmp_path):
    data = tmp_path / "data"
    refs = {}
    for i, stem in enumerate(("p", "q")):
        image, mask = make_blob_image(SIZE, seed=20 + i)
        write_image(data / "images" / f"{stem}.png", image)
        write_mask(data / "masks" / f"{stem}.png", mask)
        refs[stem] = mask
    out = tmp_path / "out"
    report = segment_images(
        Pipeline(OracleBoxPrompter(), FakeSegmenter(mode="box")), MaskFolder(data), out_dir=out, progress=False
    )
    assert report.errors == {}
    for stem, ref in refs.items():
        ys, xs = np.nonzero(ref)
        rect = np.zeros_like(ref)
        rect[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        np.testing.assert_array_equal(read_png_mask(out / "masks" / f"{stem}.png"), rect)


def test_segment_refuses_another_pipeline_in_the_same_out_dir(tmp_path):
    make_image_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data", require_masks=False)
    out = tmp_path / "out"
    segment_images(box_pipeline(), folder, out_dir=out, progress=False)
    other = box_pipeline().replace(threshold=0.7)
    with pytest.raises(ValueError, match="out_dir"):
        segment_images(other, folder, out_dir=out, progress=False)


def test_resumed_segment_run_does_not_exceed_the_overlay_count(tmp_path):
    make_image_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data", require_masks=False)
    out = tmp_path / "out"
    segment_images(box_pipeline(), folder[:2], out_dir=out, n_overlays=2, progress=False)
    segment_images(box_pipeline(), folder, out_dir=out, n_overlays=2, progress=False)
    assert len(list((out / "overlays").glob("*.png"))) == 2


# -- issue 10 ---------------------------------------------------------------------------------


def test_segment_out_dir_inside_the_input_is_refused(tmp_path):
    make_image_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data", require_masks=False)
    for out in (tmp_path / "data", tmp_path / "data" / "images", tmp_path / "data" / "images" / "pred"):
        with pytest.raises(ValueError, match="input folder"):
            segment_images(box_pipeline(), folder, out_dir=out, progress=False)
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == sorted(f"{s}.png" for s in STEMS)


def test_segment_duplicate_or_unsafe_stems_are_refused(tmp_path):
    from medsamkit.data import Sample

    make_image_folder(tmp_path / "data")
    images = tmp_path / "data" / "images"
    twice = [Sample("case", images / "img_a.png"), Sample("case", images / "img_b.png")]
    with pytest.raises(ValueError, match="duplicate stem 'case'"):
        segment_images(box_pipeline(), twice, out_dir=tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="stem"):
        segment_images(box_pipeline(), [Sample("../up", images / "img_a.png")], out_dir=tmp_path / "out2", progress=False)
    assert not (tmp_path / "up.png").exists()


def test_segment_redoes_an_image_whose_content_changed(tmp_path):
    make_image_folder(tmp_path / "data")
    out = tmp_path / "out"
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter(mode="box"))
    _, mask = make_blob_image(SIZE, seed=1)
    write_mask(tmp_path / "data" / "masks" / "img_a.png", mask)
    folder = MaskFolder(tmp_path / "data", require_masks=False)
    segment_images(pipe, folder, out_dir=out, progress=False)
    first = read_png_mask(out / "masks" / "img_a.png")
    _, other = make_blob_image(SIZE, seed=9)
    write_mask(tmp_path / "data" / "masks" / "img_a.png", other)
    seg = FakeSegmenter(mode="box")
    segment_images(
        Pipeline(OracleBoxPrompter(), seg), MaskFolder(tmp_path / "data", require_masks=False), out_dir=out, progress=False
    )
    assert seg.encode_calls == 1
    again = read_png_mask(out / "masks" / "img_a.png")
    ys, xs = np.nonzero(other)
    assert again[ys.min(), xs.min()] and not np.array_equal(again, first)

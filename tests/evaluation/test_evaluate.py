"""Tests for ``medsamkit.evaluation.evaluate``: tables, pictures, limit, resume, errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit import OracleBoxPrompter, Pipeline
from medsamkit.data import MaskFolder, write_image, write_mask
from medsamkit.evaluation import CSV_COLUMNS, evaluate
from medsamkit.testing import FakeSegmenter, make_blob_image

# Created in this (unsorted) order on purpose: results must follow sorted stem order.
STEMS = ("delta", "alpha", "charlie", "bravo")
SORTED = tuple(sorted(STEMS))
SIZE = (48, 64)
HEADER = "stem,dice,iou,precision,recall,f1,hd95,seconds,n_prompts,note,error"


def make_folder(root: Path, stems=STEMS, *, size=SIZE) -> dict[str, np.ndarray]:
    """``root/images`` + ``root/masks`` with blob images; returns the reference masks by stem."""
    refs = {}
    for i, stem in enumerate(stems):
        image, mask = make_blob_image(size, seed=10 + i, noise=0.12)
        write_image(root / "images" / f"{stem}.png", image)
        write_mask(root / "masks" / f"{stem}.png", mask)
        refs[stem] = mask
    return refs


def fake_pipeline(**kwargs) -> Pipeline:
    return Pipeline(OracleBoxPrompter(), FakeSegmenter(**kwargs))


def read_png_mask(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"unreadable PNG {path}"
    assert array.ndim == 2
    return array > 0


def numpy_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = pred.sum() + ref.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, ref).sum() / total)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    text = path.read_text()
    header = text.splitlines()[0]
    rows = list(csv.DictReader(text.splitlines()))
    return header.split(","), rows


def tmp_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.name.startswith(".") and p.name.endswith(".tmp"))


class InterruptingPipeline:
    """Delegates to a pipeline but raises KeyboardInterrupt on call number ``at``."""

    def __init__(self, pipeline: Pipeline, at: int) -> None:
        self.pipeline = pipeline
        self.at = at
        self.calls = 0

    @property
    def config(self):
        return self.pipeline.config

    def save(self, directory):
        return self.pipeline.save(directory)

    def __call__(self, image, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.pipeline(image, **kwargs)


# -- outputs of a complete run ---------------------------------------------------------------


def test_evaluate_writes_csv_matching_saved_masks(tmp_path):
    refs = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    report = evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)

    assert out.joinpath("metrics.csv").read_text().splitlines()[0] == HEADER
    header, rows = read_csv(out / "metrics.csv")
    assert tuple(header) == CSV_COLUMNS
    assert [r["stem"] for r in rows] == list(SORTED)
    assert [r["stem"] for r in report.rows] == list(SORTED)
    assert report.n_errors == 0 and report.n_evaluated == len(STEMS)

    dices = []
    for row in rows:
        pred = read_png_mask(out / "masks" / f"{row['stem']}.png")
        ref = refs[row["stem"]]
        assert pred.shape == ref.shape
        expected = numpy_dice(pred, ref)
        dices.append(expected)
        assert float(row["dice"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)
        inter = np.logical_and(pred, ref).sum()
        assert float(row["iou"]) == pytest.approx(inter / np.logical_or(pred, ref).sum(), rel=1e-5)
        assert float(row["precision"]) == pytest.approx(inter / pred.sum(), rel=1e-5)
        assert float(row["recall"]) == pytest.approx(inter / ref.sum(), rel=1e-5)
        assert float(row["hd95"]) >= 0
        assert float(row["seconds"]) >= 0
        assert row["n_prompts"] == "1"
        assert row["note"] == "" and row["error"] == ""
        assert (out / "records" / f"{row['stem']}.json").is_file()
    # The fake segmenter is good but not perfect on noisy blobs: the check is not vacuous.
    assert 0.5 < min(dices) and min(dices) < 1.0
    assert report.mean("dice") == pytest.approx(np.mean(dices), rel=1e-5)


def test_summary_json_is_consistent_with_csv(tmp_path):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    report = evaluate(fake_pipeline(), tmp_path / "data", out_dir=out, progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(report.summary))
    _, rows = read_csv(out / "metrics.csv")
    for metric in ("dice", "iou", "precision", "recall", "f1", "hd95", "seconds"):
        values = np.array([float(r[metric]) for r in rows if r[metric] != ""])
        stats = summary["metrics"][metric]
        assert set(stats) == {"mean", "median", "std", "n"}
        assert stats["n"] == len(values) == len(STEMS)
        tol = dict(rel=1e-4, abs=1e-4)  # the CSV keeps 6 significant digits
        assert stats["mean"] == pytest.approx(values.mean(), **tol)
        assert stats["median"] == pytest.approx(np.median(values), **tol)
        assert stats["std"] == pytest.approx(values.std(ddof=0), **tol)
    assert summary["counts"] == {"images": 4, "evaluated": 4, "errors": 0, "no_prompt": 0, "missing_masks": 0}
    assert "dice" in str(report)


@pytest.mark.real_plots
def test_pictures_and_pipeline_json(tmp_path):
    refs = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    pipeline = fake_pipeline()
    evaluate(pipeline, MaskFolder(tmp_path / "data"), out_dir=out, n_overlays=2, progress=False)

    box = cv2.imread(str(out / "boxplot.png"), cv2.IMREAD_UNCHANGED)
    assert box is not None and box.ndim == 3 and min(box.shape[:2]) > 50

    # n_overlays=2: the worst and the best image by Dice.
    dice = {s: numpy_dice(read_png_mask(out / "masks" / f"{s}.png"), refs[s]) for s in STEMS}
    assert len(set(dice.values())) == len(dice), "tie: pick other seeds"
    expected = {min(dice, key=dice.get), max(dice, key=dice.get)}
    overlays = {p.stem for p in (out / "overlays").glob("*.png")}
    assert overlays == expected
    for stem in overlays:
        picture = cv2.imread(str(out / "overlays" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert picture is not None and picture.ndim == 3 and picture.shape[2] == 3

    rebuilt = Pipeline.load(out)
    assert rebuilt.config == pipeline.config
    assert Pipeline.load(out / "pipeline.json").config == pipeline.config
    assert isinstance(rebuilt.segmenter, FakeSegmenter)


def test_default_overlays_cover_all_images_of_a_small_set(tmp_path):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
    assert {p.stem for p in (out / "overlays").glob("*.png")} == set(STEMS)


def test_limit_evaluates_first_n_in_sorted_order(tmp_path):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    seg = FakeSegmenter()
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), MaskFolder(tmp_path / "data"), out_dir=out, limit=2, progress=False)
    _, rows = read_csv(out / "metrics.csv")
    assert [r["stem"] for r in rows] == list(SORTED[:2]) == ["alpha", "bravo"]
    assert [r["stem"] for r in report.rows] == ["alpha", "bravo"]
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == ["alpha", "bravo"]
    assert sorted(p.stem for p in (out / "records").glob("*.json")) == ["alpha", "bravo"]
    assert seg.encode_calls == 2
    assert json.loads((out / "summary.json").read_text())["counts"]["images"] == 2


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limit_is_refused(tmp_path, limit):
    make_folder(tmp_path / "data", stems=("a",))
    with pytest.raises(ValueError, match="limit"):
        evaluate(fake_pipeline(), tmp_path / "data", out_dir=tmp_path / "out", limit=limit, progress=False)


# -- resume ------------------------------------------------------------------------------------


def test_resume_does_not_recompute_finished_images(tmp_path):
    make_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    out = tmp_path / "out"
    evaluate(fake_pipeline(), folder, out_dir=out, limit=2, progress=False)
    first = {s: (out / "records" / f"{s}.json").stat().st_mtime_ns for s in SORTED[:2]}
    first_masks = {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in SORTED[:2]}

    seg = FakeSegmenter()
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), folder, out_dir=out, progress=False)
    assert seg.encode_calls == len(STEMS) - 2
    assert report.n_evaluated == len(STEMS) - 2
    assert {s: (out / "records" / f"{s}.json").stat().st_mtime_ns for s in SORTED[:2]} == first
    assert {s: (out / "masks" / f"{s}.png").stat().st_mtime_ns for s in SORTED[:2]} == first_masks
    _, rows = read_csv(out / "metrics.csv")
    assert [r["stem"] for r in rows] == list(SORTED)
    assert all(r["dice"] != "" for r in rows)
    assert json.loads((out / "summary.json").read_text())["metrics"]["dice"]["n"] == len(STEMS)

    # A third run has nothing left to do.
    seg3 = FakeSegmenter()
    report3 = evaluate(Pipeline(OracleBoxPrompter(), seg3), folder, out_dir=out, progress=False)
    assert seg3.encode_calls == 0 and report3.n_evaluated == 0
    assert [r["stem"] for r in report3.rows] == list(SORTED)


def test_interrupted_run_keeps_finished_images_and_resumes(tmp_path):
    refs = make_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    out = tmp_path / "out"
    wrapper = InterruptingPipeline(fake_pipeline(), at=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate(wrapper, folder, out_dir=out, progress=False)
    assert wrapper.calls == 3
    assert json.loads((out / "summary.json").read_text())["complete"] is False  # not taken for a finished run
    assert sorted(p.stem for p in (out / "records").glob("*.json")) == list(SORTED[:2])
    assert sorted(p.stem for p in (out / "masks").glob("*.png")) == list(SORTED[:2])
    header, rows = read_csv(out / "metrics.csv")
    assert tuple(header) == CSV_COLUMNS
    assert [r["stem"] for r in rows] == list(SORTED[:2])
    assert tmp_files(out) == []
    mtimes = {s: (out / "records" / f"{s}.json").stat().st_mtime_ns for s in SORTED[:2]}

    seg = FakeSegmenter()
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), folder, out_dir=out, progress=False)
    assert seg.encode_calls == len(STEMS) - 2
    assert report.n_evaluated == len(STEMS) - 2
    assert {s: (out / "records" / f"{s}.json").stat().st_mtime_ns for s in SORTED[:2]} == mtimes
    assert json.loads((out / "summary.json").read_text())["complete"] is True
    _, rows = read_csv(out / "metrics.csv")
    assert [r["stem"] for r in rows] == list(SORTED)
    for row in rows:
        pred = read_png_mask(out / "masks" / f"{row['stem']}.png")
        assert float(row["dice"]) == pytest.approx(numpy_dice(pred, refs[row["stem"]]), rel=1e-5)
    assert tmp_files(out) == []


def test_different_config_in_same_out_dir_is_refused_unless_overwrite(tmp_path):
    make_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    out = tmp_path / "out"
    evaluate(fake_pipeline(mode="intensity"), folder, out_dir=out, progress=False)
    before = (out / "metrics.csv").read_text()

    with pytest.raises(ValueError, match=re.escape(str(out)) + r".*overwrite=True \(--overwrite\)"):
        evaluate(fake_pipeline(mode="box"), folder, out_dir=out, progress=False)
    with pytest.raises(ValueError, match=re.escape(str(out))):
        evaluate(fake_pipeline(mode="intensity"), folder, out_dir=out, spacing=(0.5, 0.5), progress=False)
    assert (out / "metrics.csv").read_text() == before  # nothing touched
    assert json.loads((out / "pipeline.json").read_text())["segmenter"]["params"]["mode"] == "intensity"

    seg = FakeSegmenter(mode="box")
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), folder, out_dir=out, overwrite=True, progress=False)
    assert seg.encode_calls == len(STEMS) and report.n_evaluated == len(STEMS)
    assert json.loads((out / "run.json").read_text())["pipeline"]["segmenter"]["params"]["mode"] == "box"
    assert Pipeline.load(out).segmenter.mode == "box"
    # Box mode fills the whole oracle box: each mask is the reference's bounding rectangle.
    for stem in STEMS:
        ref = read_png_mask(tmp_path / "data" / "masks" / f"{stem}.png")
        ys, xs = np.nonzero(ref)
        rect = np.zeros_like(ref)
        rect[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        np.testing.assert_array_equal(read_png_mask(out / "masks" / f"{stem}.png"), rect)
    assert (out / "metrics.csv").read_text() != before


# -- bad files -----------------------------------------------------------------------------------


def test_bad_files_are_reported_and_retried_on_resume(tmp_path, caplog):
    data = tmp_path / "data"
    refs = make_folder(data)
    rng = np.random.default_rng(0)
    (data / "images" / "corrupt.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    write_mask(data / "masks" / "corrupt.png", refs["alpha"])
    image, _ = make_blob_image(SIZE, seed=99)
    write_image(data / "images" / "wrongsize.png", image)
    write_mask(data / "masks" / "wrongsize.png", np.ones((SIZE[0] - 8, SIZE[1]), dtype=bool))
    folder = MaskFolder(data)
    out = tmp_path / "out"

    with caplog.at_level("WARNING", logger="medsamkit"):
        report = evaluate(fake_pipeline(), folder, out_dir=out, progress=False)
    err = caplog.text
    caplog.clear()
    assert report.n_errors == 2
    assert set(report.errors) == {"corrupt", "wrongsize"}
    assert "corrupt" in err and "wrongsize" in err
    _, rows = read_csv(out / "metrics.csv")
    assert [r["stem"] for r in rows] == sorted([*STEMS, "corrupt", "wrongsize"])
    by_stem = {r["stem"]: r for r in rows}
    for stem in ("corrupt", "wrongsize"):
        assert by_stem[stem]["error"] != "" and by_stem[stem]["dice"] == ""
        assert not (out / "records" / f"{stem}.json").exists()
    assert "size" in by_stem["wrongsize"]["error"] or "shape" in by_stem["wrongsize"]["error"]
    for stem in STEMS:
        assert by_stem[stem]["error"] == "" and by_stem[stem]["dice"] != ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 6, "evaluated": 4, "errors": 2, "no_prompt": 0, "missing_masks": 0}
    assert set(summary["errors"]) == {"corrupt", "wrongsize"}
    assert summary["metrics"]["dice"]["n"] == 4
    assert "errors: 2" in str(report)

    # Fix the files: the next run retries exactly the two failed images.
    image, mask = make_blob_image(SIZE, seed=5)
    write_image(data / "images" / "corrupt.png", image)
    write_mask(data / "masks" / "corrupt.png", mask)
    write_mask(data / "masks" / "wrongsize.png", make_blob_image(SIZE, seed=99)[1])
    seg = FakeSegmenter()
    with caplog.at_level("WARNING", logger="medsamkit"):
        report2 = evaluate(Pipeline(OracleBoxPrompter(), seg), MaskFolder(data), out_dir=out, progress=False)
    assert caplog.text == ""
    assert report2.n_errors == 0 and report2.n_evaluated == 2 and seg.encode_calls == 2
    _, rows = read_csv(out / "metrics.csv")
    assert all(r["error"] == "" and r["dice"] != "" for r in rows)
    assert len(rows) == 6
    pred = read_png_mask(out / "masks" / "corrupt.png")
    assert float({r["stem"]: r for r in rows}["corrupt"]["dice"]) == pytest.approx(numpy_dice(pred, mask), rel=1e-5)
    assert json.loads((out / "summary.json").read_text())["counts"]["errors"] == 0


def test_all_images_failing_still_writes_tables(tmp_path, caplog):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "x.png").write_bytes(b"not a png at all")
    write_mask(data / "masks" / "x.png", np.ones((8, 8), dtype=bool))
    with caplog.at_level("WARNING", logger="medsamkit"):
        report = evaluate(fake_pipeline(), MaskFolder(data), out_dir=tmp_path / "out", progress=False)
    assert report.n_errors == 1 and report.mean("dice") is None
    assert "x: " in caplog.text
    _, rows = read_csv(tmp_path / "out" / "metrics.csv")
    assert len(rows) == 1 and rows[0]["error"] != ""
    assert not (tmp_path / "out" / "boxplot.png").exists()
    assert "-" in str(report)


# -- empty targets -----------------------------------------------------------------------------------


def test_empty_target_with_oracle_prompter_gives_no_prompt(tmp_path):
    data = tmp_path / "data"
    refs = make_folder(data, stems=("full",))
    image, _ = make_blob_image(SIZE, seed=3)
    write_image(data / "images" / "empty.png", image)
    write_mask(data / "masks" / "empty.png", np.zeros(SIZE, dtype=bool))
    out = tmp_path / "out"
    seg = FakeSegmenter()
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), MaskFolder(data), out_dir=out, progress=False)

    assert seg.encode_calls == 1  # the empty image never reaches the segmenter
    _, rows = read_csv(out / "metrics.csv")
    by_stem = {r["stem"]: r for r in rows}
    empty = by_stem["empty"]
    assert empty["note"] == "no prompt"
    assert empty["n_prompts"] == "0"
    assert empty["error"] == ""
    pred = read_png_mask(out / "masks" / "empty.png")
    assert not pred.any()
    assert float(empty["dice"]) == 1.0  # both empty
    assert float(empty["iou"]) == 1.0
    assert float(empty["hd95"]) == 0.0
    assert by_stem["full"]["note"] == ""
    assert float(by_stem["full"]["dice"]) == pytest.approx(
        numpy_dice(read_png_mask(out / "masks" / "full.png"), refs["full"]), rel=1e-5
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["no_prompt"] == 1 and summary["counts"]["errors"] == 0
    assert report.n_errors == 0
    assert (out / "overlays" / "empty.png").is_file()


# -- issue 10: the output folder never touches the data; resume is keyed by content; one run at a time ----


@pytest.mark.parametrize("where", ["root", "masks", "inside-masks", "images"])
def test_out_dir_overlapping_the_data_is_refused_and_masks_stay(tmp_path, where):
    data = tmp_path / "data"
    make_folder(data)
    out = {"root": data, "masks": data / "masks", "inside-masks": data / "masks" / "pred", "images": data / "images"}[where]
    before = {p.name: p.read_bytes() for p in (data / "masks").iterdir()}
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="input folder"):
            evaluate(fake_pipeline(mode="box"), MaskFolder(data), out_dir=out, overwrite=overwrite, progress=False)
    assert {p.name: p.read_bytes() for p in (data / "masks").iterdir()} == before
    assert not (out / "records").exists() and not (data / "masks" / "pred").exists()


def test_overwrite_deletes_only_what_medsamkit_wrote(tmp_path):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
    evaluate(fake_pipeline(mode="box"), MaskFolder(tmp_path / "data"), out_dir=out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "records").is_dir()

    # A folder medsamkit did not write, with a masks/ of its own: refused, nothing deleted.
    foreign = tmp_path / "foreign"
    write_mask(foreign / "masks" / "alpha.png", np.ones(SIZE, dtype=bool))
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="did not write"):
            evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=foreign, overwrite=overwrite, progress=False)
    assert read_png_mask(foreign / "masks" / "alpha.png").all()


def test_resume_recomputes_images_whose_content_changed(tmp_path):
    data = tmp_path / "data"
    make_folder(data)
    out = tmp_path / "out"
    evaluate(fake_pipeline(), MaskFolder(data), out_dir=out, progress=False)
    # Same stems, new content: an edited mask and a replaced image.
    image, mask = make_blob_image(SIZE, seed=77, noise=0.12)
    write_mask(data / "masks" / "alpha.png", np.zeros(SIZE, dtype=bool))
    write_image(data / "images" / "bravo.png", image)
    write_mask(data / "masks" / "bravo.png", mask)

    seg = FakeSegmenter()
    report = evaluate(Pipeline(OracleBoxPrompter(), seg), MaskFolder(data), out_dir=out, progress=False)
    assert report.n_evaluated == 2  # alpha and bravo; the empty mask gives no prompt, so one encoding
    assert seg.encode_calls == 1
    by_stem = {r["stem"]: r for r in report.rows}
    for stem in ("alpha", "bravo"):
        pred = read_png_mask(out / "masks" / f"{stem}.png")
        ref = read_png_mask(data / "masks" / f"{stem}.png")
        assert by_stem[stem]["dice"] == pytest.approx(numpy_dice(pred, ref), rel=1e-5)
    assert by_stem["alpha"]["note"] == "no prompt"  # the edited (empty) mask is what was scored


def test_damaged_record_is_redone_and_damaged_run_json_is_named(tmp_path, caplog):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
    (out / "records" / "alpha.json").write_text('{"row": {"stem"')
    seg = FakeSegmenter()
    with caplog.at_level("WARNING", logger="medsamkit"):
        report = evaluate(Pipeline(OracleBoxPrompter(), seg), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
    assert seg.encode_calls == 1 and report.n_errors == 0
    assert "alpha.json" in caplog.text
    (out / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(str(out / "run.json"))):
        evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)


def test_unsafe_or_duplicate_stems_are_refused(tmp_path):
    from medsamkit.data import Sample

    make_folder(tmp_path / "data")
    folder = MaskFolder(tmp_path / "data")
    escaping = [Sample("../escaped", folder[0].image_path, folder[0].mask_path)]
    with pytest.raises(ValueError, match="stem"):
        evaluate(fake_pipeline(), escaping, out_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "escaped.json").exists() and not (tmp_path / "out" / "escaped.png").exists()
    twice = [folder[0], Sample(folder[0].stem, folder[1].image_path, folder[1].mask_path)]
    with pytest.raises(ValueError, match="duplicate"):
        evaluate(fake_pipeline(), twice, out_dir=tmp_path / "out2", progress=False)


def test_second_run_into_a_locked_out_dir_fails_fast_and_a_stale_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from medsamkit._outdir import LOCK_FILE, OutDirLockedError

    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from medsamkit._outdir import out_dir_lock\n"
                f"with out_dir_lock({str(out)!r}):\n    print('locked', flush=True); sys.stdin.read()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutDirLockedError, match=str(holder.pid)):
            evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
        assert not (out / "records").exists()
    finally:
        holder.communicate("")
    # A lock file left by a process that is gone (kill -9) does not block the next run.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    (out / LOCK_FILE).write_text(dead.stdout)
    report = evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=out, progress=False)
    assert report.n_evaluated == len(STEMS)
    assert not (out / LOCK_FILE).exists()


def test_images_without_a_mask_are_refused_unless_allowed(tmp_path):
    data = tmp_path / "data"
    make_folder(data)
    image, _ = make_blob_image(SIZE, seed=50)
    write_image(data / "images" / "lonely.png", image)
    with pytest.raises(ValueError, match="lonely"):
        evaluate(fake_pipeline(), MaskFolder(data), out_dir=tmp_path / "out", progress=False)
    report = evaluate(fake_pipeline(), MaskFolder(data), out_dir=tmp_path / "out", allow_missing_masks=True, progress=False)
    assert report.n_evaluated == len(STEMS)
    assert report.summary["counts"]["missing_masks"] == 1


def test_report_repr_dataframe_and_html(tmp_path):
    make_folder(tmp_path / "data")
    report = evaluate(fake_pipeline(), MaskFolder(tmp_path / "data"), out_dir=tmp_path / "out", progress=False)
    text = repr(report)
    assert text.startswith("EvaluationReport(out_dir=") and f"dice_mean={report.mean('dice'):.4f}" in text
    assert "images=4" in text and len(text) < 300
    frame = report.to_dataframe()
    assert list(frame.index) == list(SORTED) and list(frame.columns) == list(CSV_COLUMNS[1:])
    _, rows = read_csv(tmp_path / "out" / "metrics.csv")
    np.testing.assert_allclose(frame["dice"].to_numpy(float), [float(r["dice"]) for r in rows], rtol=1e-5)
    page = report._repr_html_()
    assert page.count("<tr>") == 1 + len(report.summary["metrics"]) and "4 images" in page

"""Tests for the ``medsamkit`` command line (in-process via ``main``, plus real end-to-end runs).

``shared_data`` (``../shared/data``) comes from ``tests/conftest.py``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit import Pipeline
from medsamkit.cli import main
from medsamkit.data import write_image, write_mask
from medsamkit.testing import make_blob_image

SIZE = (48, 64)
STEMS = ("case_03", "case_01", "case_02", "case_00")
FAKE = ["--segmenter", "fake", "--no-progress"]


def make_folder(root: Path, stems=STEMS, *, masks: bool = True) -> dict[str, np.ndarray]:
    refs = {}
    for i, stem in enumerate(stems):
        image, mask = make_blob_image(SIZE, seed=30 + i)
        write_image(root / "images" / f"{stem}.png", image)
        if masks:
            write_mask(root / "masks" / f"{stem}.png", mask)
        refs[stem] = mask
    return refs


def csv_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def read_png_mask(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert array is not None, f"unreadable PNG {path}"
    return array > 0


# -- evaluate -------------------------------------------------------------------------------------


def test_evaluate_with_limit(tmp_path, capsys):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(out), "--limit", "2", *FAKE])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [r["stem"] for r in csv_rows(out / "metrics.csv")] == ["case_00", "case_01"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["images"] == 2 and summary["metrics"]["dice"]["n"] == 2
    for name in ("pipeline.json", "run.json", "boxplot.png", "masks/case_00.png", "masks/case_01.png"):
        assert (out / name).is_file(), name
    assert not (out / "masks" / "case_02.png").exists()
    assert "dice" in captured.out and str(out) in captured.out
    config = json.loads((out / "pipeline.json").read_text())
    assert config["segmenter"]["name"] == "fake" and config["prompter"]["name"] == "oracle-box"


def test_evaluate_with_corrupt_image_exits_1_and_names_it(tmp_path, capsys):
    data = tmp_path / "data"
    make_folder(data)
    (data / "images" / "case_bad.png").write_bytes(os.urandom(256))
    write_mask(data / "masks" / "case_bad.png", np.ones(SIZE, dtype=bool))
    out = tmp_path / "out"
    code = main(["evaluate", str(data), "--out", str(out), *FAKE])
    captured = capsys.readouterr()
    assert code == 1
    assert "case_bad" in captured.err
    rows = {r["stem"]: r for r in csv_rows(out / "metrics.csv")}
    assert rows["case_bad"]["error"] != ""
    assert all(rows[s]["error"] == "" for s in STEMS)


def test_evaluate_missing_data_dir_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    code = main(["evaluate", str(missing), "--out", str(tmp_path / "out"), *FAKE])
    err = capsys.readouterr().err
    assert code == 2
    assert str(missing) in err
    assert not (tmp_path / "out").exists()


def test_mean_mask_points_without_state_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--prompter", "mean-mask-points", *FAKE])
    err = capsys.readouterr().err
    assert code == 2
    assert "--prompter-state" in err and "--fit-masks" in err


def test_precision_option_reaches_the_segmenter_and_its_config(tmp_path, capsys):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(out), "--limit", "1", "--precision", "float32",
                 "--no-progress", "--no-cache"])
    assert code == 0, capsys.readouterr().err
    segmenter = json.loads((out / "pipeline.json").read_text())["segmenter"]
    assert segmenter["name"] == "litemedsam" and segmenter["params"]["precision"] == "float32"
    reloaded = Pipeline.load(out).segmenter
    assert reloaded.precision == "float32" and reloaded.encoder_backend == "float32"
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "o2"), "--precision", "fast", *FAKE])
    assert code == 2 and "--precision" in capsys.readouterr().err


def test_fixed_prompter_without_box_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--prompter", "fixed", *FAKE])
    err = capsys.readouterr().err
    assert code == 2
    assert "--box" in err


def test_argparse_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path), "--out", str(tmp_path / "o"), "--prompter", "nonsense"])
    assert info.value.code == 2
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path)])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_bad_limit_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--limit", "0", *FAKE])
    assert code == 2
    assert "limit" in capsys.readouterr().err


def test_different_config_in_same_out_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(out), *FAKE]) == 0
    capsys.readouterr()
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(out), "--threshold", "0.95", *FAKE])
    assert code == 2
    assert str(out) in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(out), "--threshold", "0.95", "--overwrite", *FAKE]) == 0
    assert json.loads((out / "pipeline.json").read_text())["threshold"] == 0.95


def test_pipeline_json_rebuilds_and_evaluates(tmp_path, capsys):
    make_folder(tmp_path / "data")
    first = tmp_path / "first"
    args = ["--prompter", "perturbed-box", "--margin", "3", "--threshold", "0.4", "--keep-largest", "1", "--fill-holes"]
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(first), *args, *FAKE]) == 0
    second = tmp_path / "second"
    # Other pipeline options are ignored when --pipeline is given.
    code = main(
        ["evaluate", str(tmp_path / "data"), "--out", str(second), "--pipeline", str(first / "pipeline.json"), "--threshold", "0.9", *FAKE]
    )
    assert code == 0, capsys.readouterr().err
    saved = json.loads((first / "pipeline.json").read_text())
    assert saved["prompter"]["params"]["margin"] == 3.0
    assert saved["threshold"] == 0.4
    assert [p["name"] for p in saved["postprocess"]] == ["keep-largest", "fill-holes"]
    assert json.loads((second / "pipeline.json").read_text()) == saved

    def without_time(rows):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]

    assert without_time(csv_rows(second / "metrics.csv")) == without_time(csv_rows(first / "metrics.csv"))
    # A folder works as well as the file.
    third = tmp_path / "third"
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(third), "--pipeline", str(first), *FAKE]) == 0
    assert json.loads((third / "pipeline.json").read_text()) == saved


def test_missing_pipeline_json_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--pipeline", str(tmp_path / "nothing"), *FAKE])
    assert code == 2
    assert "nothing" in capsys.readouterr().err


def test_mean_mask_points_fit_masks(tmp_path, capsys):
    make_folder(tmp_path / "train", stems=("t0", "t1", "t2"))
    make_folder(tmp_path / "test", stems=("s0", "s1"))
    out = tmp_path / "out"
    code = main(
        ["evaluate", str(tmp_path / "test"), "--out", str(out), "--prompter", "mean-mask-points", "--fit-masks", str(tmp_path / "train"), *FAKE]
    )
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "pipeline.json").read_text())
    assert config["prompter"]["name"] == "mean-mask-points"
    assert (out / config["prompter"]["params"]["state"]).is_file()
    rows = csv_rows(out / "metrics.csv")
    assert [r["stem"] for r in rows] == ["s0", "s1"]
    assert all(r["error"] == "" and int(r["n_prompts"]) >= 1 for r in rows)
    # The saved state rebuilds the same prompter, from the CLI and from Python.
    assert main(["evaluate", str(tmp_path / "test"), "--out", str(tmp_path / "again"), "--pipeline", str(out), *FAKE]) == 0
    assert csv_rows(tmp_path / "again" / "metrics.csv")[0]["dice"] == rows[0]["dice"]
    assert main(
        ["evaluate", str(tmp_path / "test"), "--out", str(tmp_path / "state"), "--prompter", "mean-mask-points",
         "--prompter-state", str(out / config["prompter"]["params"]["state"]), *FAKE]
    ) == 0
    assert csv_rows(tmp_path / "state" / "metrics.csv")[1]["dice"] == rows[1]["dice"]
    assert Pipeline.load(out).prompter.requires_target is False


# -- segment -------------------------------------------------------------------------------------------


def test_segment_one_file_with_fixed_box(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("only",), masks=False)
    image_path = tmp_path / "data" / "images" / "only.png"
    out = tmp_path / "out"
    code = main(["segment", str(image_path), "--out", str(out), "--prompter", "fixed", "--box", "10", "5", "40", "30", *FAKE])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    mask = read_png_mask(out / "masks" / "only.png")
    assert mask.shape == SIZE and mask.any()
    inside = np.zeros(SIZE, dtype=bool)
    inside[5:31, 10:41] = True
    assert not (mask & ~inside).any()  # nothing outside the box
    rows = csv_rows(out / "results.csv")
    assert [r["stem"] for r in rows] == ["only"]
    assert int(rows[0]["area_px"]) == int(mask.sum())
    assert "segmented 1 image" in captured.out


def test_segment_two_boxes(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("a", "b"), masks=False)
    out = tmp_path / "out"
    code = main(
        ["segment", str(tmp_path / "data"), "--out", str(out), "--prompter", "fixed",
         "--box", "0", "0", "10", "10", "--box", "20", "20", "30", "30", *FAKE]
    )
    assert code == 0, capsys.readouterr().err
    rows = csv_rows(out / "results.csv")
    assert [r["stem"] for r in rows] == ["a", "b"] and all(r["n_prompts"] == "2" for r in rows)


def test_segment_oracle_without_masks_exits_2_suggesting_reference_masks(tmp_path, capsys):
    refs = make_folder(tmp_path / "data", stems=("x", "y"))
    flat = tmp_path / "flat"
    flat.mkdir()
    for stem in ("x", "y"):
        (flat / f"{stem}.png").write_bytes((tmp_path / "data" / "images" / f"{stem}.png").read_bytes())
    out = tmp_path / "out"
    code = main(["segment", str(flat), "--out", str(out), "--prompter", "oracle-box", *FAKE])
    assert code == 2
    assert "--reference-masks" in capsys.readouterr().err
    assert not (out / "masks").exists()

    code = main(["segment", str(flat), "--out", str(out), "--prompter", "oracle-box", "--reference-masks", str(tmp_path / "data" / "masks"), *FAKE])
    assert code == 0, capsys.readouterr().err
    for stem, ref in refs.items():
        mask = read_png_mask(out / "masks" / f"{stem}.png")
        ys, xs = np.nonzero(ref)
        outside = np.ones_like(ref)
        outside[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = False
        assert mask.any() and not (mask & outside).any()


def test_segment_folder_with_images_subfolder_without_masks_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("x",), masks=False)
    code = main(["segment", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE])
    assert code == 2
    assert "--reference-masks" in capsys.readouterr().err


def test_segment_missing_input_exits_2(tmp_path, capsys):
    code = main(["segment", str(tmp_path / "nope.png"), "--out", str(tmp_path / "out"), "--prompter", "fixed", "--box", "0", "0", "5", "5", *FAKE])
    assert code == 2
    assert "nope.png" in capsys.readouterr().err


def test_segment_corrupt_image_exits_1(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("good",), masks=False)
    (tmp_path / "data" / "images" / "zz_bad.png").write_bytes(b"garbage")
    code = main(["segment", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--prompter", "fixed", "--box", "0", "0", "5", "5", *FAKE])
    assert code == 1
    assert "zz_bad" in capsys.readouterr().err
    assert (tmp_path / "out" / "masks" / "good.png").is_file()


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    import medsamkit.evaluation as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    make_folder(tmp_path / "data", stems=("a",))
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE]) == 130
    assert "resume" in capsys.readouterr().err


def test_fit_masks_with_corrupt_training_mask_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "train", stems=("t0", "t1"))
    (tmp_path / "train" / "masks" / "t1.png").write_bytes(b"not a mask")
    make_folder(tmp_path / "test", stems=("s0",))
    code = main(
        ["evaluate", str(tmp_path / "test"), "--out", str(tmp_path / "out"), "--prompter", "mean-mask-points",
         "--fit-masks", str(tmp_path / "train"), *FAKE]
    )
    assert code == 2
    assert "t1.png" in capsys.readouterr().err


def test_demo_set_with_only_failures_prints_table_and_exits_1(tmp_path, capsys, monkeypatch):
    import medsamkit.segmenters
    from medsamkit.testing import FakeSegmenter

    monkeypatch.setattr(medsamkit.segmenters, "LiteMedSAM", FakeSegmenter)  # no weights needed here
    data = tmp_path / "shared"
    make_folder(data / "cxr-shenzhen", stems=("ok0", "ok1"))
    (data / "us-busi" / "images").mkdir(parents=True)
    (data / "us-busi" / "images" / "broken.png").write_bytes(b"garbage")
    write_mask(data / "us-busi" / "masks" / "broken.png", np.ones(SIZE, dtype=bool))
    code = main(["demo", "--data", str(data), "--limit", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "broken" in captured.err
    assert re.search(r"^cxr-shenzhen\s+2\s+\d\.\d{4}", captured.out, flags=re.MULTILINE), captured.out
    assert re.search(r"^us-busi\s+0\s", captured.out, flags=re.MULTILINE), captured.out


def test_demo_without_data_exits_2(tmp_path, capsys):
    code = main(["demo", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "--data" in capsys.readouterr().err


# -- real LiteMedSAM, end to end (slow) ------------------------------------------------------------------


@pytest.mark.real_model
def test_console_script_evaluate_real_litemedsam(tmp_path, shared_data):
    script = Path(sys.executable).parent / "medsamkit"
    assert script.is_file(), script
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(script), "evaluate", str(shared_data / "cxr-shenzhen"), "--out", str(out), "--limit", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"images": 2, "evaluated": 2, "errors": 0, "no_prompt": 0}
    assert summary["metrics"]["dice"]["n"] == 2
    assert summary["metrics"]["dice"]["mean"] > 0.93
    assert json.loads((out / "pipeline.json").read_text())["segmenter"]["name"] == "litemedsam"
    assert len(csv_rows(out / "metrics.csv")) == 2


@pytest.mark.real_model
def test_demo_real_litemedsam(tmp_path, shared_data, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--data", str(shared_data), "--limit", "1", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    match = re.search(r"^cxr-shenzhen\s+1\s+(\d\.\d{4})\s+(\d\.\d{4})", captured.out, flags=re.MULTILINE)
    assert match, captured.out
    assert float(match.group(1)) > 0.9
    assert (out / "cxr-shenzhen" / "summary.json").is_file()


def test_fit_prompter_then_evaluate_with_its_state(tmp_path, capsys):
    from medsamkit.cli import main as cli_main
    from medsamkit.testing import make_blob_image
    import medsamkit as msk

    for i in range(3):
        image, mask = make_blob_image((40, 56), n_blobs=2, seed=i)
        msk.data.write_image(tmp_path / "d" / "images" / f"s{i}.png", image)
        msk.write_mask(tmp_path / "d" / "masks" / f"s{i}.png", mask)
    state = tmp_path / "points.npz"
    assert cli_main(["fit-prompter", str(tmp_path / "d"), "--prompter", "mean-mask-points", "--out", str(state), "--no-progress"]) == 0
    assert state.is_file() and "fitted mean-mask-points on 3 images" in capsys.readouterr().out
    code = cli_main([
        "evaluate", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--segmenter", "fake",
        "--prompter", "mean-mask-points", "--prompter-state", str(state), "--no-progress",
    ])
    assert code == 0
    assert cli_main(["evaluate", str(tmp_path / "d"), "--out", str(tmp_path / "p"), "--segmenter", "fake",
                     "--prompter", "embedding-head", "--no-progress"]) == 2
    assert "fit-prompter" in capsys.readouterr().err

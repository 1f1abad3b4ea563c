"""Tests for ``medsamkit evaluate`` (``cli/_evaluate.py``), in-process via ``main`` and one console-script run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsamkit import Pipeline
from medsamkit.cli import main
from medsamkit.data import write_mask

from ._helpers import FAKE, SIZE, STEMS, csv_rows, make_folder


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


def test_fixed_prompter_without_box_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--prompter", "fixed", *FAKE])
    err = capsys.readouterr().err
    assert code == 2
    assert "--box" in err


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
        [
            "evaluate",
            str(tmp_path / "data"),
            "--out",
            str(second),
            "--pipeline",
            str(first / "pipeline.json"),
            "--threshold",
            "0.9",
            *FAKE,
        ]
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
    code = main(
        ["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--pipeline", str(tmp_path / "nothing"), *FAKE]
    )
    assert code == 2
    assert "nothing" in capsys.readouterr().err


def test_mean_mask_points_fit_masks(tmp_path, capsys):
    make_folder(tmp_path / "train", stems=("t0", "t1", "t2"))
    make_folder(tmp_path / "test", stems=("s0", "s1"))
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            str(tmp_path / "test"),
            "--out",
            str(out),
            "--prompter",
            "mean-mask-points",
            "--fit-masks",
            str(tmp_path / "train"),
            *FAKE,
        ]
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
    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "test"),
                "--out",
                str(tmp_path / "state"),
                "--prompter",
                "mean-mask-points",
                "--prompter-state",
                str(out / config["prompter"]["params"]["state"]),
                *FAKE,
            ]
        )
        == 0
    )
    assert csv_rows(tmp_path / "state" / "metrics.csv")[1]["dice"] == rows[1]["dice"]
    assert Pipeline.load(out).prompter.requires_target is False


def test_fit_masks_with_corrupt_training_mask_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "train", stems=("t0", "t1"))
    (tmp_path / "train" / "masks" / "t1.png").write_bytes(b"not a mask")
    make_folder(tmp_path / "test", stems=("s0",))
    code = main(
        [
            "evaluate",
            str(tmp_path / "test"),
            "--out",
            str(tmp_path / "out"),
            "--prompter",
            "mean-mask-points",
            "--fit-masks",
            str(tmp_path / "train"),
            *FAKE,
        ]
    )
    assert code == 2
    assert "t1.png" in capsys.readouterr().err


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
    assert summary["counts"] == {"images": 2, "evaluated": 2, "errors": 0, "no_prompt": 0, "missing_masks": 0}
    assert summary["metrics"]["dice"]["n"] == 2
    assert summary["metrics"]["dice"]["mean"] > 0.93
    assert json.loads((out / "pipeline.json").read_text())["segmenter"]["name"] == "litemedsam"
    assert len(csv_rows(out / "metrics.csv")) == 2


# -- issue 10 ------------------------------------------------------------------------------------


def _mask_bytes(data: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((data / "masks").iterdir())}


def test_out_equal_to_the_data_folder_exits_2_and_keeps_the_masks(tmp_path, capsys):
    """``medsamkit evaluate same --out same`` replaced the reference masks; ``--overwrite`` deleted them."""
    data = tmp_path / "same"
    make_folder(data)
    before = _mask_bytes(data)
    for out in (data, data / "masks", data / "images" / "pred"):
        for extra in ([], ["--overwrite"]):
            code = main(["evaluate", str(data), "--out", str(out), "--prompter", "oracle-box", *FAKE, *extra])
            err = capsys.readouterr().err
            assert code == 2 and "input folder" in err and "Traceback" not in err
    assert _mask_bytes(data) == before
    assert sorted(p.name for p in data.iterdir()) == ["images", "masks"]


def test_images_without_masks_exit_2_unless_allowed_and_resume_says_reused(tmp_path, capsys):
    data = tmp_path / "data"
    make_folder(data)
    (data / "masks" / "case_02.png").unlink()
    code = main(["evaluate", str(data), "--out", str(tmp_path / "out"), *FAKE])
    err = capsys.readouterr().err
    assert code == 2 and "1 image(s)" in err and "case_02" in err and "--allow-missing-masks" in err
    assert not (tmp_path / "out").exists()
    args = ["evaluate", str(data), "--out", str(tmp_path / "out"), "--allow-missing-masks", *FAKE]
    assert main(args) == 0
    assert "case_02" in capsys.readouterr().err
    assert main(args) == 0
    assert "reused 3 finished result(s)" in capsys.readouterr().err


def test_device_without_gpu_exits_2_without_traceback(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    make_folder(tmp_path / "data")
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--device", "cuda", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no usable CUDA GPU" in err and "Traceback" not in err


def test_a_locked_out_dir_exits_2(tmp_path, capsys):
    from medsamkit._outdir import out_dir_lock

    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from medsamkit._outdir import out_dir_lock\n"
                f"with out_dir_lock({str(out)!r}):\n    print('locked', flush=True); sys.stdin.read()"
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(["evaluate", str(tmp_path / "data"), "--out", str(out), *FAKE])
        err = capsys.readouterr().err
        assert code == 2 and f"in use by another medsamkit run (process {holder.pid})" in err
    finally:
        holder.communicate("")
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(out), *FAKE]) == 0
    del out_dir_lock

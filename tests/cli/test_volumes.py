"""CLI on volume folders (issue 11): evaluate/segment with --window and --prompt, bad files, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsamkit.cli import main
from medsamkit.data import Volume, read_volume, write_volume

from ._helpers import FAKE, csv_rows

CACHE = ["--no-cache"]


def _make(root: Path, n: int = 2) -> dict[str, np.ndarray]:
    refs = {}
    for i in range(n):
        rng = np.random.default_rng(i)
        zz, yy, xx = np.mgrid[:6, :32, :40]
        mask = ((zz - 3) / 2) ** 2 + ((yy - 16) / 8) ** 2 + ((xx - 20) / 9) ** 2 <= 1
        vol = Volume((np.where(mask, 40, -700) + rng.normal(0, 10, mask.shape)).astype(np.int16), spacing=(4.0, 0.9, 0.9))
        write_volume(root / "images" / f"vol{i}.nii.gz", vol)
        write_volume(root / "masks" / f"vol{i}.nii.gz", vol, mask)
        refs[f"vol{i}"] = mask
    return refs


@pytest.mark.parametrize("prompt", ["oracle", "box3d", "propagate"])
def test_evaluate_volume_folder(tmp_path, capsys, prompt):
    _make(tmp_path / "data")
    out = tmp_path / "out"
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(out), "--window", "abdomen", "--prompt", prompt, *FAKE, *CACHE])
    assert code == 0, capsys.readouterr().err
    rows = csv_rows(out / "metrics.csv")
    assert [r["stem"] for r in rows] == ["vol0", "vol1"]
    assert all(float(r["dice"]) > 0.5 and r["nsd"] and r["hd95"] for r in rows)
    assert read_volume(out / "masks" / "vol0.nii.gz").shape == (6, 32, 40)
    assert (out / "pictures" / "vol0.png").is_file()
    config = json.loads((out / "pipeline.json").read_text())
    assert config["preprocess"] == [{"name": "window", "params": {"level": 40.0, "width": 400.0}}]
    assert "vol0" in capsys.readouterr().out


def test_evaluate_volume_folder_with_a_bad_file_exits_1_and_names_it(tmp_path, capsys):
    _make(tmp_path / "data")
    vol = read_volume(tmp_path / "data" / "images" / "vol0.nii.gz")
    write_volume(tmp_path / "data" / "images" / "bad.nii.gz", vol)
    write_volume(tmp_path / "data" / "masks" / "bad.nii.gz", vol.crop(x=slice(0, 30)), np.zeros((6, 32, 30), np.uint8))
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--window", "40,400", *FAKE, *CACHE])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad" in err and "voxel grid" in err
    assert len([r for r in csv_rows(tmp_path / "out" / "metrics.csv") if not r["error"]]) == 2


def test_bad_window_exits_2(tmp_path, capsys):
    _make(tmp_path / "data", n=1)
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--window", "abdomin", *FAKE, *CACHE])
    assert code == 2
    assert "--window" in capsys.readouterr().err


def test_segment_single_volume_with_box3d(tmp_path, capsys):
    _make(tmp_path / "data", n=1)
    image = tmp_path / "data" / "images" / "vol0.nii.gz"
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(image),
            "--out",
            str(out),
            "--prompt",
            "box3d",
            "--box3d",
            "10",
            "8",
            "1",
            "30",
            "24",
            "5",
            "--window",
            "abdomen",
            *FAKE,
            *CACHE,
        ]
    )
    assert code == 0, capsys.readouterr().err
    pred = read_volume(out / "masks" / "vol0.nii.gz")
    assert pred.array[1:6].any() and not pred.array[0].any()
    code = main(["segment", str(image), "--out", str(tmp_path / "o2"), "--prompt", "box3d", *FAKE, *CACHE])
    assert code == 2 and "--box3d" in capsys.readouterr().err

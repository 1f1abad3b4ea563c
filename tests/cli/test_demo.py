"""Tests for ``medsamkit demo`` (``cli/_demo.py``)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from medsamkit.cli import main
from medsamkit.data import write_mask

from ._helpers import SIZE, make_folder


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

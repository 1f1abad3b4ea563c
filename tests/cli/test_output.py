"""Tests for ``cli/_output.py``: the one tail every batch command ends with (failures named, exit 1)."""

from __future__ import annotations

import numpy as np
import pytest

from medsamkit.cli import main
from medsamkit.cli._output import exit_status
from medsamkit.data import write_mask

from ._helpers import FAKE, SIZE, make_folder


def test_nothing_failed_is_status_0_and_silent(capsys):
    assert exit_status({}, "image") == 0
    assert exit_status([], "volume", n=0, see="x.csv") == 0
    assert capsys.readouterr() == ("", "")


def test_failures_are_named_on_stderr_and_status_1(capsys):
    assert exit_status({"case_b": "unreadable", "case_a": "bad shape"}, "image") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "medsamkit: 2 image(s) failed: case_b, case_a\n"


def test_grouped_failures_give_their_count_and_where_to_look(capsys):
    assert exit_status(["2 in fold_0/finetuned"], "held-out image", n=2, see="fold_*/*/metrics.csv") == 1
    assert capsys.readouterr().err == "medsamkit: 2 held-out image(s) failed: 2 in fold_0/finetuned; see fold_*/*/metrics.csv\n"


@pytest.mark.parametrize("command", ["evaluate", "segment"])
def test_evaluate_and_segment_end_with_the_same_tail(command, tmp_path, capsys):
    data = tmp_path / "data"
    make_folder(data, stems=("good",))
    (data / "images" / "zz_bad.png").write_bytes(b"garbage")
    write_mask(data / "masks" / "zz_bad.png", np.ones(SIZE, dtype=bool))
    code = main([command, str(data), "--out", str(tmp_path / "out"), *FAKE])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == "medsamkit: 1 image(s) failed: zz_bad"

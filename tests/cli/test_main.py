"""Tests for the parser and dispatch of ``medsamkit`` (``cli/_main.py``)."""

from __future__ import annotations

import pytest

from medsamkit.cli import build_parser, main
from medsamkit.cli._errors import UsageError, is_user_error
from medsamkit.cli._main import COMMANDS

from ._helpers import FAKE, make_folder


def test_argparse_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path), "--out", str(tmp_path / "o"), "--prompter", "nonsense"])
    assert info.value.code == 2
    assert "nonsense" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path)])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(tmp_path, capsys, monkeypatch):
    import medsamkit.evaluation as evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate", interrupted)
    make_folder(tmp_path / "data", stems=("a",))
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE]) == 130
    assert "resume" in capsys.readouterr().err


def _failing_evaluate(exc: BaseException):
    def evaluate(*args, **kwargs):
        raise exc

    return evaluate


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("threshold: expected a number in (0, 1), got 7"),
        FileNotFoundError("masks: expected a folder, got missing /x/masks"),
        PermissionError("out_dir: cannot write /x"),
        ImportError("LoRA fine-tuning needs peft: pip install medsamkit[lora]"),
        UsageError("--box: expected four numbers"),
    ],
)
def test_user_errors_exit_2_with_one_line_and_no_traceback(exc, tmp_path, capsys, monkeypatch):
    import medsamkit.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", _failing_evaluate(exc))
    make_folder(tmp_path / "data", stems=("a",))
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE]) == 2
    err = capsys.readouterr().err
    assert err == f"medsamkit: error: {exc}\n"
    assert is_user_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
        KeyError("dice"),
        AttributeError("'NoneType' object has no attribute 'mask'"),
        RuntimeError("shape mismatch"),
        ImportError("cannot import name 'x' from 'medsamkit._y'"),  # a broken import of ours, no install hint
        AssertionError(),
    ],
)
def test_unexpected_exceptions_are_bugs_with_traceback_and_exit_1(exc, tmp_path, capsys, monkeypatch):
    import medsamkit.evaluation as evaluation

    monkeypatch.setattr(evaluation, "evaluate", _failing_evaluate(exc))
    make_folder(tmp_path / "data", stems=("a",))
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{type(exc).__name__}" in err and "in evaluate" in err  # the frame that raised
    assert err.rstrip().splitlines()[-1].startswith(f"medsamkit: internal error ({type(exc).__name__}) in 'evaluate'")
    assert "bug" in err
    assert not is_user_error(exc)


def test_a_missing_optional_package_names_its_extra(tmp_path, capsys, monkeypatch):
    import medsamkit.evaluation as evaluation

    exc = ModuleNotFoundError("No module named 'monai'", name="monai")
    monkeypatch.setattr(evaluation, "evaluate", _failing_evaluate(exc))
    make_folder(tmp_path / "data", stems=("a",))
    assert main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "out"), *FAKE]) == 2
    assert capsys.readouterr().err == "medsamkit: error: No module named 'monai': pip install 'medsamkit[finetune]'\n"
    # a module of our own (or any other) that is missing is a bug
    assert not is_user_error(ModuleNotFoundError("No module named 'medsamkit._gone'", name="medsamkit._gone"))


def test_every_command_is_listed_and_dispatches_to_its_module(capsys):
    names = ["evaluate", "segment", "finetune", "sammix", "crossval", "fit-prompter", "compare", "box-margins", "demo"]
    parser = build_parser()
    assert [m.__name__.rsplit("._", 1)[-1].replace("_", "-") for m in COMMANDS] == names
    assert parser.parse_args(["demo"]).run is COMMANDS[-1].run
    assert parser.parse_args(["box-margins", "d", "--out", "o"]).run is COMMANDS[-2].run
    for name in names:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: medsamkit {name} ")


def test_version(capsys):
    import medsamkit

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"medsamkit {medsamkit.__version__}"


@pytest.mark.parametrize("module", ["medsamkit", "medsamkit.cli"])
def test_python_dash_m(module):
    import subprocess
    import sys

    import medsamkit

    proc = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"medsamkit {medsamkit.__version__}"

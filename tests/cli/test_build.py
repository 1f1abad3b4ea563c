"""Tests for the segmenters, caches and pipelines built from the options (``cli/_build.py``)."""

from __future__ import annotations

import argparse
import json

import pytest

import medsamkit
from medsamkit import Pipeline
from medsamkit.cli import build_parser, main
from medsamkit.cli._build import build_segmenter, embedding_cache
from medsamkit.cli._main import COMMANDS
from medsamkit.testing import FakeSegmenter, make_presence_folder

from ._helpers import FAKE, make_folder

# Every command that builds a segmenter, with the arguments it needs to get that far.
SEGMENTER_COMMANDS = {
    "evaluate": ["evaluate", "{data}", "--out", "{out}"],
    "segment": ["segment", "{data}", "--out", "{out}"],
    "finetune": ["finetune", "{data}", "--out", "{out}", "--prompter", "perturbed-box"],
    "sammix": ["sammix", "{presence}", "--out", "{out}"],
    "crossval": ["crossval", "{data}", "--out", "{out}", "--k", "2", "--prompter", "perturbed-box"],
    "fit-prompter": ["fit-prompter", "{data}", "--prompter", "embedding-head", "--out", "{out}/head.pt"],
    "compare": ["compare", "{data}", "--out", "{out}", "--with", "oracle-box"],
    "box-margins": ["box-margins", "{data}", "--out", "{out}"],
}


class _Stop(ValueError):
    """Raised by the recording cache to end the command once the cache is built."""


@pytest.fixture()
def folders(tmp_path):
    make_folder(tmp_path / "data")
    make_presence_folder(tmp_path / "presence", 10, size_hw=(48, 64), seed=0)
    return {"data": str(tmp_path / "data"), "presence": str(tmp_path / "presence"), "out": str(tmp_path / "out")}


def _argv(command: str, folders: dict[str, str], *extra: str) -> list[str]:
    return [arg.format(**folders) for arg in SEGMENTER_COMMANDS[command]] + ["--no-progress", *extra]


def test_every_segmenter_command_is_listed():
    """A new command that builds a segmenter must be added to SEGMENTER_COMMANDS (and so to these tests)."""
    sub = argparse.ArgumentParser(prog="medsamkit").add_subparsers()
    parsers = [command.add_parser(sub) for command in COMMANDS]
    with_segmenter = {p.prog.split()[-1] for p in parsers if "--segmenter" in p.format_help()}
    assert with_segmenter == set(SEGMENTER_COMMANDS)
    assert len(parsers) == 9 and "demo" not in with_segmenter


@pytest.mark.parametrize("command", sorted(SEGMENTER_COMMANDS))
def test_every_command_builds_its_segmenter_in_the_sized_cache(command, folders, tmp_path, monkeypatch, capsys):
    built = []

    def recording_cache(directory=None, *, max_bytes):
        built.append((directory, max_bytes))
        raise _Stop("stopped once the cache was built")

    monkeypatch.setattr(medsamkit, "EmbeddingCache", recording_cache)
    argv = _argv(command, folders, "--segmenter", "fake", "--cache-dir", str(tmp_path / "c"), "--cache-size-gb", "0.5")
    assert main(argv) == 2
    assert "stopped once the cache was built" in capsys.readouterr().err
    assert built == [(tmp_path / "c", 512 * 1024**2)]


@pytest.mark.parametrize("command", sorted(SEGMENTER_COMMANDS))
def test_every_command_checks_cache_size_and_precision(command, folders, capsys):
    assert main(_argv(command, folders, "--segmenter", "fake", "--cache-size-gb", "0")) == 2
    assert "--cache-size-gb: expected a positive number, got 0.0" in capsys.readouterr().err
    assert main(_argv(command, folders, "--segmenter", "fake", "--no-cache", "--precision", "fast")) == 2
    assert "--precision applies to LiteMedSAM" in capsys.readouterr().err


def test_build_segmenter_with_and_without_cache(tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        [
            "compare",
            "d",
            "--out",
            "o",
            "--with",
            "oracle-box",
            "--segmenter",
            "fake",
            "--cache-dir",
            str(tmp_path / "c"),
            "--cache-size-gb",
            "0.25",
        ]
    )
    cached = build_segmenter(args)
    assert isinstance(cached, medsamkit.CachedSegmenter)
    assert isinstance(cached.segmenter, FakeSegmenter)
    assert cached.cache.directory == tmp_path / "c" and cached.cache.max_bytes == 256 * 1024**2
    args = parser.parse_args(["compare", "d", "--out", "o", "--with", "oracle-box", "--segmenter", "fake", "--no-cache"])
    assert embedding_cache(args) is None
    assert isinstance(build_segmenter(args), FakeSegmenter)


@pytest.mark.real_model
def test_precision_option_reaches_the_segmenter_and_its_config(tmp_path, capsys):
    make_folder(tmp_path / "data")
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--limit",
            "1",
            "--precision",
            "float32",
            "--no-progress",
            "--no-cache",
        ]
    )
    assert code == 0, capsys.readouterr().err
    segmenter = json.loads((out / "pipeline.json").read_text())["segmenter"]
    assert segmenter["name"] == "litemedsam" and segmenter["params"]["precision"] == "float32"
    reloaded = Pipeline.load(out).segmenter
    assert reloaded.precision == "float32" and reloaded.encoder_backend == "float32"
    code = main(["evaluate", str(tmp_path / "data"), "--out", str(tmp_path / "o2"), "--precision", "fast", *FAKE])
    assert code == 2 and "--precision" in capsys.readouterr().err


def test_resize_filter_choices_are_the_segmenters():
    """The CLI lists the filters itself (no segmenter import at parse time): the same four."""
    from medsamkit.segmenters import RESIZE_FILTERS

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in SEGMENTER_COMMANDS:
        option = next(a for a in subcommands.choices[name]._actions if "--resize-filter" in a.option_strings)
        assert tuple(option.choices) == RESIZE_FILTERS and option.default is None


@pytest.mark.parametrize("command", sorted(SEGMENTER_COMMANDS))
def test_every_command_passes_resize_filter_to_litemedsam_only(command, folders, capsys):
    from medsamkit.cli._build import segmenter_params

    assert main(_argv(command, folders, "--segmenter", "fake", "--no-cache", "--resize-filter", "pil-bilinear")) == 2
    assert "--resize-filter: LiteMedSAM only, got --segmenter fake" in capsys.readouterr().err
    args = build_parser().parse_args(_argv(command, folders, "--resize-filter", "pil-bicubic"))
    assert segmenter_params(args)["resize_filter"] == "pil-bicubic"
    args = build_parser().parse_args(_argv(command, folders))
    assert "resize_filter" not in segmenter_params(args)

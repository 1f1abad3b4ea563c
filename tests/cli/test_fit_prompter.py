"""Tests for ``medsamkit fit-prompter`` (``cli/_fit_prompter.py``)."""

from __future__ import annotations

import pytest


def test_fit_prompter_then_evaluate_with_its_state(tmp_path, capsys):
    import medsamkit as msk
    from medsamkit.cli import main as cli_main
    from medsamkit.testing import make_blob_image

    for i in range(3):
        image, mask = make_blob_image((40, 56), n_blobs=2, seed=i)
        msk.data.write_image(tmp_path / "d" / "images" / f"s{i}.png", image)
        msk.write_mask(tmp_path / "d" / "masks" / f"s{i}.png", mask)
    state = tmp_path / "points.npz"
    assert (
        cli_main(["fit-prompter", str(tmp_path / "d"), "--prompter", "mean-mask-points", "--out", str(state), "--no-progress"])
        == 0
    )
    assert state.is_file() and "fitted mean-mask-points on 3 images" in capsys.readouterr().out
    code = cli_main(
        [
            "evaluate",
            str(tmp_path / "d"),
            "--out",
            str(tmp_path / "o"),
            "--segmenter",
            "fake",
            "--prompter",
            "mean-mask-points",
            "--prompter-state",
            str(state),
            "--no-progress",
        ]
    )
    assert code == 0
    assert (
        cli_main(
            [
                "evaluate",
                str(tmp_path / "d"),
                "--out",
                str(tmp_path / "p"),
                "--segmenter",
                "fake",
                "--prompter",
                "embedding-head",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "fit-prompter" in capsys.readouterr().err


def test_fit_prompter_options_for_other_prompters_are_usage_errors(tmp_path, capsys):
    import medsamkit as msk
    from medsamkit.cli import main as cli_main
    from medsamkit.testing import make_blob_image

    image, mask = make_blob_image((40, 56), seed=0)
    msk.data.write_image(tmp_path / "d" / "images" / "s0.png", image)
    msk.write_mask(tmp_path / "d" / "masks" / "s0.png", mask)
    args = ["fit-prompter", str(tmp_path / "d"), "--prompter", "mean-mask-points", "--out", str(tmp_path / "p.npz")]
    assert cli_main([*args, "--flip"]) == 2
    assert "--flip" in capsys.readouterr().err
    assert cli_main([*args, "--augment", "2"]) == 2
    assert "--augment: mean-mask-points has no augmented-copy training" in capsys.readouterr().err
    head = ["fit-prompter", str(tmp_path / "d"), "--prompter", "embedding-head", "--out", str(tmp_path / "h.pt")]
    assert cli_main([*head, "--augment", "-1"]) == 2
    assert "--augment: expected K >= 0, got -1" in capsys.readouterr().err


@pytest.mark.real_model
def test_head_fit_logs_its_stages_and_composes_with_a_decoder_tuned_checkpoint(tmp_path, capsys, litemedsam):
    """Issue 13: fit-prompter --no-progress says its stage; evaluate --prompter embedding-head --checkpoint
    <decoder-only fine-tuned> works (the head keys on the encoder), with --refine, --quality and --cases-to-check."""
    import csv
    import json

    import torch

    from medsamkit.cli import main as cli_main
    from medsamkit.testing import make_presence_folder

    make_presence_folder(tmp_path / "d", 4, size_hw=(64, 64))
    state = {k: v.clone() for k, v in litemedsam.model.state_dict().items()}
    key = next(k for k in state if k.startswith("mask_decoder.") and state[k].dtype.is_floating_point)
    state[key] += 0.001
    torch.save(state, tmp_path / "tuned.pth")
    head = tmp_path / "head.pt"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    code = cli_main(
        [
            "fit-prompter",
            str(tmp_path / "d"),
            "--prompter",
            "embedding-head",
            "--out",
            str(head),
            "--epochs",
            "2",
            "--val-data",
            str(tmp_path / "d"),
            "--no-progress",
            *cache,
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "encoding 4 training images" in captured.err and "epoch 2/2" in captured.err
    assert "presence threshold" in captured.out
    out = tmp_path / "o"
    code = cli_main(
        [
            "evaluate",
            str(tmp_path / "d"),
            "--out",
            str(out),
            "--prompter",
            "embedding-head",
            "--prompter-state",
            str(head),
            "--checkpoint",
            str(tmp_path / "tuned.pth"),
            "--refine",
            "2",
            "--quality",
            "--cases-to-check",
            "2",
            "--no-progress",
            *cache,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "error" not in captured.err
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and all(r["quality"] != "" for r in rows) and not any(r["error"] for r in rows)
    assert "failure_detection" in json.loads((out / "summary.json").read_text())
    assert (out / "cases_to_check" / "cases_to_check.csv").is_file()
    config = json.loads((out / "pipeline.json").read_text())
    assert config["prompter"]["name"] == "refined"

"""Tests for ``medsamkit fit-prompter`` (``cli/_fit_prompter.py``)."""

from __future__ import annotations


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

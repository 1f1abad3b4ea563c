"""Tests for ``medsamkit segment`` (``cli/_segment.py``)."""

from __future__ import annotations

import numpy as np

from medsamkit.cli import main

from ._helpers import FAKE, SIZE, csv_rows, make_folder, read_png_mask


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
        [
            "segment",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--prompter",
            "fixed",
            "--box",
            "0",
            "0",
            "10",
            "10",
            "--box",
            "20",
            "20",
            "30",
            "30",
            *FAKE,
        ]
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

    code = main(
        [
            "segment",
            str(flat),
            "--out",
            str(out),
            "--prompter",
            "oracle-box",
            "--reference-masks",
            str(tmp_path / "data" / "masks"),
            *FAKE,
        ]
    )
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
    code = main(
        [
            "segment",
            str(tmp_path / "nope.png"),
            "--out",
            str(tmp_path / "out"),
            "--prompter",
            "fixed",
            "--box",
            "0",
            "0",
            "5",
            "5",
            *FAKE,
        ]
    )
    assert code == 2
    assert "nope.png" in capsys.readouterr().err


def test_segment_corrupt_image_exits_1(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("good",), masks=False)
    (tmp_path / "data" / "images" / "zz_bad.png").write_bytes(b"garbage")
    code = main(
        [
            "segment",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--prompter",
            "fixed",
            "--box",
            "0",
            "0",
            "5",
            "5",
            *FAKE,
        ]
    )
    assert code == 1
    assert "zz_bad" in capsys.readouterr().err
    assert (tmp_path / "out" / "masks" / "good.png").is_file()


# -- issue 10: pairing by exact names; no output in the input ------------------------------------


def test_flat_folder_with_two_files_of_one_stem_exits_2(tmp_path, capsys):
    """``case.png`` + ``case.jpg`` reported 2 images and wrote 1 mask."""
    make_folder(tmp_path / "data", stems=("case", "other"), masks=False)
    flat = tmp_path / "data" / "images"
    (flat / "case.jpg").write_bytes((flat / "case.png").read_bytes())
    code = main(["segment", str(flat), "--out", str(tmp_path / "out"), "--prompter", "fixed", "--box", "1", "1", "9", "9", *FAKE])
    err = capsys.readouterr().err
    assert code == 2 and "duplicate stem 'case'" in err
    assert not (tmp_path / "out" / "masks").exists()


def test_reference_masks_match_names_exactly(tmp_path, capsys):
    """``--reference-masks`` globbed ``case[1].*``, which matched ``case1.png``."""
    refs = make_folder(tmp_path / "data", stems=("case[1]", "case1"), masks=False)
    from medsamkit.data import write_mask

    write_mask(tmp_path / "refs" / "case1.png", refs["case1"])
    code = main(
        [
            "segment",
            str(tmp_path / "data" / "images"),
            "--out",
            str(tmp_path / "out"),
            "--prompter",
            "oracle-box",
            "--reference-masks",
            str(tmp_path / "refs"),
            *FAKE,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "case[1]" in err  # the oracle has no mask for case[1]: refused, not borrowed from case1
    write_mask(tmp_path / "refs" / "case[1].png", np.zeros(SIZE, bool))
    assert (
        main(
            [
                "segment",
                str(tmp_path / "data" / "images"),
                "--out",
                str(tmp_path / "out"),
                "--prompter",
                "oracle-box",
                "--reference-masks",
                str(tmp_path / "refs"),
                *FAKE,
            ]
        )
        == 0
    )
    assert not read_png_mask(tmp_path / "out" / "masks" / "case[1].png").any()  # its own (empty) mask was the target
    assert read_png_mask(tmp_path / "out" / "masks" / "case1.png").any()


def test_segment_out_inside_the_images_exits_2(tmp_path, capsys):
    make_folder(tmp_path / "data", stems=("a", "b"), masks=False)
    flat = tmp_path / "data" / "images"
    code = main(["segment", str(flat), "--out", str(flat / "pred"), "--prompter", "fixed", "--box", "1", "1", "9", "9", *FAKE])
    assert code == 2 and "input folder" in capsys.readouterr().err
    assert sorted(p.name for p in flat.iterdir()) == ["a.png", "b.png"]

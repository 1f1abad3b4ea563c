"""Tests for medsamkit.evaluation._plots: overlays, panels and box plots (real rendering)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from medsamkit._types import Prompts
from medsamkit.evaluation._plots import (
    BG_POINT_COLOR,
    BOX_COLOR,
    FG_POINT_COLOR,
    PRED_COLOR,
    TARGET_COLOR,
    overlay_image,
    overlay_panel,
    save_grouped_boxplot,
    save_metric_boxplot,
    save_overlay,
)

pytestmark = pytest.mark.real_plots  # the box plots here are rasterized (see conftest)

SRC = Path(__file__).resolve().parents[2] / "src"

H, W = 64, 80


def gradient(h: int = H, w: int = W, dtype: type = np.uint8, lo: float = 40, hi: float = 200) -> np.ndarray:
    """A horizontal ramp from lo to hi (never constant, never saturated)."""
    row = np.linspace(lo, hi, w)
    return np.repeat(row[None, :], h, axis=0).astype(dtype)


@pytest.fixture
def masks() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((H, W), dtype=bool)
    pred[20:44, 20:60] = True
    target = np.zeros((H, W), dtype=np.uint8)
    target[16:48, 16:64] = 255
    return pred, target


def color_at(picture: np.ndarray, y: int, x: int) -> tuple[int, ...]:
    return tuple(int(v) for v in picture[y, x])


# ---------------------------------------------------------------------------------------
# overlay_image
# ---------------------------------------------------------------------------------------

IMAGES = {
    "gray_uint8": gradient(),
    "gray_uint16": gradient(dtype=np.uint16, lo=50_000, hi=60_000),
    "gray_float": gradient(dtype=np.float32, lo=-1.5, hi=3.0),
    "gray_bool": np.indices((H, W))[1] % 2 == 0,
    "gray_hw1": gradient()[..., None],
    "rgb_uint8": np.stack([gradient(), gradient()[:, ::-1], np.full((H, W), 90, np.uint8)], axis=2),
    "rgba_uint8": np.dstack([gradient(), gradient(), gradient(), np.zeros((H, W), np.uint8)]),
    "rgb_uint16": np.dstack([gradient(dtype=np.uint16, lo=1000, hi=60_000)] * 3),
}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_overlay_any_dtype_gives_rgb_uint8_with_full_contrast(name: str, masks) -> None:
    image = IMAGES[name]
    plain = overlay_image(image)
    assert plain.shape == (H, W, 3) and plain.dtype == np.uint8
    assert int(plain.max()) - int(plain.min()) >= 200  # min-max scaled: not all white/black
    drawn = overlay_image(image, pred=masks[0], target=masks[1])
    assert drawn.shape == (H, W, 3) and drawn.dtype == np.uint8


def test_overlay_uint16_is_scaled_per_image() -> None:
    image = gradient(dtype=np.uint16, lo=50_000, hi=60_000)
    plain = overlay_image(image)
    assert plain[0, 0].tolist() == [0, 0, 0] and plain[0, -1].tolist() == [255, 255, 255]
    assert plain.std() > 50


def test_overlay_gray_becomes_equal_channels_and_rgba_drops_alpha() -> None:
    gray = overlay_image(gradient())
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgba = IMAGES["rgba_uint8"]  # alpha 0 everywhere must not hide the picture
    np.testing.assert_array_equal(overlay_image(rgba), overlay_image(rgba[..., :3]))


def test_constant_image_does_not_crash() -> None:
    for image in (np.zeros((8, 8), np.uint16), np.full((8, 8), 3.5), np.full((8, 8, 3), 200, np.uint8)):
        out = overlay_image(image, pred=np.ones((8, 8), bool))
        assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_pred_fill_tints_toward_pred_color(masks) -> None:
    image = gradient()
    pred, _ = masks
    plain = overlay_image(image)
    drawn = overlay_image(image, pred=pred, alpha=0.35)
    y, x = 32, 40  # inside pred, >= 8 px from its contour
    before = plain[y, x].astype(float)
    after = drawn[y, x].astype(float)
    colour = np.asarray(PRED_COLOR, dtype=float)
    assert np.linalg.norm(after - colour) < np.linalg.norm(before - colour) - 20
    np.testing.assert_allclose(after, 0.65 * before + 0.35 * colour, atol=1.0)
    # outside pred nothing changes
    assert color_at(drawn, 5, 5) == color_at(plain, 5, 5)
    # the pred contour is drawn in the pred colour
    assert color_at(drawn, 20, 40) == PRED_COLOR


def test_alpha_zero_leaves_only_the_contour(masks) -> None:
    image = gradient()
    drawn = overlay_image(image, pred=masks[0], alpha=0.0)
    assert color_at(drawn, 32, 40) == color_at(overlay_image(image), 32, 40)
    with pytest.raises(ValueError, match="alpha"):
        overlay_image(image, pred=masks[0], alpha=1.5)


def test_target_contour_has_target_color(masks) -> None:
    pred, target = masks
    drawn = overlay_image(gradient(), pred=pred, target=target)
    for y, x in [(16, 40), (47, 40), (30, 16), (30, 63)]:  # on the target's outline
        assert color_at(drawn, y, x) == TARGET_COLOR
    # target is a contour only: its interior outside pred is untouched
    assert color_at(drawn, 18, 40) == color_at(overlay_image(gradient()), 18, 40)


def test_prompts_boxes_and_points_are_drawn() -> None:
    image = gradient()
    prompts = Prompts(
        box_xyxy=np.array([[5, 6, 70, 55]], dtype=np.float32),
        points_xy=np.array([[[30, 30], [60, 20]]], dtype=np.float32),
        point_labels=np.array([[1, 0]]),
    )
    drawn = overlay_image(image, prompts=prompts)
    assert color_at(drawn, 6, 40) == BOX_COLOR  # top edge
    assert color_at(drawn, 30, 70) == BOX_COLOR  # right edge
    assert color_at(drawn, 30, 30) == FG_POINT_COLOR
    assert color_at(drawn, 20, 60) == BG_POINT_COLOR
    assert color_at(drawn, 45, 20) == color_at(overlay_image(image), 45, 20)  # inside the box


def test_empty_and_out_of_image_prompts() -> None:
    image = gradient()
    assert (overlay_image(image, prompts=Prompts.empty()) == overlay_image(image)).all()
    far = Prompts(box_xyxy=np.array([[-1e9, -5, 1e9, 30]], dtype=np.float32))
    assert overlay_image(image, prompts=far).shape == (H, W, 3)
    with pytest.raises(TypeError, match="prompts"):
        overlay_image(image, prompts=np.array([[1, 2, 3, 4]]))


def test_line_width_scales_with_image_size() -> None:
    box = Prompts(box_xyxy=np.array([[10, 100, 1900, 1900]], dtype=np.float32))

    def box_pixels_in_column(size: int) -> int:
        image = np.zeros((size, size), np.uint8)
        image[0, 0] = 255
        drawn = overlay_image(image, prompts=box)
        return int((drawn[:200, 200] == BOX_COLOR).all(axis=1).sum())

    assert box_pixels_in_column(256) == 1
    # round(2000 / 400) = 5; OpenCV draws thick lines with an odd width (5 -> 7 px)
    assert 5 <= box_pixels_in_column(2000) <= 7


def test_inputs_are_not_modified(masks) -> None:
    image = IMAGES["rgb_uint16"].copy()
    pred, target = masks
    prompts = Prompts(box_xyxy=np.array([[5, 6, 70, 55]]), points_xy=np.array([[[30, 30]]]))
    copies = [a.copy() for a in (image, pred, target, prompts.box_xyxy, prompts.points_xy)]
    overlay_image(image, pred=pred, target=target, prompts=prompts)
    overlay_panel(image, pred=pred, target=target, prompts=prompts, title="t")
    for before, after in zip(copies, (image, pred, target, prompts.box_xyxy, prompts.points_xy)):
        np.testing.assert_array_equal(before, after)


def test_shape_mismatch_names_the_parameter(masks) -> None:
    image = gradient()
    with pytest.raises(ValueError, match="pred"):
        overlay_image(image, pred=np.zeros((H, W + 1), bool))
    with pytest.raises(ValueError, match="target"):
        overlay_image(image, pred=masks[0], target=np.zeros((H - 1, W), bool))
    with pytest.raises(ValueError, match="pred"):
        overlay_panel(image, pred=np.zeros((W, H), bool), target=None)
    with pytest.raises(ValueError, match="image"):
        overlay_image(np.zeros((H, W, 2)))


# ---------------------------------------------------------------------------------------
# overlay_panel / save_overlay
# ---------------------------------------------------------------------------------------


def test_panel_is_image_then_overlay_under_a_text_strip(masks) -> None:
    image = gradient()
    pred, target = masks
    prompts = Prompts(box_xyxy=np.array([[5, 6, 70, 55]], dtype=np.float32))
    panel = overlay_panel(image, pred=pred, target=target, prompts=prompts, title="case_1  Dice 0.971")
    assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
    assert panel.shape[1] == 2 * W
    strip = panel.shape[0] - H
    assert 10 <= strip <= 50
    np.testing.assert_array_equal(panel[strip:, :W], overlay_image(image))
    np.testing.assert_array_equal(panel[strip:, W:], overlay_image(image, pred=pred, target=target, prompts=prompts))
    assert panel[:strip].std() > 5  # the title text was drawn


def test_panel_downscales_large_images() -> None:
    image = np.zeros((2000, 3000), np.uint16)
    image[:, 1500:] = 4000
    pred = np.zeros((2000, 3000), bool)
    pred[500:1500, 500:2500] = True
    panel = overlay_panel(image, pred=pred, target=pred, title="big")
    assert panel.shape[1] == 2 * 1024
    body = round(2000 * 1024 / 3000)
    assert 1 <= panel.shape[0] - body <= 50
    # portrait too: the long side is capped, whichever it is
    tall = overlay_panel(np.zeros((1500, 300), np.uint8), pred=None, target=None)
    assert tall.shape[1] == 2 * round(300 * 1024 / 1500)


def test_panel_title_edge_cases() -> None:
    tiny = gradient(12, 10)
    long_title = "a very long title that cannot possibly fit " * 5
    assert overlay_panel(tiny, pred=None, title=long_title).shape[1] == 20
    assert overlay_panel(gradient(), pred=None, title="Dice 0.9 \u00b1 0.1 \u2014 \u00e9").shape[1] == 2 * W
    with pytest.raises(TypeError, match="title"):
        overlay_panel(gradient(), pred=None, title=3)


def test_save_overlay_writes_a_png(tmp_path: Path, masks) -> None:
    pred, target = masks
    out = save_overlay(
        tmp_path / "sub" / "case.png", gradient(dtype=np.uint16, lo=0, hi=4095), pred=pred, target=target, title="case  Dice 0.9"
    )
    assert out == tmp_path / "sub" / "case.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written is not None and written.dtype == np.uint8
    assert written.shape[1] == 2 * W and written.shape[0] > H and written.shape[2] == 3
    panel = overlay_panel(gradient(dtype=np.uint16, lo=0, hi=4095), pred=pred, target=target, title="case  Dice 0.9")
    np.testing.assert_array_equal(written[..., ::-1], panel)  # RGB round trip
    assert sorted(p.name for p in out.parent.iterdir()) == ["case.png"]  # no temp files left
    with pytest.raises(ValueError, match="png"):
        save_overlay(tmp_path / "case.jpg", gradient(), pred=pred)


# ---------------------------------------------------------------------------------------
# Box plots
# ---------------------------------------------------------------------------------------


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    picture = cv2.imread(str(path))
    assert picture is not None
    assert 200 <= picture.shape[0] <= 1500 and 200 <= picture.shape[1] <= 3000
    assert picture.std() > 5  # something was drawn
    return picture


def metric_rows(n: int = 30, *, hd95: bool = True) -> list[dict]:
    rng = np.random.default_rng(3)
    rows = []
    for i, d in enumerate(rng.beta(20, 2, n)):
        row = {
            "stem": f"case_{i}",
            "dice": float(d),
            "iou": float(d / (2 - d)),
            "precision": d,
            "recall": np.float32(d),
            "f1": float(d),
        }
        if hd95:
            row["hd95"] = float(rng.gamma(2, 5))
        rows.append(row)
    return rows


def test_metric_boxplot_writes_png(tmp_path: Path) -> None:
    out = save_metric_boxplot(tmp_path / "plots" / "metrics.png", metric_rows(hd95=False), title="run 1")
    assert out == tmp_path / "plots" / "metrics.png"
    read_png(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["metrics.png"]


def test_metric_boxplot_is_reproducible(tmp_path: Path) -> None:
    a = save_metric_boxplot(tmp_path / "a.png", metric_rows())
    b = save_metric_boxplot(tmp_path / "b.png", metric_rows())
    assert a.read_bytes() == b.read_bytes()  # seeded jitter


def test_metric_boxplot_adds_a_distance_subplot_for_hd95(tmp_path: Path) -> None:
    without = read_png(save_metric_boxplot(tmp_path / "a.png", metric_rows(hd95=False)))
    with_hd95 = read_png(save_metric_boxplot(tmp_path / "b.png", metric_rows(hd95=True)))
    assert with_hd95.shape[1] > without.shape[1]


def test_metric_boxplot_skips_missing_nan_none_and_empty_metrics(tmp_path: Path) -> None:
    rows = metric_rows(10)
    rows[0]["dice"] = None
    rows[1]["dice"] = float("nan")
    rows[2]["hd95"] = float("inf")
    del rows[3]["iou"]
    for row in rows:
        row["recall"] = None  # a metric with no value at all
    read_png(save_metric_boxplot(tmp_path / "m.png", rows, metrics=("dice", "iou", "recall", "hausdorff")))
    read_png(save_metric_boxplot(tmp_path / "empty.png", [], title="no images"))
    read_png(save_metric_boxplot(tmp_path / "one.png", [{"dice": 0.5}], metrics="dice"))
    read_png(save_metric_boxplot(tmp_path / "nan_hd.png", [{"dice": 0.5, "hd95": float("nan")}]))


def test_metric_boxplot_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="dice"):
        save_metric_boxplot(tmp_path / "x.png", [{"dice": "0.9"}])
    with pytest.raises(TypeError, match=r"rows\[1\]"):
        save_metric_boxplot(tmp_path / "x.png", [{"dice": 0.9}, 0.8])
    with pytest.raises(TypeError, match="rows"):
        save_metric_boxplot(tmp_path / "x.png", {"dice": [0.9]})
    with pytest.raises(ValueError, match="metrics"):
        save_metric_boxplot(tmp_path / "x.png", [{"dice": 0.9}], metrics=())
    with pytest.raises(ValueError, match="png"):
        save_metric_boxplot(tmp_path / "x.svg", [{"dice": 0.9}])
    assert not list(tmp_path.iterdir())


def test_grouped_boxplot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    groups = {margin: list(rng.beta(20 - margin / 3, 2, 20)) for margin in (0, 5, 10, 20, 30)}
    groups[30][0] = None
    groups[20] = [float("nan")]  # empty after skipping
    out = save_grouped_boxplot(tmp_path / "margins.png", groups, xlabel="box margin (px)", title="Dice per margin")
    assert out == tmp_path / "margins.png"
    read_png(out)
    read_png(
        save_grouped_boxplot(
            tmp_path / "hd.png", {"oracle": [3.0, 7.5, 12.0], "mean mask": np.array([20.0, 41.0])}, ylabel="HD95 (px)"
        )
    )
    read_png(save_grouped_boxplot(tmp_path / "none.png", {}))
    read_png(save_grouped_boxplot(tmp_path / "lim.png", {"a": [0.2, 0.4]}, ylim=(0.0, 0.5)))
    with pytest.raises(TypeError, match="groups"):
        save_grouped_boxplot(tmp_path / "x.png", [[0.9, 0.8]])
    with pytest.raises(TypeError, match="groups"):
        save_grouped_boxplot(tmp_path / "x.png", {"a": ["high"]})


def test_no_pyplot_and_no_gui_backend() -> None:
    code = textwrap.dedent(
        """
        import sys, tempfile, pathlib
        import numpy as np
        from medsamkit.evaluation._plots import save_metric_boxplot, save_grouped_boxplot, save_overlay
        d = pathlib.Path(tempfile.mkdtemp())
        save_metric_boxplot(d / "m.png", [{"dice": 0.9, "iou": 0.8, "hd95": 3.0}, {"dice": 0.7}], title="t")
        save_grouped_boxplot(d / "g.png", {"0": [0.9, 0.8], "5": []}, title="t")
        save_overlay(d / "o.png", np.eye(8), pred=np.eye(8), title="t")
        print("pyplot" if "matplotlib.pyplot" in sys.modules else "clean")
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("MPLBACKEND", None)  # the automatic backend is what used to pull in pyplot
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"


def test_plot_overlay_shows_overlay_image_on_given_axes():
    """Issue 10: a public overlay helper for notebooks (``medsamkit.plot_overlay``)."""
    from matplotlib.figure import Figure

    import medsamkit as msk

    image = np.tile(np.arange(40, dtype=np.uint8), (30, 1))
    pred = np.zeros((30, 40), bool)
    pred[5:20, 10:30] = True
    ax = Figure().add_subplot()
    assert msk.plot_overlay(image, pred, prompts=msk.Prompts(box_xyxy=[[10, 5, 29, 19]]), ax=ax, title="t") is ax
    shown = ax.get_images()[0].get_array()
    np.testing.assert_array_equal(
        np.asarray(shown), msk.overlay_image(image, pred=pred, prompts=msk.Prompts(box_xyxy=[[10, 5, 29, 19]]))
    )
    assert ax.get_title() == "t"

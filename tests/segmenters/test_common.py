"""Geometry shared by SAM-family segmenters (``segmenters/_common.py``): hand-checked numbers, no model."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest
import torch

from medsamkit import ImageEncoding, Prompts
from medsamkit.segmenters import RESIZE_FILTERS, check_resize_filter, resize_image
from medsamkit.segmenters._common import check_encoding, longest_side_size_hw, prompts_to_model, to_rgb_float

# ---------------------------------------------------------------------------------------
# longest_side_size_hw
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size_hw", "expected"),
    [
        ((1000, 1000), (256, 256)),  # 1000 * 0.256 = 256.0
        ((1024, 841), (256, 210)),  # 841 * 0.25 = 210.25 -> 210 (not 211)
        ((841, 1024), (210, 256)),
        ((335, 190), (256, 145)),  # 190 * 256 / 335 = 145.19 -> 145
        ((512, 257), (256, 129)),  # 257 * 0.5 = 128.5 -> 129: half up, not Python's round-half-even 128
        ((256, 100), (256, 100)),  # already fits: unchanged
        ((100, 50), (256, 128)),  # small images are enlarged
        ((2, 1200), (1, 256)),  # 2 * 256 / 1200 = 0.43 -> at least one pixel, not 0
    ],
)
def test_longest_side_size_hand_cases(size_hw, expected) -> None:
    assert longest_side_size_hw(size_hw, 256) == expected
    assert all(isinstance(v, int) for v in longest_side_size_hw(size_hw, 256))


def test_longest_side_matches_upstream_formula_on_many_sizes() -> None:
    # LiteMedSAM's resize_longest_side: scale = 256 / max(h, w); int(side * scale + 0.5).
    rng = np.random.default_rng(0)
    for h, w in rng.integers(2, 5000, size=(200, 2)):
        scale = 256 * 1.0 / max(h, w)
        expected = (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
        got = longest_side_size_hw((int(h), int(w)), 256)
        assert got == expected
        assert max(got) == 256


# ---------------------------------------------------------------------------------------
# prompts_to_model
# ---------------------------------------------------------------------------------------


def test_prompts_to_model_scales_each_axis_by_its_own_ratio() -> None:
    # 1024 x 841 (H x W) -> 256 x 210: sy = 256/1024 = 0.25, sx = 210/841 = 0.2497027...
    prompts = Prompts(
        box_xyxy=[[100, 200, 300, 400], [0, 0, 841, 1024]],
        points_xy=[[[420.5, 512.0], [0.0, 4.0]], [[841.0, 1024.0], [84.1, 10.0]]],
        point_labels=[[1, 0], [1, 1]],
    )
    boxes, (coords, labels) = prompts_to_model(prompts, (1024, 841), (256, 210))
    assert boxes.dtype == torch.float32 and boxes.shape == (2, 4)
    # 100 * 210 / 841 = 24.97027, 300 * 210 / 841 = 74.91082 (hand-computed).
    np.testing.assert_allclose(boxes.numpy(), [[24.97027, 50.0, 74.91082, 100.0], [0.0, 0.0, 210.0, 256.0]], rtol=0, atol=1e-4)
    assert coords.dtype == torch.float32 and coords.shape == (2, 2, 2)
    # 420.5 = 841 / 2 -> 105; 84.1 = 841 / 10 -> 21.
    np.testing.assert_allclose(coords.numpy(), [[[105.0, 128.0], [0.0, 1.0]], [[210.0, 256.0], [21.0, 2.5]]], rtol=0, atol=1e-4)
    assert labels.dtype == torch.int64
    assert labels.tolist() == [[1, 0], [1, 1]]


def test_prompts_to_model_square_and_missing_parts() -> None:
    # Shenzhen CXR: 1000 x 1000 -> 256 x 256, scale 0.256 on both axes.
    boxes, points = prompts_to_model(Prompts(box_xyxy=[[165, 101, 476, 713]]), (1000, 1000), (256, 256))
    assert points is None
    np.testing.assert_allclose(boxes.numpy(), [[42.24, 25.856, 121.856, 182.528]], rtol=0, atol=1e-4)

    boxes, (coords, labels) = prompts_to_model(Prompts(points_xy=[[[500, 250]]]), (1000, 1000), (256, 256))
    assert boxes is None
    np.testing.assert_allclose(coords.numpy(), [[[128.0, 64.0]]], rtol=0, atol=1e-5)
    assert labels.tolist() == [[1]]  # points without labels are foreground


def test_prompts_to_model_does_not_change_the_prompts() -> None:
    prompts = Prompts(box_xyxy=[[100, 200, 300, 400]], points_xy=[[[10, 20]]])
    prompts_to_model(prompts, (1024, 841), (256, 210))
    assert prompts.box_xyxy.tolist() == [[100, 200, 300, 400]]
    assert prompts.points_xy.tolist() == [[[10, 20]]]


# ---------------------------------------------------------------------------------------
# to_rgb_float
# ---------------------------------------------------------------------------------------


def _gray(h: int = 120, w: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


def test_to_rgb_float_shape_dtype_and_values_uint8() -> None:
    image = _gray()
    out = to_rgb_float(image, (40, 30))
    assert out.shape == (40, 30, 3) and out.dtype == np.float32
    expected = cv2.resize(image, (30, 40), interpolation=cv2.INTER_AREA).astype(np.float32)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda g: g.astype(np.uint16) * 257,
        lambda g: g.astype(np.float32) / 255,
        lambda g: g.astype(np.float64) * 3.7 - 100,
        lambda g: g.astype(np.int16) - 1000,  # CT-like signed values
        lambda g: g.astype(np.int32),
        lambda g: g[..., None],
        lambda g: np.repeat(g[..., None], 3, axis=2),
        lambda g: np.dstack([g, g, g, np.full_like(g, 7)]),
    ],
    ids=["uint16", "float32", "float64", "int16", "int32", "hw1", "rgb", "rgba"],
)
def test_to_rgb_float_dtypes_and_channels(make) -> None:
    image = make(_gray())
    out = to_rgb_float(image, (40, 30))
    assert out.shape == (40, 30, 3) and out.dtype == np.float32
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_to_rgb_float_rgba_ignores_alpha() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
    alpha = np.random.default_rng(2).integers(0, 256, size=(50, 70, 1), dtype=np.uint8)
    rgba = np.concatenate([rgb, alpha], axis=2)
    np.testing.assert_array_equal(to_rgb_float(rgba, (25, 35)), to_rgb_float(rgb, (25, 35)))


def test_to_rgb_float_bool_is_the_0_255_image() -> None:
    mask = _gray() > 128
    np.testing.assert_array_equal(to_rgb_float(mask, (40, 30)), to_rgb_float(mask.astype(np.uint8) * 255, (40, 30)))
    # The resized edges keep intermediate values (0/1 would have been rounded away).
    levels = np.unique(to_rgb_float(mask, (40, 30)))
    assert len(levels) > 2 and levels.min() >= 0 and levels.max() <= 255


def test_to_rgb_float_non_contiguous_input() -> None:
    image = _gray(200, 150)
    view = image[::-1, ::2]
    np.testing.assert_array_equal(to_rgb_float(view, (64, 38)), to_rgb_float(view.copy(), (64, 38)))


@pytest.mark.parametrize("shape", [(64, 48), (64, 48, 3), (64, 48, 4)])
def test_to_rgb_float_never_returns_the_callers_memory(shape) -> None:
    # Without a resize (image already at the target size) the result must still be a copy:
    # LiteMedSAM normalises it in place.
    image = np.random.default_rng(3).uniform(10, 20, size=shape).astype(np.float32)
    before = image.copy()
    out = to_rgb_float(image, (64, 48))
    assert not np.shares_memory(out, image)
    out -= 5
    np.testing.assert_array_equal(image, before)


def test_to_rgb_float_uint16_has_no_full_size_float_copy() -> None:
    image = _gray(3000, 2400).astype(np.uint16) * 257  # 14.4 MB as uint16, 28.8 MB as one float32 channel
    tracemalloc.start()
    try:
        out = to_rgb_float(image, (256, 205))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (256, 205, 3) and out.dtype == np.float32
    # Resized in uint16 first: not even one full-size copy in any dtype.
    assert peak < image.nbytes / 2, f"peak {peak / 1e6:.1f} MB"
    expected = cv2.resize(image, (205, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    np.testing.assert_array_equal(out[..., 1], expected)


# ---------------------------------------------------------------------------------------
# resize filters (resize_image, to_rgb_float(..., resize_filter))
# ---------------------------------------------------------------------------------------


def test_resize_filters_are_the_documented_four() -> None:
    assert RESIZE_FILTERS == ("area", "linear", "pil-bilinear", "pil-bicubic")


@pytest.mark.parametrize("bad", ["nearest", "AREA", "", None, 1, ("area",)])
def test_resize_filter_is_validated(bad) -> None:
    with pytest.raises(ValueError, match=r"resize_filter: expected one of 'area', 'linear', 'pil-bilinear', 'pil-bicubic', got"):
        check_resize_filter(bad)
    with pytest.raises(ValueError, match="resize_filter"):
        to_rgb_float(_gray(), (40, 30), bad)
    with pytest.raises(ValueError, match="resize_filter"):
        resize_image(_gray(), (40, 30), bad)


# (dtype maker, dtype after an OpenCV filter, dtype after a Pillow filter)
_DTYPES = {
    "uint8": (lambda g: g, np.uint8, np.uint8),
    "uint16": (lambda g: g.astype(np.uint16) * 257, np.uint16, np.float32),
    "float32": (lambda g: g.astype(np.float32) / 255, np.float32, np.float32),
    "float64": (lambda g: g.astype(np.float64) * 3.7 - 100, np.float64, np.float32),
}


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
@pytest.mark.parametrize("dtype", list(_DTYPES))
def test_resize_shape_and_dtype_per_filter(resize_filter, dtype) -> None:
    make, cv2_dtype, pil_dtype = _DTYPES[dtype]
    image = make(_gray())
    resized = resize_image(image, (40, 30), resize_filter)
    assert resized.shape == (40, 30)
    assert resized.dtype == (pil_dtype if resize_filter.startswith("pil") else cv2_dtype)
    out = to_rgb_float(image, (40, 30), resize_filter)
    assert out.shape == (40, 30, 3) and out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 0], resized.astype(np.float32))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    # Values stay in the input's range (bicubic may overshoot a little at edges).
    lo, hi = float(image.min()), float(image.max())
    slack = 0.15 * (hi - lo) if resize_filter == "pil-bicubic" else 1e-3 * (hi - lo)
    assert out.min() >= lo - slack and out.max() <= hi + slack


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
def test_constant_image_stays_constant(resize_filter) -> None:
    for image in (np.full((90, 70), 200, np.uint8), np.full((90, 70), 40000, np.uint16), np.full((90, 70), -3.5)):
        out = to_rgb_float(image, (37, 29), resize_filter)
        np.testing.assert_allclose(out, float(image.flat[0]), rtol=1e-6)


def test_exact_halving_area_and_linear_are_the_2x2_block_mean() -> None:
    # Hand reference: halving with INTER_AREA averages 2 x 2 blocks; INTER_LINEAR samples
    # midway between pixel centres, which is the same average.
    image = np.random.default_rng(4).uniform(0, 1000, size=(64, 48))
    blocks = image.reshape(32, 2, 24, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(resize_image(image, (32, 24), "area"), blocks, rtol=1e-12)
    np.testing.assert_allclose(resize_image(image, (32, 24), "linear"), blocks, rtol=1e-12)


def test_pil_filters_are_antialiased_when_shrinking() -> None:
    # Stripes of period 3 px (0, 0, 255) shrunk 4x: the mean is 85. INTER_LINEAR samples two
    # pixels per output (std 60 here), INTER_AREA averages each 4-pixel cell (64 or 128:
    # std 30), Pillow's bilinear/bicubic widen the kernel to 8+ pixels and come close to flat grey.
    stripes = np.tile(np.array([0, 0, 255], np.uint8), 40)[None, :].repeat(60, axis=0)  # (60, 120)
    std = {f: resize_image(stripes, (15, 30), f).astype(float).std() for f in RESIZE_FILTERS}
    assert std["pil-bilinear"] < 10 and std["pil-bicubic"] < 10
    assert 20 < std["area"] < 40 and std["linear"] > 50


def test_pil_uint16_and_float_paths_agree_and_uint8_uses_pillow() -> None:
    from PIL import Image

    g = _gray(101, 77)
    as16 = resize_image(g.astype(np.uint16) * 257, (50, 38), "pil-bilinear")
    as_float = resize_image(g.astype(np.float64) * 257, (50, 38), "pil-bilinear")
    np.testing.assert_allclose(as16, as_float, rtol=1e-6)
    # uint8 goes through Pillow's own 8-bit mode: fixed-point weights and rounding, within 1 of the float result.
    reference = np.asarray(Image.fromarray(g).resize((38, 50), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(resize_image(g, (50, 38), "pil-bilinear"), reference)
    np.testing.assert_allclose(reference.astype(float), as_float / 257, atol=1.0)


@pytest.mark.parametrize("resize_filter", ["pil-bilinear", "pil-bicubic"])
def test_pil_rgb_float_channels_are_resized_independently(resize_filter) -> None:
    rgb = np.random.default_rng(5).uniform(-50, 50, size=(80, 60, 3)).astype(np.float32)
    out = resize_image(rgb, (40, 30), resize_filter)
    assert out.shape == (40, 30, 3) and out.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], resize_image(rgb[..., c], (40, 30), resize_filter))


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
def test_resize_never_changes_the_input(resize_filter) -> None:
    image = _gray(70, 50).astype(np.uint16)
    before = image.copy()
    out = to_rgb_float(image[::-1], (35, 25), resize_filter)
    out -= 1
    np.testing.assert_array_equal(image, before)


# ---------------------------------------------------------------------------------------
# check_encoding
# ---------------------------------------------------------------------------------------


def _encoding(model_id: str) -> ImageEncoding:
    return ImageEncoding(features=np.zeros(1), size_hw=(4, 4), input_size_hw=(4, 4), model_id=model_id)


def test_check_encoding_accepts_its_own_model() -> None:
    assert check_encoding(_encoding("litemedsam:abc"), "litemedsam:abc") is None


def test_check_encoding_refuses_another_model() -> None:
    with pytest.raises(ValueError, match=r"^encoding: .*'litemedsam:abc'.*'fake:intensity:20'"):
        check_encoding(_encoding("fake:intensity:20"), "litemedsam:abc")


@pytest.mark.parametrize("bad", [None, {"features": 0}, torch.zeros(1, 256, 64, 64), np.zeros((4, 4))])
def test_check_encoding_refuses_non_encodings(bad) -> None:
    with pytest.raises(TypeError, match=r"^encoding: expected an ImageEncoding"):
        check_encoding(bad, "litemedsam:abc")


def test_unavailable_device_is_a_clear_value_error(monkeypatch):
    """Issue 10: ``--device cuda`` without a GPU ended in a traceback from deep inside torch."""
    import torch

    from medsamkit import LiteMedSAM
    from medsamkit.segmenters._common import check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device: 'cuda'.*no usable CUDA GPU.*device='cpu'"):
        check_device("cuda")
    with pytest.raises(ValueError, match="device: 'cuda:1'"):
        LiteMedSAM(device="cuda:1")
    with pytest.raises(ValueError, match="device: expected a torch device"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")


def test_segmenters_are_callable_one_shot(tmp_path):
    """Issue 10: ``seg(image, boxes=...)`` as in other SAM front-ends."""
    from medsamkit import Pipeline
    from medsamkit._cache import CachedSegmenter
    from medsamkit.data import write_image
    from medsamkit.prompters import FixedPrompter
    from medsamkit.testing import FakeSegmenter, make_blob_image

    image, _ = make_blob_image((40, 52), seed=3)
    seg = FakeSegmenter(mode="box")
    result = seg(image, boxes=(5, 6, 20, 30))
    reference = Pipeline(FixedPrompter(Prompts(box_xyxy=[[5, 6, 20, 30]])), seg)(image)
    np.testing.assert_array_equal(result.mask, reference.mask)
    assert result.mask.sum() == 16 * 25
    write_image(tmp_path / "i.png", image)
    cached = CachedSegmenter(FakeSegmenter(mode="box"), tmp_path / "cache")
    np.testing.assert_array_equal(cached(tmp_path / "i.png", prompts=[[5, 6, 20, 30]]).mask, result.mask)
    points = seg(image, points=[[10, 12]], labels=[1])
    assert points.prompts.points_xy.shape == (1, 1, 2)
    with pytest.raises(ValueError, match="give boxes"):
        seg(image)
    with pytest.raises(ValueError, match="not both"):
        seg(image, boxes=(1, 1, 5, 5), prompts=[[1, 1, 5, 5]])


@pytest.mark.real_model
def test_litemedsam_one_shot_equals_its_pipeline(litemedsam):
    from medsamkit import Pipeline
    from medsamkit.prompters import FixedPrompter
    from medsamkit.testing import make_blob_image

    image, mask = make_blob_image((64, 80), seed=5)
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max(), ys.max())
    one = litemedsam(image, boxes=box)
    via = Pipeline(FixedPrompter(Prompts(box_xyxy=[box])), litemedsam)(image)
    np.testing.assert_array_equal(one.mask, via.mask)
    assert one.mask.any()

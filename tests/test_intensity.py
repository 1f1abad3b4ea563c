"""Tests for medsamkit._intensity: Window, PercentileClip, CLAHE and their use as pipeline pre-processing."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medsamkit import CLAHE, OracleBoxPrompter, PercentileClip, Pipeline, Window
from medsamkit._intensity import WINDOW_PRESETS, parse_window
from medsamkit.testing import FakeSegmenter, make_blob_image


def test_window_maps_level_and_edges():
    hu = np.array([[-1000, -160, 40], [240, 1000, 0]], dtype=np.int16)
    out = Window(40, 400)(hu)
    assert out.dtype == np.uint8
    # -160 and 240 are the window's edges, 40 its centre; outside clips.
    assert out.tolist() == [[0, 0, 128], [255, 255, round((0 + 160) * 255 / 400)]]


def test_presets_and_parse():
    assert WINDOW_PRESETS["abdomen"] == (40.0, 400.0) == WINDOW_PRESETS["soft-tissue"]
    for name in ("liver", "lung", "bone", "brain"):
        assert name in WINDOW_PRESETS
    assert parse_window("lung").params() == {"level": -600.0, "width": 1500.0}
    assert parse_window("50,350").params() == {"level": 50.0, "width": 350.0}
    with pytest.raises(ValueError, match=r"window: expected a preset .*'LEVEL,WIDTH'.*got 'abdomin'"):
        parse_window("abdomin")
    with pytest.raises(ValueError, match="width: expected a positive"):
        Window(40, 0)
    with pytest.raises(ValueError, match="preset"):
        Window.preset("nope")


def test_percentile_clip_ignores_outliers():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(50, 50)).astype(np.float32)
    image[0, 0] = 1e6  # one hot pixel would flatten a min-max scaling
    out = PercentileClip(1, 99)(image)
    assert out.dtype == np.uint8
    assert 100 < np.median(out) < 155
    with pytest.raises(ValueError, match="low, high"):
        PercentileClip(90, 10)


def test_clahe_matches_opencv_and_keeps_shape():
    import cv2

    image, _ = make_blob_image((64, 64), seed=1)
    out = CLAHE(clip_limit=3.0, tile_grid_size=4)(image)
    expected = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(4, 4)).apply(image)
    assert np.array_equal(out, expected)
    rgb = np.stack([image] * 3, axis=2)
    assert CLAHE()(rgb).shape == rgb.shape


def test_pipeline_preprocess_runs_before_segmenter_and_is_saved(tmp_path):
    image, mask = make_blob_image((64, 80), seed=2)
    hu = image.astype(np.int16) * 8 - 1024  # a fake CT in HU
    seg = FakeSegmenter()
    pipe = Pipeline(OracleBoxPrompter(), seg, preprocess=[Window(40, 400), CLAHE()])
    result = pipe(hu, target=mask)
    assert result.mask.shape == mask.shape
    assert pipe.config.preprocess[0].name == "window"
    assert pipe.config.preprocess[0].params == {"level": 40.0, "width": 400.0}
    pipe.save(tmp_path)
    back = Pipeline.load(tmp_path)
    assert [type(s) for s in back.preprocess] == [Window, CLAHE]
    assert back.preprocess[0].params() == pipe.preprocess[0].params()
    # The segmenter sees the windowed image, not the HU values.
    seen = pipe.preprocess_image(hu)
    assert seen.dtype == np.uint8
    assert np.array_equal(seen, CLAHE()(Window(40, 400)(hu)))


def test_pipeline_preprocess_rejects_non_callable():
    with pytest.raises(TypeError, match=r"preprocess\[0\]: expected a callable image -> image"):
        Pipeline(OracleBoxPrompter(), FakeSegmenter(), preprocess=["window"])
    with pytest.raises(TypeError, match="preprocess: expected a sequence"):
        Pipeline(OracleBoxPrompter(), FakeSegmenter(), preprocess=Window(40, 400))


def test_hu_image_without_step_is_said_once(caplog):
    image, mask = make_blob_image((32, 40), seed=3)
    hu = image.astype(np.int16) - 1024
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
    with caplog.at_level(logging.WARNING, logger="medsamkit"):
        pipe(hu, target=mask)
        pipe(hu, target=mask)
    said = [r for r in caplog.records if "without an intensity step" in r.getMessage()]
    assert len(said) == 1
    assert "min-max" in said[0].getMessage() and "int16" in said[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medsamkit"):
        Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask)  # uint8: nothing to say
        Pipeline(OracleBoxPrompter(), FakeSegmenter(), preprocess=[Window(40, 400)])(hu, target=mask)
    assert not [r for r in caplog.records if "intensity step" in r.getMessage()]


def test_a_copy_made_by_replace_shares_the_note_said_once(caplog):
    image, mask = make_blob_image((32, 40), seed=3)
    hu = image.astype(np.int16) - 1024
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
    with caplog.at_level(logging.WARNING, logger="medsamkit"):
        pipe.replace(threshold=0.6)(hu, target=mask)  # the copy says it ...
        pipe(hu, target=mask)  # ... for its original too
        pipe.replace(threshold=0.4)(hu, target=mask)
    assert len([r for r in caplog.records if "without an intensity step" in r.getMessage()]) == 1
    with caplog.at_level(logging.WARNING, logger="medsamkit"):
        Pipeline(OracleBoxPrompter(), FakeSegmenter())(hu, target=mask)  # another pipeline says it again
    assert len([r for r in caplog.records if "without an intensity step" in r.getMessage()]) == 2

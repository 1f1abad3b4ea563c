"""Tests for medsamkit._pipeline (Pipeline, PipelineConfig) with the weight-free FakeSegmenter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydantic import ValidationError

from medsamkit import (
    FillHoles,
    KeepLargestComponents,
    Pipeline,
    PipelineConfig,
    Prompts,
    RemoveSmallComponents,
    SegmentationResult,
)
from medsamkit._types import ImageEncoding, PromptMasks
from medsamkit.prompters import FixedPrompter, MeanMaskPointPrompter, OracleBoxPrompter, PerturbedBoxPrompter
from medsamkit.testing import FakeSegmenter, make_blob_image


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def bounding_box_mask(mask: np.ndarray) -> np.ndarray:
    """The filled rectangle from the first to the last foreground row and column."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    out = np.zeros_like(mask, dtype=bool)
    out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return out


def two_squares() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """64x64 image: bright 10x10 square (rows/cols 10-19) and 4x4 square (rows/cols 40-43)."""
    image = np.zeros((64, 64), np.uint8)
    big = np.zeros((64, 64), bool)
    big[10:20, 10:20] = True
    small = np.zeros((64, 64), bool)
    small[40:44, 40:44] = True
    image[big | small] = 250
    return image, big, small


class RampSegmenter:
    """Duck-typed segmenter whose probability rises linearly with x: p = x / (W - 1) in every box."""

    model_id = "ramp"

    def __init__(self):
        self.encode_calls = 0

    def encode(self, image):
        self.encode_calls += 1
        h, w = image.shape[:2]
        return ImageEncoding(features=None, size_hw=(h, w), input_size_hw=(h, w), model_id="ramp")

    def decode(self, encoding, prompts):
        h, w = encoding.size_hw
        ramp = np.broadcast_to(np.arange(w, dtype=np.float32) / (w - 1), (h, w))
        return PromptMasks(probabilities=np.repeat(ramp[None], prompts.n, axis=0), scores=np.ones(prompts.n, np.float32))


class TestSegmentation:
    def test_oracle_box_segments_blob(self):
        image, mask = make_blob_image(seed=0)
        segmenter = FakeSegmenter()
        result = Pipeline(OracleBoxPrompter(), segmenter)(image, target=mask)
        assert isinstance(result, SegmentationResult)
        assert result.mask.shape == mask.shape and result.mask.dtype == bool
        assert result.probabilities.shape == mask.shape and result.probabilities.dtype == np.float32
        assert result.prompt_masks.shape == (1, *mask.shape)
        assert result.scores.shape == (1,) and result.scores.dtype == np.float32
        assert result.note is None and result.has_prompts
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        np.testing.assert_array_equal(result.prompts.box_xyxy, [[cols[0], rows[0], cols[-1], rows[-1]]])
        assert dice(result.mask, mask) > 0.9
        # nothing outside the box
        assert not (result.mask & ~bounding_box_mask(mask)).any()
        assert segmenter.encode_calls == 1 and segmenter.decode_calls == 1

    @pytest.mark.parametrize(
        "kind", ["uint8", "uint16", "float32", "float64", "rgb", "rgba", "rgb16", "single-channel", "int-negative"]
    )
    def test_image_kinds(self, kind):
        dtype = {"uint16": np.uint16, "float32": np.float32, "float64": np.float64, "rgb16": np.uint16}.get(kind, np.uint8)
        image, mask = make_blob_image((80, 100), seed=4, dtype=dtype)
        if kind in ("rgb", "rgb16"):
            image = np.stack([image, image, image], axis=-1)
        elif kind == "rgba":
            alpha = np.random.default_rng(1).integers(0, 256, image.shape, dtype=np.uint8)
            image = np.stack([image, image, image, alpha], axis=-1)
        elif kind == "single-channel":
            image = image[..., None]
        elif kind == "int-negative":
            image = image.astype(np.int32) - 1000
        result = Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask)
        assert result.mask.shape == (80, 100)
        assert dice(result.mask, mask) > 0.9

    def test_two_blobs_union(self):
        image, mask = make_blob_image((96, 192), n_blobs=2, seed=1)
        result = Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask)
        assert result.prompts.n == 2
        assert dice(result.mask, mask) > 0.9
        np.testing.assert_array_equal(result.mask, result.prompt_masks.any(axis=0))
        # pixel-wise maximum of 0.9 (bright, in a box) / 0.1 (dark, in a box) / 0 (outside every box)
        np.testing.assert_allclose(np.unique(result.probabilities), [0.0, 0.1, 0.9], rtol=1e-6)
        np.testing.assert_array_equal(result.probabilities > 0.5, result.mask)
        boxes = result.prompts.box_xyxy.astype(int)
        in_box = np.zeros(mask.shape, bool)
        for x0, y0, x1, y1 in boxes:
            in_box[y0 : y1 + 1, x0 : x1 + 1] = True
        np.testing.assert_array_equal(result.probabilities > 0, in_box)

    def test_combine_best_picks_higher_score(self):
        image, big, small = two_squares()
        # prompt 0: box rows/cols 30-53 (576 px) around the small square (16 px):
        #           score = (16 * 0.9 + 560 * 0.1) / 576
        # prompt 1: box rows/cols 5-24 (400 px) around the big square (100 px):
        #           score = (100 * 0.9 + 300 * 0.1) / 400 = 0.3
        prompter = FixedPrompter(Prompts(box_xyxy=[[30, 30, 53, 53], [5, 5, 24, 24]]))
        best = Pipeline(prompter, FakeSegmenter(), combine="best")(image)
        np.testing.assert_allclose(best.scores, [(16 * 0.9 + 560 * 0.1) / 576, 0.3], rtol=1e-5)
        np.testing.assert_array_equal(best.mask, big)
        np.testing.assert_array_equal(best.prompt_masks, [small, big])
        assert best.probabilities[12, 12] == pytest.approx(0.9) and best.probabilities[41, 41] == 0
        union = Pipeline(prompter, FakeSegmenter(), combine="union")(image)
        np.testing.assert_array_equal(union.mask, big | small)
        assert union.probabilities[41, 41] == pytest.approx(0.9)

    def test_combine_best_independent_of_prompt_order(self):
        image, big, _ = two_squares()
        prompter = FixedPrompter(Prompts(box_xyxy=[[5, 5, 24, 24], [30, 30, 53, 53]]))
        np.testing.assert_array_equal(Pipeline(prompter, FakeSegmenter(), combine="best")(image).mask, big)

    def test_point_prompts(self):
        image, big, _ = two_squares()
        prompter = FixedPrompter(Prompts(points_xy=[[[14, 14]]]))
        result = Pipeline(prompter, FakeSegmenter(point_radius=10))(image)
        np.testing.assert_array_equal(result.mask, big)

    def test_explicit_prompts_bypass_the_prompter(self):
        image, big, _ = two_squares()
        pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
        result = pipe(image, prompts=Prompts(box_xyxy=[[5, 5, 24, 24]]))  # no target needed
        np.testing.assert_array_equal(result.mask, big)

    def test_prompts_clipped_to_image(self):
        image, big, small = two_squares()
        result = Pipeline(FixedPrompter(Prompts(box_xyxy=[[-20, -20, 100, 100]])), FakeSegmenter())(image)
        np.testing.assert_array_equal(result.prompts.box_xyxy, [[0, 0, 63, 63]])
        np.testing.assert_array_equal(result.mask, big | small)


class TestNoPrompt:
    def test_empty_target(self):
        image, _ = make_blob_image(seed=2)
        segmenter = FakeSegmenter()
        result = Pipeline(OracleBoxPrompter(), segmenter)(image, target=np.zeros(image.shape, bool))
        assert result.note == "no prompt"
        assert not result.has_prompts
        assert result.mask.shape == image.shape and result.mask.dtype == bool and not result.mask.any()
        assert result.probabilities.shape == image.shape and not result.probabilities.any()
        assert result.prompt_masks.shape == (0, *image.shape)
        assert result.scores.shape == (0,)
        assert segmenter.encode_calls == 0 and segmenter.decode_calls == 0

    def test_explicit_empty_prompts(self):
        result = Pipeline(OracleBoxPrompter(), FakeSegmenter())(np.zeros((8, 8)), prompts=Prompts.empty())
        assert result.note == "no prompt" and not result.mask.any()


class TestThresholdAndEncoding:
    def test_encoding_reused_and_threshold_monotonic(self):
        image, mask = make_blob_image(seed=3)
        segmenter = FakeSegmenter()
        pipe = Pipeline(OracleBoxPrompter(), segmenter)
        encoding = segmenter.encode(image)
        masks = {t: pipe.replace(threshold=t)(image, target=mask, encoding=encoding).mask for t in (0.05, 0.5, 0.95)}
        assert segmenter.encode_calls == 1
        assert segmenter.decode_calls == 3
        # FakeSegmenter gives 0.9 / 0.1 inside the box and 0 outside
        np.testing.assert_array_equal(masks[0.05], bounding_box_mask(mask))
        assert not masks[0.95].any()
        assert (masks[0.5] <= masks[0.05]).all() and (masks[0.95] <= masks[0.5]).all()
        assert dice(masks[0.5], mask) > 0.9

    def test_threshold_is_strict_and_monotonic_on_a_ramp(self):
        segmenter = RampSegmenter()
        image = np.zeros((5, 11))  # p = x / 10 for x in 0..10
        pipe = Pipeline(FixedPrompter(Prompts(box_xyxy=[[0, 0, 10, 4]])), segmenter)
        encoding = segmenter.encode(image)
        previous = None
        for threshold in (0.0, 0.15, 0.3, 0.5, 0.75, 1.0):
            mask = pipe.replace(threshold=threshold)(image, encoding=encoding).mask
            expected_columns = [x for x in range(11) if x / 10 > threshold]
            np.testing.assert_array_equal(np.flatnonzero(mask.all(axis=0)), expected_columns)
            assert mask.sum() == 5 * len(expected_columns)
            if previous is not None:
                assert (mask <= previous).all()
            previous = mask
        assert segmenter.encode_calls == 1

    def test_encoding_of_another_image_size(self):
        image, mask = make_blob_image((40, 50))
        other = FakeSegmenter().encode(np.zeros((50, 40)))
        with pytest.raises(ValueError, match=r"^encoding: expected an encoding of a \(40, 50\) image"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask, encoding=other)


class TestPostprocess:
    @staticmethod
    def ring_and_speck():
        image = np.zeros((40, 40), np.uint8)
        image[5:25, 5:25] = 255
        image[10:20, 10:20] = 0  # hole
        image[30:32, 30:32] = 255  # speck
        return image, FixedPrompter(Prompts(box_xyxy=[[0, 0, 39, 39]]))

    def test_without_postprocess(self):
        image, prompter = self.ring_and_speck()
        result = Pipeline(prompter, FakeSegmenter())(image)
        np.testing.assert_array_equal(result.mask, image > 0)

    def test_steps_applied_in_order(self):
        image, prompter = self.ring_and_speck()
        result = Pipeline(prompter, FakeSegmenter(), postprocess=[FillHoles(), KeepLargestComponents(1)])(image)
        expected = np.zeros((40, 40), bool)
        expected[5:25, 5:25] = True
        np.testing.assert_array_equal(result.mask, expected)
        # the per-prompt masks are the raw thresholded ones
        np.testing.assert_array_equal(result.prompt_masks[0], image > 0)

    def test_remove_small(self):
        image, prompter = self.ring_and_speck()
        result = Pipeline(prompter, FakeSegmenter(), postprocess=[RemoveSmallComponents(5)])(image)
        expected = image > 0
        expected[30:32, 30:32] = False
        np.testing.assert_array_equal(result.mask, expected)

    def test_custom_callable(self):
        image, prompter = self.ring_and_speck()
        result = Pipeline(prompter, FakeSegmenter(), postprocess=[lambda m: ~m])(image)
        np.testing.assert_array_equal(result.mask, image == 0)

    def test_step_returning_wrong_shape(self):
        image, prompter = self.ring_and_speck()
        pipe = Pipeline(prompter, FakeSegmenter(), postprocess=[lambda m: m[:10]])
        with pytest.raises(ValueError, match=r"^postprocess output: expected shape \(40, 40\)"):
            pipe(image)


class TestArguments:
    def test_bad_threshold(self):
        with pytest.raises(ValueError, match=r"^threshold: expected a number in \[0, 1\], got 1.5"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter(), threshold=1.5)
        with pytest.raises(TypeError, match=r"^threshold: "):
            Pipeline(OracleBoxPrompter(), FakeSegmenter(), threshold="0.5")

    def test_bad_combine(self):
        with pytest.raises(ValueError, match=r"^combine: expected 'union' or 'best', got 'x'"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter(), combine="x")

    def test_non_callable_postprocess_step(self):
        with pytest.raises(TypeError, match=r"^postprocess\[1\]: expected a callable"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter(), postprocess=[FillHoles(), 42])

    @pytest.mark.parametrize("postprocess", [FillHoles(), 42, "fill-holes"])
    def test_postprocess_not_a_sequence(self, postprocess):
        with pytest.raises(TypeError, match=r"^postprocess: expected a sequence of callables"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter(), postprocess=postprocess)

    @pytest.mark.parametrize("segmenter", [object(), OracleBoxPrompter(), "litemedsam"])
    def test_not_a_segmenter(self, segmenter):
        with pytest.raises(TypeError, match=r"^segmenter: expected a Segmenter"):
            Pipeline(OracleBoxPrompter(), segmenter)

    @pytest.mark.parametrize("prompter", [object(), FakeSegmenter(), lambda image: Prompts.empty()])
    def test_not_a_prompter(self, prompter):
        with pytest.raises(TypeError, match=r"^prompter: expected a PromptProvider"):
            Pipeline(prompter, FakeSegmenter())

    def test_prompter_returning_wrong_type(self):
        class Bad:
            requires_target = False

            def __call__(self, image, *, target=None):
                return [[0, 0, 5, 5]]

        with pytest.raises(TypeError, match=r"^prompter: expected it to return Prompts, got list"):
            Pipeline(Bad(), FakeSegmenter())(np.zeros((8, 8)))

    def test_image_with_nan(self):
        image = np.zeros((16, 16), np.float32)
        image[3, 4] = np.nan
        with pytest.raises(ValueError, match=r"^image: expected finite values"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=np.ones((16, 16)))

    def test_channel_first_image(self):
        with pytest.raises(ValueError, match=r"^image: .*channels last.*\(3, 32, 32\)"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter())(np.zeros((3, 32, 32)), target=np.ones((32, 32)))

    def test_missing_target(self):
        image, _ = make_blob_image()
        with pytest.raises(ValueError, match=r"^target: OracleBoxPrompter"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter())(image)
        with pytest.raises(ValueError, match=r"^target: PerturbedBoxPrompter"):
            Pipeline(PerturbedBoxPrompter(margin=5), FakeSegmenter())(image)

    def test_target_shape_mismatch(self):
        image, mask = make_blob_image((40, 50))
        with pytest.raises(ValueError, match=r"^target: expected shape \(40, 50\).*got shape \(50, 40\)"):
            Pipeline(OracleBoxPrompter(), FakeSegmenter())(image, target=mask.T)

    def test_target_not_passed_to_prompters_that_do_not_need_it(self):
        seen = {}

        class NoTarget:
            requires_target = False

            def __call__(self, image):  # no target keyword at all
                seen["called"] = True
                return Prompts(box_xyxy=[[0, 0, 3, 3]])

        Pipeline(NoTarget(), FakeSegmenter())(np.zeros((8, 8)), target=np.ones((8, 8)))
        assert seen == {"called": True}


class TestReplace:
    def test_replace(self):
        segmenter = FakeSegmenter()
        pipe = Pipeline(OracleBoxPrompter(), segmenter, threshold=0.4, postprocess=[FillHoles()])
        other = pipe.replace(threshold=0.6, combine="best")
        assert other is not pipe
        assert (other.threshold, other.combine) == (0.6, "best")
        assert (pipe.threshold, pipe.combine) == (0.4, "union")
        assert other.segmenter is segmenter and other.prompter is pipe.prompter
        assert other.postprocess == pipe.postprocess

    def test_replace_validates(self):
        pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
        with pytest.raises(ValueError, match=r"^threshold: "):
            pipe.replace(threshold=2)
        with pytest.raises(TypeError, match=r"^replace: unknown arguments \['treshold'\]"):
            pipe.replace(treshold=0.3)

    def test_repr(self):
        text = repr(Pipeline(OracleBoxPrompter(), FakeSegmenter(), threshold=0.3, postprocess=[FillHoles()]))
        assert "OracleBoxPrompter(" in text and "FakeSegmenter(" in text
        assert "threshold=0.3" in text and "FillHoles()" in text


class TestConfig:
    def test_config_fields(self):
        pipe = Pipeline(
            PerturbedBoxPrompter(margin=5, seed=2),
            FakeSegmenter(mode="box"),
            threshold=0.35,
            combine="best",
            postprocess=[KeepLargestComponents(2), FillHoles()],
        )
        config = pipe.config
        assert isinstance(config, PipelineConfig)
        data = json.loads(json.dumps(config.model_dump(mode="json")))
        assert data["prompter"] == {"name": "perturbed-box", "params": PerturbedBoxPrompter(margin=5, seed=2).params()}
        assert data["segmenter"] == {"name": "fake", "params": {"mode": "box", "point_radius": 20}}
        assert data["threshold"] == 0.35 and data["combine"] == "best"
        assert data["postprocess"] == [{"name": "keep-largest", "params": {"n": 2}}, {"name": "fill-holes", "params": {}}]

    def test_from_config_dict(self):
        pipe = Pipeline.from_config(
            {"prompter": {"name": "oracle-box", "params": {"mode": "whole"}}, "segmenter": {"name": "fake"}, "threshold": 0.2}
        )
        assert isinstance(pipe.prompter, OracleBoxPrompter) and pipe.prompter.mode == "whole"
        assert isinstance(pipe.segmenter, FakeSegmenter)
        assert pipe.threshold == 0.2 and pipe.combine == "union" and pipe.postprocess == ()

    @pytest.mark.parametrize(
        "change",
        [{"threshold": 1.5}, {"combine": "x"}, {"extra": 1}],
    )
    def test_config_validation(self, change):
        data = {"prompter": {"name": "oracle-box"}, "segmenter": {"name": "fake"}, **change}
        with pytest.raises(ValidationError):
            PipelineConfig.model_validate(data)

    def test_unknown_component_name(self):
        with pytest.raises(ValueError, match=r"^prompter: expected one of"):
            Pipeline.from_config({"prompter": {"name": "magic"}, "segmenter": {"name": "fake"}})

    def test_from_config_refuses_python_components(self):
        pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter(), postprocess=[lambda m: m])
        config = pipe.config
        assert config.postprocess[0].name.startswith("python:")
        with pytest.raises(ValueError, match=r"^config: component python:.* is not registered"):
            Pipeline.from_config(config)

    def test_from_config_refuses_custom_prompter(self, tmp_path):
        class MyPrompter:
            requires_target = False

            def __call__(self, image, *, target=None):  # pragma: no cover - not called
                return Prompts.empty()

        pipe = Pipeline(MyPrompter(), FakeSegmenter())
        with pytest.raises(ValueError, match=r"^config: component python:.*MyPrompter is not registered"):
            Pipeline.from_config(pipe.config)  # the config documents the run but cannot rebuild it

    def test_save_refuses_a_lambda_postprocessor_at_save_time(self, tmp_path):
        # Before: save() wrote "python:builtins.function" and only load() failed.
        pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter(), postprocess=[FillHoles(), lambda m: m])
        with pytest.raises(
            ValueError, match=r"^postprocess\[1\]: python:builtins\.function is not a registered .*cannot be rebuilt"
        ):
            pipe.save(tmp_path / "run")
        assert not (tmp_path / "run" / "pipeline.json").exists()

    def test_save_refuses_a_custom_prompter_at_save_time(self, tmp_path):
        class MyPrompter:
            requires_target = False

            def __call__(self, image, *, target=None):  # pragma: no cover - not called
                return Prompts.empty()

        with pytest.raises(ValueError, match=r"^prompter: python:.*MyPrompter is not a registered medsamkit component"):
            Pipeline(MyPrompter(), FakeSegmenter()).save(tmp_path / "run")
        assert not (tmp_path / "run").exists()

    def test_a_component_registered_by_the_user_saves_and_loads(self, tmp_path, monkeypatch):
        from medsamkit import _registry, register_component

        # A registry of this test's own: the name must not outlive it.
        monkeypatch.setattr(_registry, "_TABLES", {kind: dict(table) for kind, table in _registry._TABLES.items()})
        monkeypatch.setattr(_registry, "_NAMES_OF", dict(_registry._NAMES_OF))

        @register_component("prompter", "test-center-box")
        class CenterBox:
            requires_target = False
            uses_encoding = False

            def __init__(self, *, size=4):
                self.size = size

            def params(self):
                return {"size": self.size}

            def __call__(self, image, *, target=None, encoding=None):
                h, w = image.shape[:2]
                return Prompts(box_xyxy=[[w // 2 - self.size, h // 2 - self.size, w // 2 + self.size, h // 2 + self.size]])

        pipe = Pipeline(CenterBox(size=3), FakeSegmenter())
        loaded = Pipeline.load(pipe.save(tmp_path / "run"))
        assert isinstance(loaded.prompter, CenterBox) and loaded.prompter.size == 3

    def test_save_load_oracle_box(self, tmp_path):
        pipe = Pipeline(
            OracleBoxPrompter(min_area=4),
            FakeSegmenter(),
            threshold=0.4,
            combine="best",
            postprocess=[RemoveSmallComponents(3), FillHoles()],
        )
        path = pipe.save(tmp_path / "run")
        assert path == tmp_path / "run" / "pipeline.json"
        assert json.loads(path.read_text())["prompter"] == {"name": "oracle-box", "params": {"mode": "components", "min_area": 4}}
        assert not (tmp_path / "run" / "prompter.npz").exists()
        loaded = Pipeline.load(tmp_path / "run")
        assert loaded.config == pipe.config
        assert isinstance(loaded.segmenter, FakeSegmenter) and loaded.segmenter is not pipe.segmenter
        image, mask = make_blob_image((96, 192), n_blobs=2, seed=7)
        a, b = pipe(image, target=mask), loaded(image, target=mask)
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.prompts.box_xyxy, b.prompts.box_xyxy)
        # the pipeline.json path itself also works
        assert Pipeline.load(path).config == pipe.config

    def test_save_load_perturbed_and_fixed(self, tmp_path):
        for prompter in (PerturbedBoxPrompter(margin=3, jitter=2, seed=5), FixedPrompter(Prompts(box_xyxy=[[3, 4, 30, 40]]))):
            pipe = Pipeline(prompter, FakeSegmenter(mode="box"))
            directory = tmp_path / type(prompter).__name__
            pipe.save(directory)
            loaded = Pipeline.load(directory)
            assert loaded.config == pipe.config
            image, mask = make_blob_image((60, 60), seed=1)
            np.testing.assert_array_equal(loaded(image, target=mask).mask, pipe(image, target=mask).mask)

    def test_save_load_mean_mask_points(self, tmp_path):
        masks = [make_blob_image((64, 64), seed=seed)[1] for seed in range(5)]
        prompter = MeanMaskPointPrompter(grid_size=32, points_per_component=2).fit(masks)
        pipe = Pipeline(prompter, FakeSegmenter(point_radius=8), threshold=0.3)
        path = pipe.save(tmp_path / "run")
        saved = json.loads(path.read_text())
        assert saved["prompter"]["name"] == "mean-mask-points"
        assert saved["prompter"]["params"]["state"] == "prompter.npz"
        assert (tmp_path / "run" / "prompter.npz").is_file()
        # the state path is relative, so the run directory can be moved
        moved = shutil.move(str(tmp_path / "run"), str(tmp_path / "elsewhere"))
        loaded = Pipeline.load(moved)
        assert isinstance(loaded.prompter, MeanMaskPointPrompter)
        assert loaded.prompter.params() == prompter.params()
        np.testing.assert_array_equal(loaded.prompter.mean_mask, prompter.mean_mask)
        image, _ = make_blob_image((96, 128), seed=9)
        a, b = pipe(image), loaded(image)
        np.testing.assert_array_equal(a.prompts.points_xy, b.prompts.points_xy)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert a.mask.any()

    def test_mean_mask_config_without_state(self):
        prompter = MeanMaskPointPrompter(grid_size=16).fit([np.ones((16, 16), bool)])
        with pytest.raises(ValueError, match=r"^state: "):
            Pipeline.from_config(Pipeline(prompter, FakeSegmenter()).config)

    def test_load_missing(self, tmp_path):
        with pytest.raises(FileNotFoundError, match=r"^directory: expected pipeline.json"):
            Pipeline.load(tmp_path)


# -- issue 10: a friendlier first hour ------------------------------------------------------------


def test_image_and_target_paths_are_read(tmp_path):
    from medsamkit.data import write_image, write_mask

    image, mask = make_blob_image((40, 52), seed=4)
    write_image(tmp_path / "i.png", image)
    write_mask(tmp_path / "m.png", mask)
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())
    from_paths = pipe(str(tmp_path / "i.png"), target=tmp_path / "m.png")
    from_arrays = pipe(image, target=mask)
    np.testing.assert_array_equal(from_paths.mask, from_arrays.mask)
    with pytest.raises(OSError, match="missing.png"):
        pipe(tmp_path / "missing.png")


def test_prompts_shorthands():
    image, _ = make_blob_image((40, 52), seed=4)
    pipe = Pipeline(FixedPrompter(Prompts(box_xyxy=[[0, 0, 3, 3]])), FakeSegmenter(mode="box"))
    one = pipe(image, prompts=(5, 6, 20, 30))
    assert one.prompts.box_xyxy.tolist() == [[5, 6, 20, 30]]
    assert one.mask.sum() == (20 - 5 + 1) * (30 - 6 + 1)
    two = pipe(image, prompts=[[5, 6, 20, 30], [30, 1, 40, 4]])
    assert two.prompts.n == 2
    points = pipe(image, prompts={"points": [[10, 12], [11, 13]], "labels": [1, 0]})
    assert points.prompts.points_xy.shape == (1, 2, 2) and points.prompts.point_labels.tolist() == [[1, 0]]
    both = pipe(image, prompts={"boxes": [5, 6, 20, 30], "points": [[10, 12]]})
    assert both.prompts.n == 1 and both.prompts.box_xyxy.shape == (1, 4)
    with pytest.raises(ValueError, match=r"prompts: expected Prompts, a box"):
        pipe(image, prompts=[1, 2, 3])
    with pytest.raises(ValueError, match=r"unknown keys \['box_list'\]"):
        pipe(image, prompts={"box_list": [1, 2, 3, 4]})


def test_a_component_class_instead_of_an_instance_is_refused():
    with pytest.raises(
        TypeError, match=r"prompter: expected an instance, got the class OracleBoxPrompter.*OracleBoxPrompter\(\)"
    ):
        Pipeline(OracleBoxPrompter, FakeSegmenter())
    with pytest.raises(TypeError, match="segmenter: expected an instance, got the class FakeSegmenter"):
        Pipeline(OracleBoxPrompter(), FakeSegmenter)


@pytest.mark.real_model
def test_thin_image_gets_a_note(litemedsam):
    image = np.tile(np.linspace(0, 255, 2000, dtype=np.float32), (5, 1)).astype(np.uint8)
    result = Pipeline(FixedPrompter(Prompts(box_xyxy=[[100, 0, 900, 4]])), litemedsam)(image)
    assert result.note is not None and "thin image: 5x2000 px becomes 1x256 px" in result.note
    square = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (64, 1)).astype(np.uint8)
    assert Pipeline(FixedPrompter(Prompts(box_xyxy=[[10, 10, 40, 40]])), litemedsam)(square).note is None


@pytest.mark.real_model
def test_points_on_the_zero_shot_box_trained_model_warn_once(litemedsam, caplog):
    from medsamkit import _pipeline

    _pipeline._warned_points.discard(litemedsam.model_id)
    image, _ = make_blob_image((64, 64), seed=2)
    assert litemedsam.trained_on_boxes_only
    points = FixedPrompter(Prompts(points_xy=[[[32, 32]]]))
    with caplog.at_level("WARNING", logger="medsamkit"):
        Pipeline(points, litemedsam)(image)
        Pipeline(points, litemedsam)(image)
        Pipeline(FixedPrompter(Prompts(box_xyxy=[[10, 10, 50, 50]])), litemedsam)(image)
    assert caplog.text.count("trained with box prompts only") == 1

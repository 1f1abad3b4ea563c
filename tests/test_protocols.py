"""medsamkit._protocols: the written contracts, and prompts_for (the one way to ask a provider)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import medsamkit as msk
from medsamkit import (
    EncoderIdentified,
    FittablePrompter,
    LowResDecoder,
    ParallelEncoder,
    PromptProvider,
    Prompts,
    Segmenter,
    TrainableSegmenter,
    prompts_for,
)
from medsamkit._registry import components, fittable_prompters
from medsamkit._types import ImageEncoding
from medsamkit.testing import FakeSegmenter


class Recorder:
    """A provider that records what it was called with."""

    def __init__(self, *, requires_target: bool, uses_encoding: bool | None) -> None:
        self.requires_target = requires_target
        if uses_encoding is not None:
            self.uses_encoding = uses_encoding
        self.calls: list[dict] = []

    def __call__(self, image, **kwargs):
        self.calls.append(kwargs)
        return Prompts.empty()


IMAGE = np.zeros((8, 8), np.uint8)
TARGET = np.ones((8, 8), bool)
ENCODING = ImageEncoding(features=None, size_hw=(8, 8), input_size_hw=(8, 8), model_id="m")


@pytest.mark.parametrize(
    "requires_target, uses_encoding, expected",
    [
        (False, False, {}),
        (True, False, {"target": TARGET}),
        (False, True, {"encoding": ENCODING}),
        (True, True, {"target": TARGET, "encoding": ENCODING}),
        (False, None, {}),  # a provider written before uses_encoding existed gets no encoding
    ],
)
def test_prompts_for_passes_target_and_encoding_only_to_providers_that_read_them(requires_target, uses_encoding, expected):
    provider = Recorder(requires_target=requires_target, uses_encoding=uses_encoding)
    assert prompts_for(provider, IMAGE, target=TARGET, encoding=ENCODING).n == 0
    (call,) = provider.calls
    assert call.keys() == expected.keys()
    assert all(call[key] is value for key, value in expected.items())


def test_prompts_for_refuses_a_provider_that_returns_something_else():
    class Boxes:
        requires_target = False
        uses_encoding = False

        def __call__(self, image, *, target=None, encoding=None):
            return [[0, 0, 3, 3]]

    with pytest.raises(TypeError, match=r"^prompter: expected it to return Prompts, got list"):
        prompts_for(Boxes(), IMAGE)


def test_boxes_with_points_asks_its_providers_through_prompts_for():
    boxes = Recorder(requires_target=True, uses_encoding=False)
    points = Recorder(requires_target=False, uses_encoding=True)
    combined = msk.BoxesWithPointsPrompter(boxes, points)
    assert combined.requires_target and combined.uses_encoding
    prompts_for(combined, IMAGE, target=TARGET, encoding=ENCODING)
    assert boxes.calls == [{"target": TARGET}]
    assert points.calls[0].keys() == {"encoding"}


def test_every_registered_prompter_class_has_the_provider_contract():
    for name, component in components("prompter").items():
        cls = component.cls
        assert isinstance(cls.requires_target, bool), name
        assert cls.uses_encoding in (True, False), name
        call = inspect.signature(cls.__call__).parameters
        assert {"target", "encoding"} <= set(call), name
        assert call["target"].kind is inspect.Parameter.KEYWORD_ONLY and call["encoding"].default is None, name


def test_every_learned_prompter_has_the_one_fit_signature():
    assert fittable_prompters(), "no learned prompter registered"  # which ones: test_registry derives them
    for name, component in fittable_prompters().items():
        cls = component.cls
        fit = inspect.signature(cls.fit).parameters
        first = list(fit)[1]
        assert first == "samples", name
        assert fit["val"].kind is inspect.Parameter.KEYWORD_ONLY and fit["val"].default is None, name
        assert fit["progress"].kind is inspect.Parameter.KEYWORD_ONLY and fit["progress"].default is False, name
        assert inspect.ismethod(cls.load) and "overrides" in inspect.signature(cls.load).parameters, name
        assert isinstance(cls.state_suffix, str) and cls.state_suffix.startswith("."), name
        assert callable(cls.save) and callable(cls.params), name


def test_runtime_checks_of_the_protocols():
    oracle = msk.OracleBoxPrompter()
    assert isinstance(oracle, PromptProvider) and not isinstance(oracle, FittablePrompter)
    assert isinstance(msk.MeanMaskPointPrompter(), FittablePrompter)
    fake = FakeSegmenter()
    assert isinstance(fake, Segmenter)
    assert not isinstance(fake, TrainableSegmenter) and not isinstance(fake, LowResDecoder)
    assert not isinstance(fake, ParallelEncoder) and not isinstance(fake, EncoderIdentified)


@pytest.mark.real_model
def test_the_sam_family_is_trainable_and_decode_cacheable(litemedsam, tmp_path):
    assert isinstance(litemedsam, TrainableSegmenter) and isinstance(litemedsam, LowResDecoder)
    assert isinstance(litemedsam, ParallelEncoder)
    cached = msk.CachedSegmenter(litemedsam, tmp_path)
    assert isinstance(cached, Segmenter)
    assert isinstance(litemedsam, EncoderIdentified) and isinstance(cached, EncoderIdentified)
    assert cached.encoder_id == litemedsam.encoder_id


def test_mean_mask_load_checks_overrides_against_the_saved_parameters(tmp_path):
    mask = np.zeros((32, 32), bool)
    mask[8:24, 8:24] = True
    path = msk.MeanMaskPointPrompter(grid_size=32, points_per_component=2).fit([mask]).save(tmp_path / "p.npz")
    assert msk.MeanMaskPointPrompter.load(path, grid_size=32).grid_size == 32
    with pytest.raises(ValueError, match=r"^grid_size: the saved prompter .* has 32, the config 64"):
        msk.MeanMaskPointPrompter.load(path, grid_size=64)
    with pytest.raises(TypeError, match=r"^unexpected parameters \['colour'\]"):
        msk.MeanMaskPointPrompter.load(path, colour="red")

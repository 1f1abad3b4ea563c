"""LiteMedSAM's ``resize_filter`` option (``segmenters/_litemedsam.py``): validation, configs, model ids, caching.

The fast tests wrap a tiny stand-in module (a strided convolution as the image encoder),
so no weights load; one real-model test checks that a Pillow filter segments a real chest
X-ray as well as the default does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medsamkit
from medsamkit import CachedSegmenter, EmbeddingCache, LiteMedSAM, load_segmenter
from medsamkit.segmenters import RESIZE_FILTERS
from medsamkit.segmenters import _litemedsam as litemedsam_module


class _TinyLiteMedSAM(torch.nn.Module):
    """What ``LiteMedSAM(model=...)`` needs to preprocess and encode: a small stand-in encoder
    (8 x 8 average pooling and a 1 x 1 convolution: (3, 256, 256) -> (8, 32, 32), cheap to run and cache)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image_encoder = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Conv2d(3, 8, kernel_size=1))
        self.prompt_encoder = torch.nn.Identity()
        self.mask_decoder = torch.nn.Identity()


@pytest.fixture(scope="module")
def tiny() -> _TinyLiteMedSAM:
    return _TinyLiteMedSAM().eval()


@pytest.fixture(autouse=True)
def _bundled_path_elsewhere(request, tmp_path, monkeypatch) -> None:
    """The fast tests never touch the bundled weights (``LiteMedSAM`` compares its checkpoint with their path)."""
    if request.node.get_closest_marker("real_model") is None:
        monkeypatch.setattr(litemedsam_module, "litemedsam_checkpoint_path", lambda: tmp_path / "bundled.pth")


def _image(h: int = 300, w: int = 200, seed: int = 0) -> np.ndarray:
    # Fine texture, so that the filters give clearly different 256 px inputs.
    return np.random.default_rng(seed).integers(0, 256, size=(h, w), dtype=np.uint8)


@pytest.mark.parametrize("bad", ["nearest", "Area", None, 3])
def test_resize_filter_is_validated_before_anything_loads(bad, tiny) -> None:
    with pytest.raises(ValueError, match=r"resize_filter: expected one of 'area', .*, got"):
        LiteMedSAM(model=tiny, precision="float32", resize_filter=bad)
    with pytest.raises(ValueError, match="resize_filter"):
        LiteMedSAM(checkpoint="/no/such/file.pth", resize_filter=bad)  # the filter is checked first


def test_default_is_area_and_keeps_the_model_id(tiny) -> None:
    default = LiteMedSAM(model=tiny, precision="float32")
    explicit = LiteMedSAM(model=tiny, precision="float32", resize_filter="area")
    assert default.resize_filter == "area"
    assert default.model_id == explicit.model_id and "resize" not in default.model_id
    assert "resize_filter='area'" in repr(default)


@pytest.mark.parametrize("resize_filter", [f for f in RESIZE_FILTERS if f != "area"])
def test_other_filters_name_themselves_in_model_id_and_encoder_id(resize_filter, tiny) -> None:
    base = LiteMedSAM(model=tiny, precision="float32")
    seg = LiteMedSAM(model=tiny, precision="float32", resize_filter=resize_filter)
    assert seg.model_id == f"{base.model_id}:resize-{resize_filter}"
    assert seg.encoder_id.endswith(f":resize-{resize_filter}") and seg.encoder_id != base.encoder_id
    encoding = seg.encode(_image())
    assert encoding.model_id == seg.model_id
    with pytest.raises(ValueError, match="encoding: expected an encoding made by model"):
        base.decode(encoding, medsamkit.Prompts(box_xyxy=[[10, 10, 50, 50]]))


@pytest.mark.parametrize("resize_filter", RESIZE_FILTERS)
def test_preprocess_follows_the_filter(resize_filter, tiny) -> None:
    seg = LiteMedSAM(model=tiny, precision="float32", resize_filter=resize_filter)
    chw, size_hw = seg.preprocess(_image())
    assert chw.shape == (3, 256, 256) and chw.dtype == np.float32 and size_hw == (256, 171)
    assert chw.min() == 0.0 and chw.max() == 1.0  # min-max scaled after the resize
    assert not chw[:, :, 171:].any() and not chw[:, 256:, :].any()  # padding


def test_filters_give_different_inputs_and_encodings(tiny) -> None:
    image = _image()
    segs = {f: LiteMedSAM(model=tiny, precision="float32", resize_filter=f) for f in RESIZE_FILTERS}
    inputs = {f: s.preprocess(image)[0] for f, s in segs.items()}
    for f in RESIZE_FILTERS[1:]:
        assert not np.allclose(inputs[f], inputs["area"], atol=1e-3), f


def test_embedding_cache_never_mixes_filters(tiny, tmp_path) -> None:
    """Reproduces the bug the model-id suffix prevents: without it the Pillow segmenter got the cached area encoding."""
    image = _image()
    cache = EmbeddingCache(tmp_path / "cache")
    area = LiteMedSAM(model=tiny, precision="float32")
    pil = LiteMedSAM(model=tiny, precision="float32", resize_filter="pil-bilinear")
    from_area = CachedSegmenter(area, cache).encode(image)
    from_pil = CachedSegmenter(pil, cache).encode(image)
    assert from_pil.model_id == pil.model_id
    expected = pil.encode(image).features.numpy()
    np.testing.assert_array_equal(from_pil.features.numpy(), expected)
    assert not np.allclose(from_pil.features.numpy(), from_area.features.numpy(), atol=1e-4)
    # and the cached encoding is found again under its own id
    np.testing.assert_array_equal(CachedSegmenter(pil, cache).encode(image).features.numpy(), expected)


def test_params_round_trip_through_the_registry(tiny, tmp_path, monkeypatch) -> None:
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"stand-in weights")
    monkeypatch.setattr(litemedsam_module, "build_litemedsam_model", lambda path: _TinyLiteMedSAM().eval())
    seg = LiteMedSAM(checkpoint=checkpoint, precision="float32", resize_filter="pil-bicubic")
    params = seg.params()
    assert params["resize_filter"] == "pil-bicubic" and params["checkpoint"] == str(checkpoint)
    rebuilt = load_segmenter("litemedsam", **params)
    assert rebuilt.resize_filter == "pil-bicubic" and rebuilt.model_id == seg.model_id
    assert LiteMedSAM(checkpoint=checkpoint, precision="float32").params()["resize_filter"] == "area"


@pytest.mark.real_model
@pytest.mark.shared_data
def test_pil_bilinear_segments_a_chest_xray(litemedsam, shared_dataset) -> None:
    folder = shared_dataset("cxr-shenzhen")
    image = medsamkit.read_image(folder / "images" / "CHNCXR_0601_1.png")
    mask = medsamkit.read_mask(folder / "masks" / "CHNCXR_0601_1.png") > 0
    pil = LiteMedSAM(resize_filter="pil-bilinear")
    assert pil.model_id == f"{litemedsam.model_id}:resize-pil-bilinear"
    prompts = medsamkit.prompts_for(medsamkit.OracleBoxPrompter(), image, target=mask)

    def dice(seg: LiteMedSAM) -> float:
        pred = (seg.decode(seg.encode(image), prompts).probabilities > 0.5).any(axis=0)
        return float(medsamkit.metrics.dice(pred, mask))

    d_pil, d_area = dice(pil), dice(litemedsam)
    assert d_pil > 0.95 and abs(d_pil - d_area) < 0.03, (d_pil, d_area)

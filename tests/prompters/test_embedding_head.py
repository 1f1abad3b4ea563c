"""EmbeddingHeadPrompter: a head on LiteMedSAM's own embedding finds the lungs, no second encoder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache
from medsamkit.testing import FakeSegmenter

N_TRAIN = 8


@pytest.fixture(scope="module")
def cxr(tmp_path_factory, shared_data):
    """Twelve Shenzhen radiographs shrunk to 256 px: 8 to fit, 4 to check."""
    root = tmp_path_factory.mktemp("cxr256-head")
    for sample in msk.MaskFolder(shared_data / "cxr-shenzhen")[:12]:
        image, mask = sample.load()
        msk.data.write_image(root / "images" / f"{sample.stem}.png", cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
        msk.write_mask(root / "masks" / f"{sample.stem}.png", cv2.resize(mask.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST))
    folder = msk.MaskFolder(root)
    return folder[:N_TRAIN], folder[N_TRAIN:]


@pytest.fixture(scope="module")
def seg(litemedsam, tmp_path_factory):
    return CachedSegmenter(litemedsam, EmbeddingCache(tmp_path_factory.mktemp("emb-head")))


@pytest.fixture(scope="module")
def head(seg, cxr):
    train, _ = cxr
    return msk.EmbeddingHeadPrompter().fit(train, segmenter=seg, epochs=30)


def _box_iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0 + 1) * max(0, y1 - y0 + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)
    return inter / (area(a) + area(b) - inter)


def test_training_loss_falls(head):
    assert head.history[-1]["loss"] < 0.6 * head.history[0]["loss"]


def test_boxes_match_the_oracle_boxes_on_held_out_images(head, seg, cxr):
    _, test = cxr
    oracle = msk.OracleBoxPrompter()
    ious = []
    for sample in test:
        image, mask = sample.load()
        boxes = head(image, encoding=seg.encode(image)).box_xyxy
        truth = oracle(image, target=mask).box_xyxy
        assert len(boxes) >= 1
        # each oracle box (lung) is matched by some predicted box
        ious += [max(_box_iou(t, b) for b in boxes) for t in truth]
    assert np.mean(ious) > 0.6, ious


def test_pipeline_encodes_once_and_segments_lungs(head, litemedsam, cxr, monkeypatch):
    _, test = cxr
    calls = []
    real = litemedsam.encode
    monkeypatch.setattr(litemedsam, "encode", lambda image: calls.append(1) or real(image))
    pipe = msk.Pipeline(head, litemedsam)
    dice = []
    for sample in test:
        image, mask = sample.load()
        pred = pipe(image).mask
        dice.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    assert len(calls) == len(test)
    assert np.mean(dice) > 0.85, dice


def test_no_region_gives_no_prompt_and_an_empty_mask(head, seg, cxr):
    _, test = cxr
    image, _ = test[0].load()
    head_all_background = msk.EmbeddingHeadPrompter(threshold=1.0)
    head_all_background.head, head_all_background.model_id, head_all_background.image_size = head.head, head.model_id, head.image_size
    prompts = head_all_background(image, encoding=seg.encode(image))
    assert prompts.n == 0
    result = msk.Pipeline(head_all_background, seg)(image)
    assert result.note == "no prompt" and not result.mask.any()


def test_save_load_and_pipeline_config_round_trip(head, seg, cxr, tmp_path):
    _, test = cxr
    image, _ = test[0].load()
    enc = seg.encode(image)
    loaded = msk.EmbeddingHeadPrompter.load(head.save(tmp_path / "head.pt"))
    np.testing.assert_array_equal(loaded.probability_map(enc), head.probability_map(enc))
    pipe = msk.Pipeline(head, seg.segmenter)
    pipe.save(tmp_path / "run")
    assert (tmp_path / "run" / "prompter.pt").is_file()
    rebuilt = msk.Pipeline.load(tmp_path / "run")
    np.testing.assert_array_equal(rebuilt(image).mask, pipe(image).mask)


def test_errors(head, seg, cxr, tmp_path):
    _, test = cxr
    image, _ = test[0].load()
    with pytest.raises(ValueError, match="encoding"):
        head(image)
    fake = FakeSegmenter()
    with pytest.raises((ValueError, TypeError), match="encoding"):
        head(image, encoding=fake.encode(image))
    with pytest.raises(RuntimeError, match="not fitted"):
        msk.EmbeddingHeadPrompter()(image, encoding=seg.encode(image))
    with pytest.raises(TypeError, match="^segmenter: expected a SAM-family segmenter"):
        msk.EmbeddingHeadPrompter().fit(test, segmenter=fake)
    with pytest.raises(TypeError, match="^segmenter: EmbeddingHeadPrompter.fit needs segmenter="):
        msk.EmbeddingHeadPrompter().fit(test)
    with pytest.raises(TypeError, match=r"^samples: got a segmenter .*fit\(samples, \*, segmenter="):
        msk.EmbeddingHeadPrompter().fit(seg)  # the segmenter first, as before the FittablePrompter signature
    with pytest.raises(ValueError, match="samples"):
        msk.EmbeddingHeadPrompter().fit([], segmenter=seg)
    with pytest.raises(ValueError, match="max_boxes"):
        msk.EmbeddingHeadPrompter(max_boxes=0)
    with pytest.raises(FileNotFoundError, match="path"):
        msk.EmbeddingHeadPrompter.load(tmp_path / "missing.pt")

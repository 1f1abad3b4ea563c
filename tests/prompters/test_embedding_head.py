"""EmbeddingHeadPrompter: a head on LiteMedSAM's own embedding finds the lungs, no second encoder."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache
from medsamkit.testing import FakeSegmenter, make_blob_image

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster (conftest)

N_TRAIN = 8


@pytest.fixture(scope="module")
def cxr(tmp_path_factory, shared_data):
    """Twelve Shenzhen radiographs shrunk to 256 px: 8 to fit, 4 to check."""
    root = tmp_path_factory.mktemp("cxr256-head")
    for sample in msk.MaskFolder(shared_data / "cxr-shenzhen")[:12]:
        image, mask = sample.load()
        msk.data.write_image(root / "images" / f"{sample.stem}.png", cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
        msk.write_mask(
            root / "masks" / f"{sample.stem}.png", cv2.resize(mask.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
        )
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
    head_all_background.head, head_all_background.model_id, head_all_background.image_size = (
        head.head,
        head.model_id,
        head.image_size,
    )
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


class _EmbeddingFake(FakeSegmenter):
    """A weight-free segmenter with a torch embedding: ``model_id`` names encoder and decoder, ``encoder_id`` the encoder."""

    image_size = 32

    def __init__(self, encoder: str = "a", decoder: str = "x") -> None:
        super().__init__(mode="intensity")
        self.model_id = f"fake-emb:{encoder}:{decoder}"
        self.encoder_id = f"fake-emb-encoder:{encoder}"

    def encode(self, image):
        import torch

        enc = super().encode(image)
        gray = torch.from_numpy(cv2.resize(enc.features, (8, 8), interpolation=cv2.INTER_AREA))
        emb = torch.stack([gray, gray**2, 1 - gray, torch.ones_like(gray)])[None]
        return msk.ImageEncoding(
            features=(emb, enc.features), size_hw=enc.size_hw, input_size_hw=(32, 32), model_id=self.model_id
        )

    def decode(self, encoding, prompts):
        plain = msk.ImageEncoding(
            features=encoding.features[1], size_hw=encoding.size_hw, input_size_hw=encoding.size_hw, model_id=encoding.model_id
        )
        return super().decode(plain, prompts)


def _blob_samples(n):

    class _S:
        def __init__(self, i):
            self.stem = f"s{i}"
            self.image, self.mask = make_blob_image((32, 32), seed=i)

        def load(self):
            return self.image, self.mask

    return [_S(i) for i in range(n)]


@pytest.fixture(scope="module")
def fake_head():
    return msk.EmbeddingHeadPrompter(hidden=8).fit(_blob_samples(4), segmenter=_EmbeddingFake("a", "x"), epochs=2)


def test_head_works_with_a_segmenter_sharing_the_encoder(fake_head):
    """Issue 13: a head fitted with the original checkpoint works with a decoder-fine-tuned one."""
    assert fake_head.encoder_id == "fake-emb-encoder:a"
    tuned = _EmbeddingFake("a", "tuned")  # same encoder, new decoder: new model_id
    image, _ = _blob_samples(5)[4].load()
    result = msk.Pipeline(fake_head, tuned)(image)
    assert result.mask.shape == image.shape


def test_head_refuses_another_encoder_once_when_the_pipeline_is_built(fake_head):
    with pytest.raises(ValueError, match="fake-emb-encoder:a.*fake-emb-encoder:b"):
        msk.Pipeline(fake_head, _EmbeddingFake("b", "x"))
    # without binding, an encoding of an unknown model is still refused per call
    other = _EmbeddingFake("b", "y")
    image, _ = _blob_samples(1)[0].load()
    with pytest.raises(ValueError, match="encoding"):
        fake_head(image, encoding=other.encode(image))


def test_saved_head_keeps_the_encoder_id(fake_head, tmp_path):
    loaded = msk.EmbeddingHeadPrompter.load(fake_head.save(tmp_path / "h.pt"))
    assert loaded.encoder_id == fake_head.encoder_id
    msk.Pipeline(loaded, _EmbeddingFake("a", "other"))  # binds


@pytest.mark.real_model
def test_litemedsam_encoder_id_ignores_the_decoder(litemedsam, tmp_path):
    import torch

    state = {k: v.clone() for k, v in litemedsam.model.state_dict().items()}
    key = next(k for k in state if k.startswith("mask_decoder.") and state[k].dtype.is_floating_point)
    state[key] += 0.01
    torch.save(state, tmp_path / "decoder-tuned.pth")
    tuned = msk.LiteMedSAM(checkpoint=tmp_path / "decoder-tuned.pth", precision=litemedsam.precision)
    assert tuned.model_id != litemedsam.model_id
    assert tuned.encoder_id == litemedsam.encoder_id
    assert tuned.encoder_id.startswith("litemedsam-encoder:")
    key = next(k for k in state if k.startswith("image_encoder.") and state[k].dtype.is_floating_point)
    state[key] += 0.01
    torch.save(state, tmp_path / "encoder-changed.pth")
    changed = msk.LiteMedSAM(checkpoint=tmp_path / "encoder-changed.pth", precision=litemedsam.precision)
    assert changed.encoder_id != litemedsam.encoder_id


def test_presence_is_calibrated_on_validation_and_normals_come_back_empty(tmp_path, caplog):
    """Issue 13: an image-level presence decision on the same embedding, calibrated on validation."""
    import logging

    from medsamkit.testing import make_presence_folder

    train = make_presence_folder(tmp_path / "train", 16, size_hw=(32, 32), seed=0)
    val = make_presence_folder(tmp_path / "val", 10, size_hw=(32, 32), seed=100)
    test = make_presence_folder(tmp_path / "test", 10, size_hw=(32, 32), seed=200)
    seg = _EmbeddingFake()
    with caplog.at_level(logging.INFO, logger="medsamkit"):
        head = msk.EmbeddingHeadPrompter(hidden=8).fit(train, segmenter=seg, val=val, epochs=30, batch_size=4, lr=3e-3)
    stages = " ".join(r.getMessage() for r in caplog.records)
    assert "encoding 16 training images" in stages and "epoch 30/30" in stages and "presence threshold" in stages
    cal = head.presence_calibration
    assert cal["n_target"] == 5 and cal["n_empty"] == 5
    assert 0 < head.presence_threshold < 1
    assert cal["sensitivity"] + cal["specificity"] >= 1.8
    right = 0
    for sample in test:
        image, mask = sample.load()
        prompts = head(image, encoding=seg.encode(image))
        right += (prompts.n > 0) == bool(mask.any())
    assert right >= 8, right
    # saved and loaded with the calibration; overrides change the gate only
    loaded = msk.EmbeddingHeadPrompter.load(head.save(tmp_path / "h.pt"))
    assert loaded.presence_threshold == head.presence_threshold and loaded.presence_calibration == cal
    assert msk.EmbeddingHeadPrompter.load(tmp_path / "h.pt", presence_threshold=0.0).presence_threshold == 0.0
    with pytest.raises(ValueError, match="hidden"):  # shapes the saved weights
        msk.EmbeddingHeadPrompter.load(tmp_path / "h.pt", hidden=16)
    with pytest.raises(TypeError, match="unexpected"):
        msk.EmbeddingHeadPrompter.load(tmp_path / "h.pt", colour="red")


def test_flip_doubles_the_training_views(tmp_path):
    seg = _EmbeddingFake()
    calls = []
    real = seg.encode
    seg.encode = lambda image: calls.append(1) or real(image)
    msk.EmbeddingHeadPrompter(hidden=8).fit(_blob_samples(3), segmenter=seg, epochs=1, flip=True)
    assert len(calls) == 6
    calls.clear()
    msk.EmbeddingHeadPrompter(hidden=8).fit(_blob_samples(3), segmenter=seg, epochs=1, flip=True, augment=2)
    assert len(calls) == 18  # 3 images and 2 copies of each, every one mirrored too
    with pytest.raises(ValueError, match="^augment:"):
        msk.EmbeddingHeadPrompter().fit(_blob_samples(1), segmenter=seg, augment=-1)
    with pytest.raises(ValueError, match="batch_size"):
        msk.EmbeddingHeadPrompter().fit(_blob_samples(1), segmenter=seg, batch_size=0)


@pytest.mark.parametrize(("rule", "expected"), [("accuracy", 0.35), ("youden", 0.55)])
def test_presence_threshold_by_hand(rule, expected):
    scores = {1: 0.9, 2: 0.8, 3: 0.6, 4: 0.4, 5: 0.5, 6: 0.3}  # 1-4 hold the target, 5-6 do not

    class _S:
        def __init__(self, k):
            self.k = k

        def load(self):
            return np.full((4, 4), self.k, dtype=np.uint8), np.full((4, 4), self.k <= 4)

    class _Seg:
        def encode(self, image):
            return int(image[0, 0])

    head = msk.EmbeddingHeadPrompter(presence_rule=rule)
    head.head = object()  # "fitted"
    head.presence = lambda encoding: scores[encoding]
    cal = head.calibrate_presence(_Seg(), [_S(k) for k in scores])
    # accuracy: 0.4 and 0.6 both get 5 of 6 right, the first (0.4) is kept; youden: 0.6 (1 - 0.25 + 1).
    # The threshold then moves midway to the next lower score.
    assert head.presence_threshold == pytest.approx(expected)
    assert cal["n_target"] == 4 and cal["n_empty"] == 2
    with pytest.raises(ValueError, match="presence_rule"):
        msk.EmbeddingHeadPrompter(presence_rule="f1")


def test_test_flip_averages_the_maps_of_the_image_and_its_mirror(fake_head, tmp_path):
    import torch

    path = fake_head.save(tmp_path / "h.pt")
    plain = msk.EmbeddingHeadPrompter.load(path)
    tta = msk.EmbeddingHeadPrompter.load(path, test_flip=True, threshold=0.3)
    assert plain.test_flip is False and tta.params()["test_flip"] is True
    seg = _EmbeddingFake("a", "x")
    image, _ = make_blob_image((32, 32), seed=7)
    image = np.ascontiguousarray(image[:, :20].repeat(2, axis=1)[:, :32])  # not left-right symmetric
    enc = seg.encode(image)
    with pytest.raises(RuntimeError, match="test_flip.*bind_segmenter"):
        tta(image, encoding=enc)

    msk.Pipeline(tta, seg)  # binds the segmenter
    calls = seg.encode_calls
    averaged = tta._flip_averaged_logits(image, enc)
    assert seg.encode_calls == calls + 1  # the mirror, once
    mirror = plain._low_res_logits(seg.encode(np.ascontiguousarray(image[:, ::-1])))
    expected = (plain._low_res_logits(enc).sigmoid() + mirror.flip(-1).sigmoid()) / 2
    torch.testing.assert_close(averaged.sigmoid(), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, plain._low_res_logits(enc).sigmoid(), atol=1e-3)  # the mirror changed something

    # The boxes are those of the averaged map.
    by_hand = msk.EmbeddingHeadPrompter.load(path, threshold=0.3)
    by_hand._low_res_logits = lambda encoding: averaged
    np.testing.assert_array_equal(tta(image, encoding=enc).box_xyxy, by_hand(image, encoding=enc).box_xyxy)
    with pytest.raises(TypeError, match="test_flip: expected a bool"):
        msk.EmbeddingHeadPrompter(test_flip="yes")


def test_map_prompts_gates_on_presence_before_reading_the_map():
    """The shared tail of the head and the localiser: below the presence threshold no prompt and no map."""
    from types import SimpleNamespace

    from medsamkit.prompters._embedding_head import boxes_from_map, map_prompts

    prob = np.zeros((40, 50), dtype=np.float32)
    prob[5:15, 10:30] = 0.9
    prob[25:35, 35:45] = 0.8
    rule = SimpleNamespace(presence_threshold=0.5, threshold=0.5, min_area_fraction=0.01, max_boxes=1, margin_fraction=0.1)

    def must_not_run():
        raise AssertionError("the map was computed for an image judged empty")

    assert map_prompts(rule, 0.49, must_not_run).box_xyxy.shape == (0, 4)
    prompts = map_prompts(rule, 0.5, lambda: prob)
    expected = boxes_from_map(prob, threshold=0.5, min_area_fraction=0.01, max_boxes=1, margin_fraction=0.1)
    assert len(expected) == 1
    np.testing.assert_array_equal(prompts.box_xyxy, expected)
    np.testing.assert_array_equal(expected[0], [8, 4, 31, 15])  # by hand: x 10..29 and y 5..14 grown by 2 and 1 px

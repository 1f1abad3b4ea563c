"""Decoder-only fine-tuning on real chest X-rays with the real LiteMedSAM weights.

Images are shrunk to 256 px to keep the suite fast; the encoder runs once per image
(an embedding cache shared by the module's tests).
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import medsamkit as msk
from medsamkit import _epochs
from medsamkit._cache import CachedSegmenter, EmbeddingCache
from medsamkit.testing import FakeSegmenter
from medsamkit.training import FinetuneConfig, _engine, finetune
from medsamkit.training._trainable import encode_items

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster (conftest)

N_TRAIN, N_VAL = 6, 3


@pytest.fixture(scope="module")
def small_cxr(cxr256):
    """(train, val) from the 256 x 256 chest X-rays of ``tests/training/conftest.py``."""
    return cxr256[:N_TRAIN], cxr256[N_TRAIN : N_TRAIN + N_VAL]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return EmbeddingCache(tmp_path_factory.mktemp("emb"))


@pytest.fixture()
def seg(litemedsam, cache):
    return CachedSegmenter(litemedsam, cache)


@pytest.fixture(scope="module")
def points(small_cxr):
    train, _ = small_cxr
    return msk.MeanMaskPointPrompter().fit(train)


def _val_dice(pipeline, samples):
    scores = []
    for sample in samples:
        image, mask = sample.load()
        pred = pipeline(image).mask
        scores.append(2 * (pred & mask).sum() / (pred.sum() + mask.sum()))
    return float(np.mean(scores))


def test_decoder_finetuning_with_mean_mask_points_beats_zero_shot(seg, small_cxr, points, tmp_path):
    train, val = small_cxr
    zero_shot = _val_dice(msk.Pipeline(points, seg), val)
    before = {k: v.clone() for k, v in seg.model.state_dict().items()}
    result = finetune(seg, train, val, out_dir=tmp_path / "run", prompter=points, epochs=4, batch_size=2, progress=False)
    tuned = _val_dice(result.pipeline, val)
    # LiteMedSAM was trained with boxes: points alone are poor until the decoder learns them.
    assert tuned > zero_shot + 0.15, (zero_shot, tuned)
    assert result.best_val_dice == pytest.approx(max(h["val_dice"] for h in result.history))
    # The caller's segmenter is untouched.
    after = seg.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Only the mask decoder changed in the saved weights.
    saved = torch.load(result.run_dir / "model.pth", weights_only=True)
    changed = {k.split(".")[0] for k in saved if not torch.equal(saved[k], before[k])}
    assert changed == {"mask_decoder"}


def test_run_folder_outputs_rebuild_the_pipeline(seg, small_cxr, points, tmp_path):
    train, val = small_cxr
    result = finetune(
        seg, train, val, out_dir=tmp_path / "run", prompter=points, epochs=1, progress=False, thresholds=[0.4, 0.5, 0.6]
    )
    run = result.run_dir
    for name in ("model.pth", "pipeline.json", "prompter.npz", "history.csv", "loss_curve.png", "threshold_sweep.csv", "last.pt"):
        assert (run / name).is_file(), name
    sweep = (run / "threshold_sweep.csv").read_text().splitlines()
    assert sweep[0] == "threshold,dice" and len(sweep) == 4
    assert result.threshold == max(result.sweep, key=lambda r: r["dice"])["threshold"]
    loaded = msk.Pipeline.load(run)
    assert loaded.threshold == result.threshold
    image, _ = val[0].load()
    np.testing.assert_array_equal(loaded(image).mask, result.pipeline(image).mask)
    assert cv2.imread(str(run / "loss_curve.png")) is not None


def test_each_image_is_encoded_once(litemedsam, small_cxr, points, tmp_path, monkeypatch):
    train, val = small_cxr
    calls = []
    real = litemedsam.encode
    monkeypatch.setattr(litemedsam, "encode", lambda image: calls.append(1) or real(image))
    finetune(litemedsam, train[:2], val[:1], out_dir=tmp_path / "run", prompter=points, epochs=3, progress=False)
    assert len(calls) == 3


def test_interrupted_run_resumes_after_the_last_finished_epoch(seg, small_cxr, points, tmp_path, monkeypatch):
    train, val = small_cxr
    kwargs = dict(out_dir=tmp_path / "run", prompter=points, epochs=2, patience=0, progress=False)
    real_curve = _epochs.save_curve

    def stop_after_first_epoch(run_dir, history, **kwargs):
        real_curve(run_dir, history, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_epochs, "save_curve", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(seg, train[:3], val[:1], **kwargs)
    first = json.loads(json.dumps(torch.load(tmp_path / "run" / "last.pt", weights_only=True)["history"]))
    assert [h["epoch"] for h in first] == [1]
    monkeypatch.setattr(_epochs, "save_curve", real_curve)
    result = finetune(seg, train[:3], val[:1], **kwargs)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[0] == first[0]


def test_other_settings_in_the_same_folder_are_refused(seg, small_cxr, points, tmp_path):
    train, val = small_cxr
    finetune(seg, train[:2], None, out_dir=tmp_path / "run", prompter=points, epochs=1, progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        finetune(seg, train[:2], None, out_dir=tmp_path / "run", prompter=points, epochs=1, lr=1e-3, progress=False)


@pytest.mark.parametrize("loss", ["dice", "dicece"])
def test_other_losses_train(seg, small_cxr, tmp_path, loss):
    train, _ = small_cxr
    result = finetune(seg, train[:2], None, out_dir=tmp_path / loss, epochs=1, loss=loss, progress=False)
    assert np.isfinite(result.history[0]["train_loss"])
    assert result.threshold == 0.5 and result.sweep == []


def test_default_prompts_are_jittered_oracle_boxes_with_fresh_jitter_per_epoch(small_cxr):
    train, _ = small_cxr
    image, mask = train[0].load()
    base = msk.PerturbedBoxPrompter(jitter_fraction=0.1, seed=0)
    one = _engine._epoch_prompter(base, 0, 1)(image, target=mask).box_xyxy
    two = _engine._epoch_prompter(base, 0, 2)(image, target=mask).box_xyxy
    again = _engine._epoch_prompter(base, 0, 1)(image, target=mask).box_xyxy
    assert not np.allclose(one, two)
    np.testing.assert_array_equal(one, again)
    assert base.seed == 0


def test_bad_input(seg, small_cxr, tmp_path):
    train, _ = small_cxr
    with pytest.raises(TypeError, match="segmenter"):
        finetune(FakeSegmenter(), train, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="train"):
        finetune(seg, [], out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="epochs"):
        finetune(seg, train, out_dir=tmp_path / "c", epochs=0)
    with pytest.raises(ValueError, match="loss"):
        FinetuneConfig(loss="bce")
    with pytest.raises(ValueError, match="not_a_setting"):
        finetune(seg, train, out_dir=tmp_path / "d", not_a_setting=1)
    assert not (tmp_path / "d").exists()


def test_sweep_probabilities_equal_the_pipeline_union(seg, small_cxr):
    """The threshold sweep scores exactly the probabilities the saved pipeline will threshold."""
    from types import SimpleNamespace

    _, val = small_cxr
    image, mask = val[0].load()
    big = (cv2.resize(image, (400, 380)), cv2.resize(mask.astype(np.uint8), (400, 380), interpolation=cv2.INTER_NEAREST) > 0)
    item = encode_items(seg, [SimpleNamespace(stem="big", load=lambda: big)], "encode", False)[0]
    prompts = msk.OracleBoxPrompter()(item.image, target=item.mask)
    assert prompts.n == 2  # two lungs: the union matters
    swept = _engine._full_probabilities(seg, item, prompts)
    at_inference = msk.Pipeline(msk.OracleBoxPrompter(), seg)(item.image, target=item.mask).probabilities
    np.testing.assert_allclose(swept, at_inference, atol=1e-6)


@pytest.mark.real_model
def test_run_dir_inside_the_data_is_refused(litemedsam, tmp_path):
    """Issue 10: fine-tuning never writes into the folders it reads."""
    from medsamkit.testing import make_blob_image

    for i in range(2):
        image, mask = make_blob_image((32, 32), seed=i)
        msk.data.write_image(tmp_path / "data" / "images" / f"c{i}.png", image)
        msk.write_mask(tmp_path / "data" / "masks" / f"c{i}.png", mask)
    folder = msk.MaskFolder(tmp_path / "data")
    for out in (folder.root, folder.images_dir, folder.masks_dir / "run"):
        with pytest.raises(ValueError, match="input folder"):
            finetune(litemedsam, folder[:1], folder[1:], out_dir=out, epochs=1, progress=False)
    assert sorted(p.name for p in folder.masks_dir.iterdir()) == ["c0.png", "c1.png"]


@pytest.mark.real_model
def test_without_monai_the_error_names_the_extra(litemedsam, tmp_path, monkeypatch):
    """Issue 10: fine-tuning without MONAI said only "No module named 'monai'"."""
    import sys

    from medsamkit.testing import make_blob_image

    image, mask = make_blob_image((32, 32), seed=0)
    msk.data.write_image(tmp_path / "data" / "images" / "c0.png", image)
    msk.write_mask(tmp_path / "data" / "masks" / "c0.png", mask)
    for name in ("monai", "monai.losses"):
        monkeypatch.setitem(sys.modules, name, None)  # import monai -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'medsamkit\[finetune\]'"):
        finetune(litemedsam, msk.MaskFolder(tmp_path / "data"), None, out_dir=tmp_path / "run", epochs=1, progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------
# recorded training prompts (a fitted prompter's, out of fold), on a tiny random SAM
# ---------------------------------------------------------------------------------------


def _spy_losses(monkeypatch):
    """Record (stem, boxes, target is empty) of every training loss (validation does not call union_loss).

    The tiny model has no checkpoint format to reload from: saving the pipeline is left out."""
    monkeypatch.setattr(_engine, "finish_run", lambda *args: (None, 0.5, [], None))
    calls = []
    original = _engine.union_loss

    def spy(segmenter, trainable, item, prompts, loss_fn):
        calls.append((item.stem, np.asarray(prompts.box_xyxy).copy(), not item.mask.any()))
        return original(segmenter, trainable, item, prompts, loss_fn)

    monkeypatch.setattr(_engine, "union_loss", spy)
    return calls


def _recorded(blobs):
    # b1 gets a recorded box, b2 an empty record (falls back to the oracle), b5 (no target) a false positive.
    return {
        "b1": msk.Prompts(box_xyxy=[[1, 2, 30, 40]]),
        "b2": msk.Prompts.empty(),
        "b5": msk.Prompts(box_xyxy=[[5, 5, 20, 20]]),
    }


@pytest.mark.parametrize("share", [1.0, 0.0])
def test_recorded_prompts_replace_the_training_prompts_of_the_drawn_share(tiny_sam, blobs, tmp_path, monkeypatch, share):
    calls = _spy_losses(monkeypatch)
    oracle = msk.OracleBoxPrompter()
    finetune(
        tiny_sam,
        blobs,
        out_dir=tmp_path / "run",
        prompter=oracle,
        train_prompts=_recorded(blobs),
        recorded_share=share,
        epochs=2,
        batch_size=2,
        progress=False,
    )
    assert len(calls) == 2 * (5 + share)  # five target images per epoch, plus the false positive on b5 when recorded
    for stem, boxes, empty_target in calls:
        target_boxes = oracle.boxes(next(b for b in blobs if b.stem == stem).mask)
        if share and stem == "b1":
            np.testing.assert_array_equal(boxes, [[1, 2, 30, 40]])
        elif share and stem == "b5":
            np.testing.assert_array_equal(boxes, [[5, 5, 20, 20]])
            assert empty_target  # trains towards an empty mask
        else:  # b2's empty record, or share 0: the training prompter's boxes
            np.testing.assert_array_equal(boxes, target_boxes)
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert record["config"]["recorded_share"] == share and len(record["train_prompts"]) == 64


def test_a_half_share_draws_afresh_every_epoch(tiny_sam, blobs, tmp_path, monkeypatch):
    blobs = [type(blobs[0])(f"c{i}", seed=i) for i in range(12)]
    recorded = {b.stem: msk.Prompts(box_xyxy=[[0, 0, 7, 7]]) for b in blobs}
    calls = _spy_losses(monkeypatch)
    finetune(tiny_sam, blobs, out_dir=tmp_path / "run", train_prompts=recorded, epochs=3, progress=False)
    used = [[s for s, boxes, _ in calls[e * 12 : (e + 1) * 12] if boxes.tolist() == [[0, 0, 7, 7]]] for e in range(3)]
    assert all(0 < len(u) < 12 for u in used)  # some of each
    assert len({tuple(sorted(u)) for u in used}) > 1  # another draw per epoch


def test_runs_without_recorded_prompts_keep_their_record(tiny_sam, blobs, tmp_path, monkeypatch):
    _spy_losses(monkeypatch)
    finetune(tiny_sam, blobs, out_dir=tmp_path / "run", epochs=1, progress=False)
    record = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert "recorded_share" not in record["config"] and "train_prompts" not in record  # older run folders still resume
    # Other recorded prompts in the same folder: another run, refused.
    finetune(tiny_sam, blobs, out_dir=tmp_path / "rec", train_prompts=_recorded(blobs), epochs=1, progress=False)
    other = {"b1": msk.Prompts(box_xyxy=[[1, 2, 30, 41]])}
    with pytest.raises(ValueError, match="holds another fine-tuning run"):
        finetune(tiny_sam, blobs, out_dir=tmp_path / "rec", train_prompts=other, epochs=1, progress=False)


def test_bad_recorded_prompts(tiny_sam, blobs, tmp_path):
    with pytest.raises(ValueError, match=r"train_prompts: expected stems of the training samples, got 1 others: \['zz'\]"):
        finetune(tiny_sam, blobs, out_dir=tmp_path / "a", train_prompts={"zz": msk.Prompts.empty()}, progress=False)
    with pytest.raises(TypeError, match=r"train_prompts\['b1'\]: expected Prompts, got list"):
        finetune(tiny_sam, blobs, out_dir=tmp_path / "b", train_prompts={"b1": [[0, 0, 5, 5]]}, progress=False)
    with pytest.raises(TypeError, match="train_prompts: expected a mapping"):
        finetune(tiny_sam, blobs, out_dir=tmp_path / "c", train_prompts=[msk.Prompts.empty()], progress=False)
    with pytest.raises(ValueError, match="recorded_share"):
        finetune(tiny_sam, blobs, out_dir=tmp_path / "d", recorded_share=1.5, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written

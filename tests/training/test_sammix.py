"""SAM-Mix and SAM-PP (paper 001) on synthetic blobs with the real LiteMedSAM.

Half of the images have a bright blob (``make_blob_image``), half only the noisy
background; all get three small bright specks, so that the blob is the only cue
of presence (as in tests/prompters/test_cam.py). The classifier is the small one of
those tests (64 px input, width 8, depth 3) and learns with a learning rate of
1e-2; the segmenter trains in decoder mode (each image encoded once, shared
through an embedding cache) except in the one LoRA test. Torch uses one thread:
on the shared 2-core machine that is faster than two.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache
from medsamkit.cli import main
from medsamkit.data import MaskFolder
from medsamkit.prompters import CAMBoxPrompter
from medsamkit.prompters import seeded_classifier as _seeded_classifier
from medsamkit.testing import FakeSegmenter, make_presence_folder
from medsamkit.training import (
    SAMMixConfig,
    SAMMixResult,
    fit_sam_pp,
    fit_sammix,
    has_lora,
    pick_labelled,
)
from medsamkit.training._sammix import HISTORY_COLUMNS

SIZE_HW = (64, 80)
SMALL = {"input_size": 64, "width": 8, "depth": 3, "classifier_lr": 1e-2}
DECODER = {"mode": "decoder", "batch_size": 4, **SMALL}


def _folder(root, n: int, offset: int) -> MaskFolder:
    """``n`` images, even indices with a blob (``medsamkit.testing.make_presence_folder``)."""
    return make_presence_folder(root, n, size_hw=SIZE_HW, seed=offset)


def _dice(pred, target) -> float:
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * (pred & target).sum() / total)


def _pipeline_dice(pipeline, samples) -> float:
    return float(np.mean([_dice(pipeline(image).mask, mask) for image, mask in (s.load() for s in samples)]))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train: 12 images, 6 with a blob; val: 4 images, 2 with a blob)."""
    root = tmp_path_factory.mktemp("sammix-data")
    return _folder(root / "train", 12, 0), _folder(root / "val", 4, 1000)


@pytest.fixture(scope="module")
def seg(litemedsam, tmp_path_factory):
    return CachedSegmenter(litemedsam, EmbeddingCache(tmp_path_factory.mktemp("emb")))


@pytest.fixture(scope="module")
def run(seg, data, tmp_path_factory):
    """SAM-Mix in decoder mode: 4 epochs (the first classifier-only), all masks used."""
    train, val = data
    before = {k: v.clone() for k, v in seg.model.mask_decoder.state_dict().items()}
    result = fit_sammix(
        seg, train, val, out_dir=tmp_path_factory.mktemp("sammix") / "run", epochs=4, warmup_epochs=1, progress=False, **DECODER
    )
    return result, before


# ---------------------------------------------------------------------------------------
# SAM-Mix
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_history_and_run_folder(run, data):
    result, _ = run
    assert isinstance(result, SAMMixResult) and result.method == "sam-mix"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert all(list(h) == list(HISTORY_COLUMNS) for h in result.history)
    # warm-up: the classifier alone; afterwards the 6 labelled blob images train the segmenter
    # (each got a CAM box or is counted in n_no_box)
    first, *rest = result.history
    assert first["n_seg"] == 0 and first["seg_loss"] is None and first["n_no_box"] == 0
    assert all(h["n_seg"] + h["n_no_box"] == 6 and h["n_seg"] >= 3 for h in rest), rest
    assert all(0 <= h["val_dice"] <= 1 and 0 <= h["val_accuracy"] <= 1 for h in result.history)
    run_dir = result.run_dir
    for name in (
        "model.pth",
        "pipeline.json",
        "prompter.pt",
        "history.csv",
        "loss_curve.png",
        "threshold_sweep.csv",
        "sammix.json",
        "last.pt",
    ):
        assert (run_dir / name).is_file(), name
    with open(run_dir / "history.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(HISTORY_COLUMNS) and len(rows) == 4 and rows[0]["seg_loss"] == ""
    record = json.loads((run_dir / "sammix.json").read_text())
    assert record["method"] == "sam-mix" and record["labelled"] == list(data[0].stems)
    assert record["config"]["mode"] == "decoder" and "lora_rank" not in record["config"]
    assert result.best_val_dice == pytest.approx(max(h["val_dice"] for h in result.history))
    assert result.history[result.best_epoch - 1]["val_dice"] == result.best_val_dice


@pytest.mark.real_model
def test_training_improves_the_automatic_pipeline(run, seg, data):
    result, before = run
    train, val = data
    # The classifier learned presence (chance: 0.5) ...
    correct = [(result.prompter.presence(image) >= 0.5) == mask.any() for image, mask in (s.load() for s in train)]
    assert np.mean(correct) >= 0.75, correct
    # ... the segmentation loss fell (measured 0.23 -> 0.02) ...
    seg_losses = [h["seg_loss"] for h in result.history[1:]]
    assert seg_losses[-1] < 0.5 * seg_losses[0], seg_losses
    assert result.history[-1]["cls_loss"] < result.history[0]["cls_loss"]
    # ... and the whole pipeline beats the same pipeline before training (untrained
    # classifier, original segmenter): measured 0.99 against 0.5.
    untrained = CAMBoxPrompter(**{k: v for k, v in SMALL.items() if k != "classifier_lr"})
    untrained.model = _seeded_classifier(8, 3, 0).eval()
    start = _pipeline_dice(msk.Pipeline(untrained, seg), val)
    assert result.best_val_dice > start + 0.3, (start, result.best_val_dice)
    # The caller's segmenter is untouched; the saved one has a trained decoder.
    after = seg.model.mask_decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = torch.load(result.run_dir / "model.pth", weights_only=True)
    assert any(not torch.equal(saved[f"mask_decoder.{k}"], before[k]) for k in before)


@pytest.mark.real_model
def test_saved_pipeline_loads_and_segments(run, data):
    result, _ = run
    loaded = msk.Pipeline.load(result.run_dir)
    assert isinstance(loaded.prompter, CAMBoxPrompter) and loaded.threshold == result.threshold
    assert loaded.prompter.train_info["trained_by"] == "sam-mix"
    assert loaded.prompter.train_info["best_epoch"] == result.best_epoch
    for sample in data[1]:
        image, mask = sample.load()
        got = loaded(image)
        np.testing.assert_array_equal(got.mask, result.pipeline(image).mask)
        if not mask.any():
            continue
        assert _dice(got.mask, mask) > 0.8


@pytest.mark.real_model
def test_resumed_run_continues_at_the_next_epoch_and_matches_an_uninterrupted_one(seg, data, tmp_path):
    train, val = data[0][:6], data[1][:2]
    kwargs = dict(warmup_epochs=0, box_fallback="oracle", progress=False, **DECODER)
    straight = fit_sammix(seg, train, val, out_dir=tmp_path / "straight", epochs=2, **kwargs)
    first = fit_sammix(seg, train, val, out_dir=tmp_path / "resumed", epochs=1, **kwargs)
    assert [h["epoch"] for h in first.history] == [1]
    resumed = fit_sammix(seg, train, val, out_dir=tmp_path / "resumed", epochs=2, **kwargs)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[0] == first.history[0]  # epoch 1 was read back, not run again
    same = [k for k in HISTORY_COLUMNS if k != "seconds"]
    assert [{k: h[k] for k in same} for h in resumed.history] == [{k: h[k] for k in same} for h in straight.history]
    # The run folder's record does not pin the number of epochs; other settings are refused.
    with pytest.raises(ValueError, match="out_dir"):
        fit_sammix(seg, train, val, out_dir=tmp_path / "resumed", epochs=2, **{**kwargs, "omega": 0.6})


@pytest.mark.real_model
def test_only_labelled_masks_train_the_segmenter(seg, data, tmp_path, monkeypatch):
    train, _ = data
    positive, negative = train[0].stem, train[1].stem
    kwargs = dict(epochs=2, warmup_epochs=1, progress=False, **DECODER)
    # The classifier's boxes are replaced by one fixed box, then by none: exact counts.
    box = msk.Prompts(box_xyxy=np.array([[5, 5, 60, 50]], dtype=np.float32))
    monkeypatch.setattr(CAMBoxPrompter, "__call__", lambda self, image, target=None: box)
    one = fit_sammix(seg, train, out_dir=tmp_path / "one", labelled=[positive, negative], **kwargs)
    assert [(h["n_seg"], h["n_no_box"]) for h in one.history] == [(0, 0), (1, 0)]
    assert one.labelled == (positive, negative) and one.best_val_dice is None and one.best_epoch == 2
    # negatives=True: the boxed image without the target trains towards an empty mask too
    both = fit_sammix(
        seg, train, out_dir=tmp_path / "both", labelled=[train[1], train[0]], negatives=True, loss="dicece", **kwargs
    )
    assert [h["n_seg"] for h in both.history] == [0, 2]
    monkeypatch.setattr(CAMBoxPrompter, "__call__", lambda self, image, target=None: msk.Prompts.empty())
    skipped = fit_sammix(seg, train, out_dir=tmp_path / "skip", labelled=[positive, negative], **kwargs)
    assert [(h["n_seg"], h["n_no_box"], h["seg_loss"]) for h in skipped.history] == [(0, 0, None), (0, 1, None)]
    oracle = fit_sammix(seg, train, out_dir=tmp_path / "oracle", labelled=[positive, negative], box_fallback="oracle", **kwargs)
    assert [(h["n_seg"], h["n_no_box"]) for h in oracle.history] == [(0, 0), (1, 1)]
    monkeypatch.undo()
    # No labelled image: the classifier trains, the segmenter does not (SAM-Mix-0).
    before = seg.model.state_dict()
    none = fit_sammix(seg, train, out_dir=tmp_path / "none", labelled=[], **kwargs)
    assert [h["n_seg"] for h in none.history] == [0, 0] and all(h["seg_loss"] is None for h in none.history)
    assert none.history[-1]["cls_loss"] < none.history[0]["cls_loss"]
    saved = torch.load(none.run_dir / "model.pth", weights_only=True)
    assert all(torch.equal(saved[k], before[k]) for k in before)


@pytest.mark.real_model
def test_lora_mode_trains_adapters_on_cam_boxes(litemedsam, data, tmp_path):
    train = data[0][:4]  # two with a blob
    segmenter = litemedsam
    before = {k: v.clone() for k, v in segmenter.model.state_dict().items()}
    result = fit_sammix(
        segmenter,
        train,
        out_dir=tmp_path / "lora",
        labelled=[train[0].stem],
        mode="lora",
        epochs=1,
        warmup_epochs=0,
        box_fallback="oracle",
        segmenter_lr=1e-2,
        batch_size=4,
        progress=False,
        **SMALL,
    )
    assert [h["n_seg"] for h in result.history] == [1]
    assert result.adapters == tmp_path / "lora" / "adapters.safetensors" and result.adapters.is_file()
    saved = torch.load(result.run_dir / "model.pth", weights_only=True)
    changed = {k for k in saved if not torch.equal(saved[k], before[k])}
    assert changed and all(k.startswith("image_encoder.") and k.endswith(".attn.qkv.weight") for k in changed)
    # the caller's segmenter: no adapters, same weights
    assert not has_lora(segmenter.model)
    assert all(torch.equal(v, before[k]) for k, v in segmenter.model.state_dict().items())
    assert json.loads((result.run_dir / "sammix.json").read_text())["config"]["lora_rank"] == 8
    assert isinstance(msk.Pipeline.load(result.run_dir).prompter, CAMBoxPrompter)


# ---------------------------------------------------------------------------------------
# SAM-PP
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_sam_pp_trains_the_classifier_then_the_segmenter_on_the_labelled_images(seg, data, tmp_path, monkeypatch):
    train, val = data
    labelled = pick_labelled(train, 2, seed=0)
    result = fit_sam_pp(seg, train, val, out_dir=tmp_path / "pp", labelled=labelled, epochs=2, progress=False, **DECODER)
    assert result.method == "sam-pp" and result.labelled == labelled
    assert isinstance(result.prompter, CAMBoxPrompter) and result.pipeline.prompter is result.prompter
    assert len(result.prompter.history) == 2 and result.prompter.train_info["n_train"] == 12
    assert [h["epoch"] for h in result.history] == [1, 2]
    run_dir = result.run_dir
    assert (run_dir / "classifier.pt").is_file() and (run_dir / "sam_pp.json").is_file()
    assert json.loads((run_dir / "finetune.json").read_text())["train"] == list(labelled)
    # Validation and the threshold sweep used the CAM prompter (the automatic pipeline).
    assert json.loads((run_dir / "pipeline.json").read_text())["prompter"]["name"] == "cam-box"
    at_05 = next(r["dice"] for r in result.sweep if r["threshold"] == 0.5)
    assert _pipeline_dice(result.pipeline.replace(threshold=0.5), val) == pytest.approx(at_05, abs=0.02)
    loaded = msk.Pipeline.load(run_dir)
    assert isinstance(loaded.prompter, CAMBoxPrompter) and loaded.threshold == result.threshold
    image, _ = val[0].load()
    np.testing.assert_array_equal(loaded(image).mask, result.pipeline(image).mask)
    # Resumed: the saved classifier is reused, not fitted again.
    monkeypatch.setattr(CAMBoxPrompter, "fit", lambda *args, **kwargs: pytest.fail("the classifier was fitted again"))
    again = fit_sam_pp(seg, train, val, out_dir=run_dir, labelled=labelled, epochs=2, progress=False, **DECODER)
    for (name, a), (_, b) in zip(again.prompter.model.state_dict().items(), result.prompter.model.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.real_model
def test_sam_pp_without_labelled_images_keeps_the_segmenter(seg, data, tmp_path):
    train, _ = data
    result = fit_sam_pp(seg, train, out_dir=tmp_path / "pp0", labelled=[], epochs=1, progress=False, **DECODER)
    assert result.best_epoch == 0 and result.history == [] and result.threshold == 0.5
    assert not (tmp_path / "pp0" / "model.pth").exists()
    assert msk.Pipeline.load(tmp_path / "pp0").segmenter.model_id == seg.model_id


# ---------------------------------------------------------------------------------------
# labelled subsets, bad input
# ---------------------------------------------------------------------------------------


def test_pick_labelled_draws_images_with_the_target(data):
    train, _ = data
    chosen = pick_labelled(train, 3, seed=1)
    assert len(chosen) == 3 and chosen == tuple(sorted(chosen))
    assert all(train.sample(stem).load_mask().any() for stem in chosen)
    assert pick_labelled(list(reversed(train)), 3, seed=1) == chosen
    assert pick_labelled(train, 3, seed=2) != chosen or pick_labelled(train, 3, seed=3) != chosen
    with pytest.raises(ValueError, match="n: expected at most 6"):
        pick_labelled(train, 7)
    with pytest.raises(ValueError, match="n: expected a non-negative int"):
        pick_labelled(train, -1)


def test_bad_input_names_the_parameter_and_writes_nothing(litemedsam, data, tmp_path):
    train, val = data
    positives = [s for s in train if s.load_mask().any()]
    negatives = [s for s in train if not s.load_mask().any()]
    out = tmp_path / "x"
    for fit in (fit_sammix, fit_sam_pp):
        with pytest.raises(ValueError, match="train: expected at least one"):
            fit(litemedsam, [], out_dir=out)
        with pytest.raises(ValueError, match="train: expected images with and without the target.*non-empty"):
            fit(litemedsam, positives, out_dir=out, **DECODER)
        with pytest.raises(ValueError, match=r"labelled: expected stems of train samples, got 1 not in train: \['nope'\]"):
            fit(litemedsam, train, out_dir=out, labelled=[train[0].stem, "nope"], **DECODER)
        with pytest.raises(ValueError, match="labelled: expected at least one image with a non-empty mask"):
            fit(litemedsam, train, out_dir=out, labelled=[s.stem for s in negatives], **DECODER)
        with pytest.raises(TypeError, match="labelled: expected a collection"):
            fit(litemedsam, train, out_dir=out, labelled=train[0].stem, **DECODER)
        with pytest.raises(TypeError, match=r"train\[0\]"):
            fit(litemedsam, [(np.zeros(SIZE_HW), np.zeros(SIZE_HW, bool))], out_dir=out)
        with pytest.raises(TypeError, match="segmenter"):
            fit(FakeSegmenter(), train, out_dir=out)
        with pytest.raises(ValueError, match="not_a_setting"):
            fit(litemedsam, train, out_dir=out, not_a_setting=1)
        with pytest.raises(ValueError, match="input_size"):
            fit(litemedsam, train, out_dir=out, mode="decoder", input_size=34, depth=3)
        with pytest.raises(ValueError, match="cam"):
            fit(litemedsam, train, out_dir=out, mode="decoder", cam="scorecam")
        with pytest.raises(TypeError, match="config"):
            fit(litemedsam, train, out_dir=out, config={"epochs": 2})
    with pytest.raises(ValueError, match=r"warmup_epochs: expected fewer than epochs \(2\)"):
        fit_sammix(litemedsam, train, out_dir=out, epochs=2, warmup_epochs=2, **DECODER)
    assert not out.exists()
    with pytest.raises(ValueError, match="box_fallback"):
        SAMMixConfig(box_fallback="random")
    assert SAMMixConfig().finetune_config().lr == 1e-3
    assert SAMMixConfig(lr=1e-2, segmenter_lr=1e-4).finetune_config().lr == 1e-4


# ---------------------------------------------------------------------------------------
# the classifier on the segmenter's own embedding (backbone="embedding")
# ---------------------------------------------------------------------------------------

EMBEDDING = {"mode": "decoder", "batch_size": 3, "backbone": "embedding", "pool": 1, "width": 2, "depth": 2}


@pytest.mark.parametrize("fit", [fit_sammix, fit_sam_pp])
def test_embedding_backbone_trains_on_the_segmenters_embedding(tiny_sam, blobs, tmp_path, monkeypatch, fit):
    """The plumbing (tiny random-weight SAM: a 32 x 4 x 4 embedding): the classifier reads the embedding in
    training, in the joint loop's box step and in validation (a missing encoding would raise)."""
    from medsamkit.training import _engine, _sammix

    # the tiny model has no checkpoint format to reload from: saving the pipeline is left out
    monkeypatch.setattr(_sammix, "finish_run", lambda *args: (None, 0.5, [], None))
    monkeypatch.setattr(_engine, "finish_run", lambda *args: (None, 0.5, [], None))
    seen = []
    original = CAMBoxPrompter.__call__
    monkeypatch.setattr(
        CAMBoxPrompter, "__call__", lambda self, image, **kw: seen.append(kw["encoding"]) or original(self, image, **kw)
    )
    train, val = blobs[:4] + blobs[5:], blobs[4:5] + blobs[5:]
    result = fit(tiny_sam, train, val, out_dir=tmp_path / "run", epochs=2, progress=False, **EMBEDDING)
    prompter = result.prompter
    assert prompter.backbone == "embedding" and prompter.uses_encoding
    assert prompter.channels == 32 and prompter.model_id == tiny_sam.model_id  # the tiny SAM's 32-channel embedding
    assert seen and all(e is not None and e.model_id == tiny_sam.model_id for e in seen)
    if fit is fit_sammix:  # the box step of the joint loop asked the prompter for every labelled image after warm-up
        assert len(seen) >= 4
    record = json.loads((result.run_dir / ("sammix.json" if fit is fit_sammix else "sam_pp.json")).read_text())
    assert record["config"]["backbone"] == "embedding" and record["config"]["pool"] == 1
    loaded = CAMBoxPrompter.load(prompter.save(tmp_path / "cam.pt"))
    assert loaded.backbone == "embedding" and loaded.channels == 32
    for sample in blobs:
        encoding = tiny_sam.encode(sample.image)
        assert loaded.presence(sample.image, encoding=encoding) == prompter.presence(sample.image, encoding=encoding)


def test_embedding_backbone_needs_decoder_mode_and_cnn_records_stay_as_before(tiny_sam, blobs, tmp_path):
    for fit in (fit_sammix, fit_sam_pp):
        with pytest.raises(ValueError, match="^backbone: 'embedding' .*mode='lora'"):
            fit(tiny_sam, blobs, out_dir=tmp_path / "x", mode="lora", backbone="embedding")
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="backbone"):
        SAMMixConfig(backbone="resnet")
    with pytest.raises(ValueError, match="pool"):
        SAMMixConfig(pool=3)
    # a "cnn" run's record has no backbone / pool: run folders of earlier versions still resume
    assert "backbone" not in SAMMixConfig().record() and "pool" not in SAMMixConfig().record()
    assert SAMMixConfig(backbone="embedding").record()["backbone"] == "embedding"


@pytest.mark.parametrize(("extra", "method"), [([], "fit_sammix"), (["--two-stage"], "fit_sam_pp")])
def test_cli_backbone_reaches_the_training_call(tmp_path, monkeypatch, capsys, extra, method):
    from medsamkit import training

    calls = []

    def stop(segmenter, train, val, **kwargs):
        calls.append(kwargs)
        raise ValueError("stopped before training")

    monkeypatch.setattr(training, method, stop)
    data = _folder(tmp_path / "data", 6, 0)
    base = ["sammix", str(data.root), "--segmenter", "fake", "--no-cache", "--no-progress", *extra]
    assert main([*base, "--out", str(tmp_path / "a"), "--backbone", "embedding", "--mode", "decoder"]) == 2
    assert main([*base, "--out", str(tmp_path / "b")]) == 2
    assert calls[0]["backbone"] == "embedding" and calls[0]["mode"] == "decoder"
    assert "backbone" not in calls[1]  # the default: nothing new in the settings, earlier run folders resume
    assert "stopped before training" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--out", str(tmp_path / "c"), "--backbone", "resnet"])


# ---------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_cli_sammix_then_evaluate_the_saved_pipeline(tmp_path, capsys):
    data = _folder(tmp_path / "data", 10, 2000)
    out = tmp_path / "run"
    code = main(
        [
            "sammix",
            "--data",
            str(data.root),
            "--out",
            str(out),
            "--mode",
            "decoder",
            "--epochs",
            "2",
            "--labelled",
            "2",
            "--batch-size",
            "4",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "(2 with masks used)" in text and "SAM-Mix: best epoch" in text and "SAM-Mix, trained" in text
    record = json.loads((out / "sammix.json").read_text())
    assert len(record["labelled"]) == 2 and record["config"]["warmup_epochs"] == 1
    split = json.loads((out / "split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (6, 2, 2)
    assert (out / "test-trained" / "summary.json").is_file()
    assert main(["evaluate", str(data.root), "--pipeline", str(out), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    assert (tmp_path / "eval" / "metrics.csv").is_file()


@pytest.mark.real_model
def test_cli_two_stage_and_usage_errors(tmp_path, capsys, monkeypatch):
    data = _folder(tmp_path / "data", 10, 2000)
    calls = []

    def fake_fit(segmenter, train, val=None, *, out_dir, labelled, progress, **overrides):
        calls.append({"train": [s.stem for s in train], "labelled": labelled, "overrides": overrides})
        return SAMMixResult(
            method="sam-pp",
            run_dir=out_dir,
            pipeline=None,
            prompter=None,
            history=[],
            best_epoch=0,
            best_val_dice=None,
            threshold=0.5,
            sweep=[],
            labelled=labelled or (),
        )

    monkeypatch.setattr(msk.training, "fit_sam_pp", fake_fit)  # what the command calls
    code = main(
        [
            "sammix",
            str(data.root),
            "--out",
            str(tmp_path / "pp"),
            "--two-stage",
            "--labelled",
            "3",
            "--mode",
            "decoder",
            "--test-fraction",
            "0",
            "--no-cache",
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    (call,) = calls
    assert len(call["labelled"]) == 3 and set(call["labelled"]) <= set(call["train"])
    assert call["overrides"] == {
        "mode": "decoder",
        "epochs": 10,
        "weight_decay": 0.0,
        "loss": "dice",
        "batch_size": 16,
        "patience": 5,
        "seed": 0,
    }
    capsys.readouterr()
    assert main(["sammix", "--out", str(tmp_path / "a"), "--no-progress"]) == 2
    assert "DATA_DIR or with --data" in capsys.readouterr().err
    assert main(["sammix", str(data.root), "--out", str(tmp_path / "b"), "--labelled", "9", "--no-progress"]) == 2
    assert "n: expected at most" in capsys.readouterr().err

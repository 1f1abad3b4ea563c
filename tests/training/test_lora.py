"""LoRA fine-tuning (peft) of the image encoder: the real LiteMedSAM on 256-px chest X-rays,
and tiny random-weight SAM / HQ-SAM ViTs (built from the packages' own modeling classes).

LiteMedSAM's encoder runs forward and backward at every LoRA step (~5 s per image on
a busy 2-core CPU), so the training runs here are tiny: 4 training images, 2 epochs.
Torch uses one thread here: on the shared 2-core machine two threads are about twice
as slow, and other jobs keep their core.
"""

from __future__ import annotations

import copy
import inspect
import json
import sys

import numpy as np
import pytest
import torch
from _tiny_sam import tiny_sam_model

import medsamkit as msk
from medsamkit import Prompts, _epochs
from medsamkit.segmenters import _sam
from medsamkit.segmenters._sam import HQSAM, SAM
from medsamkit.training import (
    FinetuneConfig,
    _engine,
    apply_lora,
    finetune,
    has_lora,
    load_lora,
    lora_settings,
    merge_lora,
    read_lora,
    save_lora,
    unload_lora,
)
from medsamkit.training._trainable import union_loss

N_TRAIN, N_VAL = 4, 2

# Outputs are compared with LiteMedSAM's exact float32 encoder where it has a faster,
# approximate one (bfloat16): the adapters' effects are small next to bfloat16 rounding.
F32 = {"precision": "float32"} if "precision" in inspect.signature(msk.LiteMedSAM).parameters else {}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_cxr(cxr256):
    """(train, val) from the 256 x 256 chest X-rays of ``tests/training/conftest.py``."""
    return cxr256[:N_TRAIN], cxr256[N_TRAIN : N_TRAIN + N_VAL]


@pytest.fixture(scope="module")
def exact():
    """LiteMedSAM with the bundled weights and the exact float32 encoder."""
    return msk.LiteMedSAM(**F32)


@pytest.fixture(scope="module")
def points(small_cxr):
    train, _ = small_cxr
    return msk.MeanMaskPointPrompter().fit(train, progress=False)


def _dice(pred, target):
    return float(2 * (pred & target).sum() / (pred.sum() + target.sum()))


def _val_dice(segmenter, prompter, samples, threshold=0.5):
    pipeline = msk.Pipeline(prompter, segmenter, threshold=threshold)
    scores = []
    for sample in samples:
        image, mask = sample.load()
        scores.append(_dice(pipeline(image).mask, mask))
    return float(np.mean(scores))


def _probabilities(segmenter, image, prompts):
    return segmenter.decode(segmenter.encode(image), prompts).probabilities


@pytest.fixture(scope="module")
def lora_run(litemedsam, small_cxr, points, tmp_path_factory):
    """One LoRA-only run (rank 8 on qkv, decoder frozen): 4 images, 2 epochs, batch 1, lr 1e-2."""
    train, val = small_cxr
    before = {k: v.clone() for k, v in litemedsam.model.state_dict().items()}
    zero_shot = _val_dice(litemedsam, points, val)
    result = finetune(
        litemedsam,
        train,
        val,
        out_dir=tmp_path_factory.mktemp("lora") / "run",
        prompter=points,
        mode="lora",
        epochs=2,
        lr=1e-2,
        batch_size=1,
        patience=0,
        progress=False,
    )
    return result, before, zero_shot


# ---------------------------------------------------------------------------------------
# LoRA fine-tuning of the real LiteMedSAM
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_lora_finetuning_with_mean_mask_points_beats_zero_shot(litemedsam, lora_run, small_cxr, points):
    result, before, zero_shot = lora_run
    _, val = small_cxr
    tuned = _val_dice(result.pipeline.segmenter, points, val)
    # LiteMedSAM was trained with boxes: mean-mask points alone give ~0.09 Dice here;
    # adapting the encoder alone (59k weights, the decoder frozen) teaches it the lungs.
    assert tuned > zero_shot + 0.2, (zero_shot, tuned, result.history)
    assert result.best_val_dice == pytest.approx(max(h["val_dice"] for h in result.history))
    # The caller's segmenter is untouched: no adapters, same weights, nothing trainable.
    assert not has_lora(litemedsam.model)
    after = litemedsam.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in litemedsam.model.parameters())


@pytest.mark.real_model
def test_only_the_adapters_change_and_the_merged_model_needs_no_peft(litemedsam, lora_run):
    result, before, _ = lora_run
    run = result.run_dir
    for name in (
        "model.pth",
        "adapters.safetensors",
        "pipeline.json",
        "history.csv",
        "loss_curve.png",
        "threshold_sweep.csv",
        "finetune.json",
        "last.pt",
    ):
        assert (run / name).is_file(), name
    assert result.adapters == run / "adapters.safetensors"
    record = json.loads((run / "finetune.json").read_text())["config"]
    assert record["mode"] == "lora" and record["lora_rank"] == 8 and record["lora_targets"] == ["qkv"]

    # The adapter file: LoRA A/B matrices of the 10 TinyViT qkv layers, nothing else.
    tensors, info = read_lora(result.adapters)
    assert info["lora"] == {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["qkv"]}
    assert info["decoder"] is False and info["base_model_id"] == litemedsam.model_id
    assert len(tensors) == 20 and all(".attn.qkv.lora_" in k for k in tensors)
    assert all(t.shape[0] == 8 for k, t in tensors.items() if "lora_A" in k)

    # model.pth: the original keys (merged, no peft); only the qkv weights differ from the base.
    saved = torch.load(run / "model.pth", weights_only=True)
    assert saved.keys() == before.keys()
    changed = {k for k in saved if not torch.equal(saved[k], before[k])}
    qkv = {k for k in before if k.startswith("image_encoder.") and k.endswith(".attn.qkv.weight")}
    assert len(qkv) == 10 and changed == qkv
    assert msk.Pipeline.load(run).segmenter.model_id.startswith("litemedsam:")

    # Attached again and removed without merging (peft unload): the base encoder, bit for bit.
    adapted = load_lora(litemedsam, run)
    assert has_lora(adapted.model) and lora_settings(adapted.model)["rank"] == 8
    plain = unload_lora(adapted.model).state_dict()
    assert plain.keys() == before.keys() and all(torch.equal(plain[k], before[k]) for k in before)


@pytest.mark.real_model
def test_saved_adapters_give_the_trained_outputs(exact, lora_run, small_cxr, points):
    result, _, _ = lora_run
    image, _ = small_cxr[1][0].load()
    prompts = points(image)
    adapted = load_lora(exact, result.adapters)
    assert adapted.model_id.startswith(exact.model_id + "+lora:")
    # model.pth (the pipeline's weights) holds the merged adapters: the same probabilities up to rounding.
    merged = msk.LiteMedSAM(checkpoint=result.run_dir / "model.pth", **F32)
    np.testing.assert_allclose(_probabilities(adapted, image, prompts), _probabilities(merged, image, prompts), atol=1e-4)


@pytest.mark.real_model
def test_adapters_save_load_round_trip_and_merge(exact, small_cxr, tmp_path):
    image, _ = small_cxr[0][0].load()
    prompts = Prompts(points_xy=[[[80, 120], [180, 120]]], point_labels=[[1, 1]])
    model = apply_lora(copy.deepcopy(exact.model))
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero (adapters are a no-op): give them some weight
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    adapted = msk.LiteMedSAM(model=model.eval(), **F32)
    expected = _probabilities(adapted, image, prompts)
    assert not np.allclose(expected, _probabilities(exact, image, prompts), atol=1e-3)

    path = save_lora(model, tmp_path / "adapters.safetensors", base_model_id=exact.model_id)
    loaded = load_lora(exact, path)
    np.testing.assert_array_equal(_probabilities(loaded, image, prompts), expected)
    merged = load_lora(exact, path, merge=True)
    assert not has_lora(merged.model) and merged.model_id != loaded.model_id
    np.testing.assert_allclose(_probabilities(merged, image, prompts), expected, atol=1e-4)

    # Merged and saved as a plain state dict: LiteMedSAM(checkpoint=...) loads it.
    torch.save(merge_lora(model).state_dict(), tmp_path / "model.pth")
    from_checkpoint = msk.LiteMedSAM(checkpoint=tmp_path / "model.pth", **F32)
    np.testing.assert_allclose(_probabilities(from_checkpoint, image, prompts), expected, atol=1e-4)
    with pytest.warns(UserWarning, match="trained on"):
        load_lora(from_checkpoint, path)


@pytest.mark.real_model
def test_frozen_tinyvit_prefix_is_computed_once_and_gives_the_full_encoder_output(litemedsam, small_cxr):
    model = litemedsam.model
    encoder = model.image_encoder
    try:
        trainable = _engine.Trainable(litemedsam, FinetuneConfig(mode="lora"))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.02)
        item = trainable.prepare(small_cxr[0][:1], "prepare", False)[0]
        with torch.no_grad():
            first = trainable.features(item)  # checks the split against the full encoder
            assert trainable.encoder._split_ok is True and item.prefix is not None
            again = trainable.features(item)  # from the kept prefix
            full = model.image_encoder(item.x)
        torch.testing.assert_close(again, first)
        torch.testing.assert_close(again, full, atol=1e-5, rtol=1e-4)
    finally:
        model.image_encoder = encoder
        for p in model.parameters():
            p.requires_grad_(False)


@pytest.mark.real_model
def test_lora_with_the_decoder_resumes_after_an_interruption(litemedsam, exact, small_cxr, points, tmp_path, monkeypatch):
    train, _ = small_cxr
    kwargs = dict(
        out_dir=tmp_path / "run",
        prompter=points,
        mode="lora",
        train_decoder=True,
        lora_rank=4,
        epochs=2,
        lr=1e-3,
        batch_size=1,
        patience=0,
        progress=False,
    )
    before = {k: v.clone() for k, v in litemedsam.model.state_dict().items()}
    real_curve = _epochs.save_curve

    def stop_after_first_epoch(run_dir, history, **kwargs):
        real_curve(run_dir, history, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(_epochs, "save_curve", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune(litemedsam, train[:1], None, **kwargs)
    assert not has_lora(litemedsam.model)  # put back even when interrupted
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert [h["epoch"] for h in state["history"]] == [1]
    assert any(k.startswith("mask_decoder.") for k in state["parts"]["trainable"])
    assert any("lora_A" in k for k in state["parts"]["trainable"])
    monkeypatch.setattr(_epochs, "save_curve", real_curve)
    result = finetune(litemedsam, train[:1], None, **kwargs)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[0] == json.loads(json.dumps(state["history"][0]))

    saved = torch.load(result.run_dir / "model.pth", weights_only=True)
    changed = {k.split(".")[0] for k in saved if not torch.equal(saved[k], before[k])}
    assert changed == {"image_encoder", "mask_decoder"}
    assert not any(
        not torch.equal(saved[k], before[k]) for k in before if k.startswith("image_encoder.") and not k.endswith("qkv.weight")
    )
    tensors, info = read_lora(result.adapters)
    assert info["decoder"] is True and info["lora"]["rank"] == 4
    assert any(k.startswith("mask_decoder.") for k in tensors)
    # The adapter file alone (with the decoder in it) rebuilds the fine-tuned model.
    image, _ = train[0].load()
    prompts = points(image)
    np.testing.assert_allclose(
        _probabilities(load_lora(exact, result.adapters), image, prompts),
        _probabilities(msk.LiteMedSAM(checkpoint=result.run_dir / "model.pth", **F32), image, prompts),
        atol=1e-4,
    )


# ---------------------------------------------------------------------------------------
# LoRA on tiny random-weight SAM and HQ-SAM (tests/training/_tiny_sam.py)
# ---------------------------------------------------------------------------------------


class _Sample:
    def __init__(self, stem, image, mask):
        self.stem, self._image, self._mask = stem, image, mask

    def load(self):
        return self._image, self._mask


def _blob_sample(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (90, 130, 3), dtype=np.uint8)
    mask = np.zeros((90, 130), dtype=bool)
    mask[20:70, 30:100] = True
    image[mask] += 120
    return _Sample(f"s{seed}", image, mask)


@pytest.mark.parametrize("family", ["sam", "hq"])
def test_lora_attaches_to_the_vit_qkv_of_sam_and_trains_one_step(family, tmp_path):
    pkg, cls, size = (_sam._import(_sam._SAM), SAM, 64) if family == "sam" else (_sam._import(_sam._HQ), HQSAM, 128)
    seg = cls(model=tiny_sam_model(pkg, img_size=size, seed=3))
    model = seg.model
    base = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = model.image_encoder
    trainable = _engine.Trainable(seg, FinetuneConfig(mode="lora"))
    try:
        adapted = [n for n, m in model.image_encoder.named_modules() if n.endswith("attn.qkv") and hasattr(m, "lora_A")]
        assert len(adapted) == 2  # one per ViT block
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert len(names) == 4 and all("qkv.lora_" in n for n in names)
        items = trainable.prepare([_blob_sample(0)], "prepare", False)
        assert trainable.encoder._tinyvit() is None  # a ViT: the whole encoder runs at every step
        optimizer = torch.optim.Adam(trainable.params, lr=1e-2)
        trainable.train()
        item = items[0]
        prompts = Prompts(box_xyxy=[[30, 20, 100, 70]])
        loss = union_loss(seg, trainable, item, prompts, _engine.loss_by_name("dicefocal"))
        loss.backward()
        # B starts at zero, so only B gets a gradient on the first step (A's is B^T times something).
        assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
        optimizer.step()
        after = model.state_dict()
        lora_keys = {k for k in after if "lora_" in k}
        assert any(not torch.equal(after[k], torch.zeros_like(after[k])) for k in lora_keys if "lora_B" in k)
        # Only adapter weights moved: everything else equals the base model.
        for key, value in after.items():
            if key not in lora_keys:
                plain = key.replace("base_model.model.", "").replace("base_layer.", "")
                assert torch.equal(value, base[plain]), key

        # Save, load and merge on SAM too.
        trainable.eval()
        path = save_lora(model, tmp_path / "adapters.safetensors")
        image = item.image
        adapted_seg = cls(model=model)
        loaded = load_lora(cls(model=tiny_sam_model(pkg, img_size=size, seed=3)), path)
        np.testing.assert_array_equal(_probabilities(loaded, image, prompts), _probabilities(adapted_seg, image, prompts))
        merged = merge_lora(copy.deepcopy(model))
        assert set(merged.state_dict()) == set(base)
        np.testing.assert_allclose(
            _probabilities(cls(model=merged), image, prompts), _probabilities(adapted_seg, image, prompts), atol=1e-4
        )
    finally:
        model.image_encoder = encoder


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


@pytest.mark.real_model
def test_missing_peft_says_how_to_install_it(litemedsam, small_cxr, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    message = r"LoRA fine-tuning needs peft: pip install medsamkit\[lora\]"
    with pytest.raises(ImportError, match=message) as info:
        apply_lora(copy.deepcopy(litemedsam.model))
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ImportError, match=message):
        finetune(litemedsam, small_cxr[0], out_dir=tmp_path / "run", mode="lora", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.real_model
def test_bad_input(litemedsam, tmp_path):
    model = copy.deepcopy(litemedsam.model)
    with pytest.raises(ValueError, match="rank"):
        apply_lora(model, rank=0)
    with pytest.raises(ValueError, match="dropout"):
        apply_lora(model, dropout=1.0)
    with pytest.raises(ValueError, match=r"target_modules: no layer .* matches \['to_q'\].*qkv"):
        apply_lora(model, target_modules=("to_q",))
    with pytest.raises(TypeError, match="image_encoder"):
        apply_lora(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no LoRA adapters|expected a model with LoRA"):
        merge_lora(model)
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        finetune(msk.LiteMedSAM(model=model), [object()], out_dir=tmp_path / "x", mode="lora")
    with pytest.raises(FileNotFoundError, match="adapters.safetensors"):
        read_lora(tmp_path / "nothing")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a medsamkit LoRA"):
        load_lora(litemedsam, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="lora_rank"):
        FinetuneConfig(mode="lora", lora_rank=0)
    with pytest.raises(ValueError, match="mode"):
        FinetuneConfig(mode="full")


def test_decoder_mode_records_no_lora_settings():
    assert "lora_rank" not in FinetuneConfig().record()
    assert FinetuneConfig(mode="lora").record()["lora_rank"] == 8

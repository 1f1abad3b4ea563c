"""k-fold cross-validation: bookkeeping with a stand-in for ``finetune`` on synthetic blobs
(folds, inner splits, prompter fitting, tables, resume), the CLI, and one small real run
of LiteMedSAM on 256-px chest X-rays.
"""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache
from medsamkit.cli import main
from medsamkit.testing import FakeSegmenter, make_blob_image
from medsamkit.training import CrossvalResult, _engine, crossval
from medsamkit.training._engine import FinetuneResult

N_IMAGES = 6


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    """Six 64 x 80 images with one bright blob each, as a MaskFolder."""
    root = tmp_path_factory.mktemp("blobs")
    for i in range(N_IMAGES):
        image, mask = make_blob_image((64, 80), seed=i)
        msk.data.write_image(root / "images" / f"img{i}.png", image)
        msk.write_mask(root / "masks" / f"img{i}.png", mask)
    return msk.MaskFolder(root)


class FakeFinetune:
    """Stands in for ``finetune``: records its calls, returns a pipeline with another fake model."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[dict] = []
        self.fail_on_call = fail_on_call

    def __call__(self, segmenter, train, val=None, *, out_dir, prompter, eval_prompter, config, progress):
        self.calls.append(
            {
                "train": [s.stem for s in train],
                "val": [s.stem for s in val or []],
                "config": config,
                "segmenter": segmenter,
                "prompter": prompter,
                "eval_prompter": eval_prompter,
            }
        )
        if self.fail_on_call == len(self.calls):
            raise KeyboardInterrupt
        out_dir.mkdir(parents=True, exist_ok=True)
        tuned = msk.Pipeline(eval_prompter, FakeSegmenter(mode="box"))
        return FinetuneResult(
            run_dir=out_dir, pipeline=tuned, history=[], best_epoch=1, best_val_dice=0.5, threshold=0.55, sweep=[]
        )


@pytest.fixture()
def fake_finetune(monkeypatch):
    fake = FakeFinetune()
    monkeypatch.setattr(_engine, "finetune", fake)
    return fake


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_image_is_held_out_once_and_validation_comes_from_the_training_part(blobs, fake_finetune, tmp_path, monkeypatch):
    fitted = []
    real_fit = msk.MeanMaskPointPrompter.fit

    def recording_fit(self, data, **kwargs):
        fitted.append([s.stem for s in data])
        return real_fit(self, data, **kwargs)

    monkeypatch.setattr(msk.MeanMaskPointPrompter, "fit", recording_fit)
    result = crossval(FakeSegmenter, blobs, k=3, out_dir=tmp_path / "cv", progress=False, epochs=2, lr=1e-3)
    assert isinstance(result, CrossvalResult) and len(result.folds) == 3
    held_out = [stem for f in result.folds for stem in f["test"]]
    assert sorted(held_out) == sorted(blobs.stems)
    for fold, call, fit in zip(result.folds, fake_finetune.calls, fitted):
        assert set(fold["train"]) | set(fold["val"]) | set(fold["test"]) == set(blobs.stems)
        assert not set(fold["train"]) & set(fold["val"]) and not set(fold["test"]) & (set(fold["train"]) | set(fold["val"]))
        assert len(fold["val"]) == round(0.2 * 4) == 1  # 20% of the fold's 4 training images
        assert call["train"] == fold["train"] and call["val"] == fold["val"]
        assert fit == fold["train"]  # the mean-mask prompter sees neither validation nor held-out masks
        assert call["prompter"] is call["eval_prompter"]
        assert call["config"].epochs == 2 and call["config"].lr == 1e-3 and call["config"].seed == 0
        assert json.loads((tmp_path / "cv" / f"fold_{fold['fold']}" / "split.json").read_text()) == {
            "train": fold["train"],
            "val": fold["val"],
            "test": fold["test"],
        }


def test_tables_hold_fold_means_and_mean_std_over_folds(blobs, fake_finetune, tmp_path):
    result = crossval(FakeSegmenter, blobs, k=3, out_dir=tmp_path / "cv", prompter="perturbed-box", progress=False)
    out = tmp_path / "cv"
    for i in range(3):
        for part in ("zero-shot", "finetuned"):
            assert (out / f"fold_{i}" / part / "metrics.csv").is_file()
        assert (out / f"fold_{i}" / "fold.json").is_file()
    rows = _rows(out / "crossval.csv")
    assert [(r["fold"], r["setting"]) for r in rows] == [(str(i), s) for i in range(3) for s in ("zero-shot", "finetuned")]
    assert list(rows[0]) == [
        "fold",
        "setting",
        "n_images",
        "dice",
        "iou",
        "precision",
        "recall",
        "f1",
        "hd95",
        "best_epoch",
        "threshold",
    ]
    assert rows[1]["threshold"] == "0.55" and rows[0]["threshold"] == ""
    # Fold means are the means of the evaluate tables of the held-out images.
    for i in range(3):
        for setting in ("zero-shot", "finetuned"):
            per_image = _rows(out / f"fold_{i}" / setting / "metrics.csv")
            expected = np.mean([float(r["dice"]) for r in per_image])
            row = next(r for r in rows if r["fold"] == str(i) and r["setting"] == setting)
            assert float(row["dice"]) == pytest.approx(expected, rel=1e-5)
            assert int(row["n_images"]) == len(per_image) == 2
    summary = json.loads((out / "crossval.json").read_text())
    assert summary == result.summary
    assert summary["k"] == 3 and summary["prompter"] == "perturbed-box" and summary["folds_done"] == [0, 1, 2]
    for setting in ("zero-shot", "finetuned"):
        per_fold = [f["settings"][setting]["dice"] for f in result.folds]
        stats = summary["metrics"][setting]["dice"]
        assert stats["per_fold"] == per_fold
        assert stats["mean"] == pytest.approx(np.mean(per_fold)) and stats["std"] == pytest.approx(np.std(per_fold))
        assert summary["n_images"][setting] == N_IMAGES
    assert result.mean("dice", "zero-shot") == summary["metrics"]["zero-shot"]["dice"]["mean"]
    assert "± " in str(result) and "finetuned" in str(result)
    assert cv2.imread(str(out / "crossval_boxplot.png")) is not None
    # Perturbed boxes train, exact oracle boxes evaluate.
    call = fake_finetune.calls[0]
    assert type(call["prompter"]).__name__ == "PerturbedBoxPrompter"
    assert type(call["eval_prompter"]).__name__ == "OracleBoxPrompter"


def test_finished_folds_are_skipped_and_an_interrupted_run_resumes(blobs, tmp_path, monkeypatch):
    kwargs = dict(k=3, out_dir=tmp_path / "cv", progress=False, epochs=1)
    interrupted = FakeFinetune(fail_on_call=2)
    monkeypatch.setattr(_engine, "finetune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        crossval(FakeSegmenter, blobs, **kwargs)
    # Fold 0 is done and already in the tables.
    assert json.loads((tmp_path / "cv" / "crossval.json").read_text())["folds_done"] == [0]
    assert len(_rows(tmp_path / "cv" / "crossval.csv")) == 2

    resumed = FakeFinetune()
    monkeypatch.setattr(_engine, "finetune", resumed)
    result = crossval(FakeSegmenter, blobs, **kwargs)
    assert [c["train"] for c in resumed.calls] == [f["train"] for f in result.folds[1:]]
    assert result.summary["folds_done"] == [0, 1, 2]

    again = FakeFinetune()
    monkeypatch.setattr(_engine, "finetune", again)
    assert crossval(FakeSegmenter, blobs, **kwargs).summary == result.summary
    assert again.calls == []


def test_other_settings_in_the_same_folder_are_refused(blobs, fake_finetune, tmp_path):
    crossval(FakeSegmenter, blobs, k=2, out_dir=tmp_path / "cv", progress=False, epochs=1)
    for change in ({"k": 3}, {"seed": 1}, {"prompter": "perturbed-box"}, {"epochs": 2}, {"val_fraction": 0.5}):
        kwargs = {"k": 2, "epochs": 1, **change}
        with pytest.raises(ValueError, match="another cross-validation"):
            crossval(FakeSegmenter, blobs, out_dir=tmp_path / "cv", progress=False, **kwargs)


def test_a_segmenter_is_accepted_instead_of_a_factory(blobs, fake_finetune, tmp_path):
    seg = FakeSegmenter()
    crossval(seg, blobs, k=2, out_dir=tmp_path / "cv", progress=False)
    assert all(call["segmenter"] is seg for call in fake_finetune.calls)


def test_bad_input(blobs, fake_finetune, tmp_path):
    with pytest.raises(ValueError, match="prompter"):
        crossval(FakeSegmenter, blobs, out_dir=tmp_path / "a", prompter="oracle-box")
    with pytest.raises(ValueError, match="k: expected"):
        crossval(FakeSegmenter, blobs, k=7, out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="epochs"):
        crossval(FakeSegmenter, blobs, out_dir=tmp_path / "c", epochs=0)
    with pytest.raises(ValueError, match="extra|not_a_setting"):
        crossval(FakeSegmenter, blobs, out_dir=tmp_path / "d", not_a_setting=1)
    with pytest.raises(ValueError, match="val_fraction"):
        crossval(FakeSegmenter, blobs, out_dir=tmp_path / "f", val_fraction=1.0)
    with pytest.raises(TypeError, match="segmenter_factory"):
        crossval(42, blobs, out_dir=tmp_path / "g")
    assert not any((tmp_path / name).exists() for name in "abcdfg")


def test_cli_crossval(blobs, fake_finetune, tmp_path, capsys):
    code = main(
        [
            "crossval",
            str(blobs.root),
            "--k",
            "2",
            "--segmenter",
            "fake",
            "--epochs",
            "3",
            "--mode",
            "decoder",
            "--out",
            str(tmp_path / "cv"),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2-fold cross-validation" in out and "zero-shot" in out and "± " in out
    assert (tmp_path / "cv" / "crossval.csv").is_file()
    config = fake_finetune.calls[0]["config"]
    assert config.epochs == 3 and config.lr == 1e-4 and config.mode == "decoder"


def test_cli_lora_options(blobs, fake_finetune, tmp_path, capsys):
    code = main(
        [
            "crossval",
            str(blobs.root),
            "--k",
            "2",
            "--segmenter",
            "fake",
            "--mode",
            "lora",
            "--lora-rank",
            "4",
            "--train-decoder",
            "--out",
            str(tmp_path / "cv"),
            "--no-progress",
        ]
    )
    assert code == 0, capsys.readouterr()
    config = fake_finetune.calls[0]["config"]
    assert (config.mode, config.lora_rank, config.train_decoder, config.lr) == ("lora", 4, True, 1e-3)
    code = main(["crossval", str(blobs.root), "--train-decoder", "--out", str(tmp_path / "x"), "--no-progress"])
    assert code == 2 and "--mode lora" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# one small real run
# ---------------------------------------------------------------------------------------


@pytest.fixture()
def one_torch_thread():
    """On the shared 2-core machine one thread is faster than two (and leaves a core to others)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.real_model
def test_real_two_fold_crossval_of_litemedsam_decoder_finetuning(litemedsam, shared_data, tmp_path, one_torch_thread):
    root = tmp_path / "cxr256"
    for sample in msk.MaskFolder(shared_data / "cxr-shenzhen")[:4]:
        image, mask = sample.load()
        msk.data.write_image(root / "images" / f"{sample.stem}.png", cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA))
        msk.write_mask(
            root / "masks" / f"{sample.stem}.png", cv2.resize(mask.astype(np.uint8), (256, 256), interpolation=cv2.INTER_NEAREST)
        )
    cache = EmbeddingCache(tmp_path / "emb")
    result = crossval(
        lambda: CachedSegmenter(litemedsam, cache),
        msk.MaskFolder(root),
        k=2,
        out_dir=tmp_path / "cv",
        val_fraction=0.5,
        progress=False,
        epochs=1,
        batch_size=1,
    )
    assert [len(f["test"]) for f in result.folds] == [2, 2]
    assert [(len(f["train"]), len(f["val"])) for f in result.folds] == [(1, 1), (1, 1)]
    for setting in ("zero-shot", "finetuned"):
        stats = result.summary["metrics"][setting]["dice"]
        assert 0 <= stats["mean"] <= 1 and stats["std"] >= 0 and len(stats["per_fold"]) == 2
    fold = tmp_path / "cv" / "fold_0"
    assert (fold / "finetune" / "model.pth").is_file() and (fold / "finetuned" / "summary.json").is_file()
    assert msk.Pipeline.load(fold / "finetune").segmenter.model_id.startswith("litemedsam:")
    # Everything is on disk: a second call only reads it.
    assert (
        crossval(
            lambda: CachedSegmenter(litemedsam, cache),
            msk.MaskFolder(root),
            k=2,
            out_dir=tmp_path / "cv",
            val_fraction=0.5,
            progress=False,
            epochs=1,
            batch_size=1,
        ).summary
        == result.summary
    )


def test_out_dir_inside_the_data_is_refused(blobs, fake_finetune, tmp_path):
    """Issue 10: an output folder in the data would mix predictions with the reference masks."""
    before = sorted(p.name for p in blobs.masks_dir.iterdir())
    for out in (blobs.root, blobs.masks_dir, blobs.masks_dir / "cv"):
        with pytest.raises(ValueError, match="input folder"):
            crossval(FakeSegmenter, blobs, k=2, out_dir=out, progress=False, epochs=1)
    assert sorted(p.name for p in blobs.masks_dir.iterdir()) == before

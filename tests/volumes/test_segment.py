"""Tests for medsamkit.volumes: slice-by-slice segmentation, volume prompts, 3D consistency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsamkit import FixedPrompter, OracleBoxPrompter, Pipeline, Prompts, Window
from medsamkit.data import Volume, read_volume
from medsamkit.metrics import volume_metrics
from medsamkit.testing import FakeSegmenter
from medsamkit.volumes import (
    AutoSlices,
    Box3D,
    OracleSliceBoxes,
    Propagate,
    consistent_3d,
    segment_volume,
    volume_prompt,
)

VOLUMES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "volumes"


def _ellipsoid_volume(shape=(12, 48, 56), centre=(6, 24, 30), radii=(3.6, 12, 14), seed=0):
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    mask = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2 <= 1
    hu = np.where(mask, 60, -700) + rng.normal(0, 15, shape)
    vol = Volume(hu.astype(np.int16), spacing=(5.0, 0.7, 0.7), origin=(-10.0, 5.0, 100.0), modality="CT")
    return vol, mask


class ThresholdSegmenter(FakeSegmenter):
    """Inside the box, pixels above a fixed grey level (not relative to the box): empty slices give nothing."""

    def encode(self, image):
        enc = super().encode(image)
        from medsamkit import ImageEncoding

        return ImageEncoding(
            features=np.asarray(image, np.float32) / 255.0, size_hw=enc.size_hw, input_size_hw=enc.size_hw, model_id=self.model_id
        )

    def decode(self, encoding, prompts):
        out = super().decode(encoding, prompts)
        probs = np.where((out.probabilities > 0) & (encoding.features > 0.5), 0.9, 0.0).astype(np.float32)
        return type(out)(probabilities=probs, scores=out.scores)


def _pipe(seg=None):
    return Pipeline(OracleBoxPrompter(), seg or FakeSegmenter(), preprocess=[Window(-300, 1200)])


def test_oracle_slices_encode_only_target_slices():
    vol, mask = _ellipsoid_volume()
    seg = FakeSegmenter()
    result = segment_volume(_pipe(seg), vol, OracleSliceBoxes(mask))
    target_slices = np.flatnonzero(mask.any(axis=(1, 2))).tolist()
    assert sorted(result.encoded_slices) == target_slices
    assert seg.encode_calls == len(target_slices) < vol.shape[0]
    assert result.mask.describe_geometry_mismatch(vol) is None
    assert result.mask.array.dtype == bool
    assert volume_metrics(result.mask.array, mask, spacing=vol.spacing)["dice"] > 0.9


def test_box3d_segments_its_z_range_only():
    vol, mask = _ellipsoid_volume()
    box = Box3D.from_mask(mask, margin=3)
    x0, y0, z0, x1, y1, z1 = box.box
    assert (z0, z1) == (3, 9)
    seg = FakeSegmenter()
    result = segment_volume(_pipe(seg), vol, box)
    assert result.encoded_slices == list(range(3, 10))
    assert not result.mask.array[:3].any() and not result.mask.array[10:].any()
    assert all(np.allclose(p.box_xyxy, [[x0, y0, x1, y1]]) for p in result.prompts.values())
    assert volume_metrics(result.mask.array, mask, spacing=vol.spacing)["dice"] > 0.85


def test_box3d_bad_input():
    with pytest.raises(ValueError, match=r"box: expected 6 finite numbers \[x_min, y_min, z_min"):
        Box3D([1, 2, 3, 4])
    with pytest.raises(ValueError, match="min <= max"):
        Box3D([5, 0, 0, 1, 1, 1])
    vol, _ = _ellipsoid_volume()
    with pytest.raises(ValueError, match="outside the volume's 12 slices"):
        segment_volume(_pipe(), vol, Box3D([0, 0, 20, 5, 5, 30]))


def test_propagation_follows_the_target_and_stops_when_it_vanishes():
    vol, mask = _ellipsoid_volume()
    prompt = Propagate.from_mask(mask)
    assert prompt.seed_slice == 6
    seg = ThresholdSegmenter()
    result = segment_volume(_pipe(seg), vol, prompt)
    target_slices = set(np.flatnonzero(mask.any(axis=(1, 2))).tolist())
    encoded = set(result.encoded_slices)
    # Every target slice was reached, plus at most one empty slice on each side where it stopped.
    assert target_slices <= encoded
    assert len(encoded - target_slices) <= 2
    assert 0 not in encoded and vol.shape[0] - 1 not in encoded
    assert result.encoded_slices[0] == 6
    # The box of slice 7 comes from the prediction on slice 6 (grown by the margin).
    from medsamkit import mask_to_xyxy

    expected = mask_to_xyxy(result.mask.array[6]) + np.array([-2, -2, 2, 2])
    assert np.allclose(result.prompts[7].box_xyxy[0], expected)
    assert volume_metrics(result.mask.array, mask, spacing=vol.spacing)["dice"] > 0.85


def test_propagation_stops_when_the_area_falls_below_the_seed_fraction():
    vol, mask = _ellipsoid_volume()
    seg = ThresholdSegmenter()
    result = segment_volume(_pipe(seg), vol, Propagate.from_mask(mask, min_area_fraction=0.5))
    areas = result.mask.array.sum(axis=(1, 2))
    seed_area = areas[6]
    kept = np.flatnonzero(areas)
    # Every kept slice is at least half the seed's area; the slice where it fell below was tried, then dropped.
    assert (areas[kept] >= 0.5 * seed_area).all()
    dropped = sorted(set(result.encoded_slices) - set(kept.tolist()))
    assert dropped and all(not result.mask.array[k].any() for k in dropped)
    full = segment_volume(_pipe(ThresholdSegmenter()), vol, Propagate.from_mask(mask, min_area_fraction=0.0))
    assert full.mask.array.sum() > result.mask.array.sum()
    with pytest.raises(ValueError, match="min_area_fraction"):
        Propagate(3, box=[0, 0, 4, 4], min_area_fraction=1.5)


def test_propagation_from_a_seed_mask_does_not_segment_the_seed():
    vol, mask = _ellipsoid_volume()
    result = segment_volume(_pipe(ThresholdSegmenter()), vol, Propagate(6, mask=mask[6]))
    assert 6 not in result.encoded_slices
    assert np.array_equal(result.mask.array[6], mask[6])
    with pytest.raises(ValueError, match="exactly one seed"):
        Propagate(6)
    with pytest.raises(ValueError, match=r"seed_slice: expected 0 <= seed_slice < 12, got 40"):
        segment_volume(_pipe(), vol, Propagate(40, box=[0, 0, 5, 5]))


def test_consistent_3d_bridges_single_gaps_and_keeps_largest():
    mask = np.zeros((7, 10, 10), bool)
    mask[1:6, 2:6, 2:6] = True
    mask[3] = False  # a one-slice gap
    mask[0, 8:, 8:] = True  # a speck far away
    out = consistent_3d(mask)
    assert out[3, 2:6, 2:6].all()  # bridged
    assert not out[0, 8:, 8:].any()  # removed
    two_gap = np.zeros((7, 4, 4), bool)
    two_gap[[0, 1, 4, 5]] = True  # a two-slice gap is not bridged
    assert not consistent_3d(two_gap, keep=None)[2:4].any()


def test_auto_runs_the_prompter_on_every_slice_then_3d_consistency():
    vol, _mask = _ellipsoid_volume()
    box = Prompts(box_xyxy=[[10, 6, 50, 42]])
    pipe = Pipeline(FixedPrompter(box), FakeSegmenter(), preprocess=[Window(-300, 1200)])
    result = segment_volume(pipe, vol, AutoSlices())
    assert result.encoded_slices == list(range(vol.shape[0]))
    per_slice = np.stack([pipe(vol.array[k]).mask for k in range(vol.shape[0])])
    assert np.array_equal(result.mask.array, consistent_3d(per_slice))
    with pytest.raises(ValueError, match="needs a reference mask"):
        segment_volume(_pipe(), vol, "auto")


def test_warm_cache_encodes_nothing(tmp_path):
    vol, mask = _ellipsoid_volume()
    seg = FakeSegmenter()
    first = segment_volume(_pipe(seg), vol, "box3d", target=mask, cache=tmp_path / "cache")
    calls = seg.encode_calls
    second = segment_volume(_pipe(seg), vol, "box3d", target=mask, cache=tmp_path / "cache")
    assert seg.encode_calls == calls  # every slice came from the cache
    assert second.cache_hits == len(first.encoded_slices) > 0
    assert np.array_equal(first.mask.array, second.mask.array)


def test_bad_target_and_prompt_names_the_parameter():
    vol, mask = _ellipsoid_volume()
    with pytest.raises(ValueError, match=r"target: expected a mask of the volume's shape \(12, 48, 56\)"):
        segment_volume(_pipe(), vol, "oracle", target=mask[:, :, :50])
    with pytest.raises(ValueError, match=r"prompt: expected one of \['oracle', 'box3d', 'propagate', 'auto'\]"):
        volume_prompt("boxes")
    with pytest.raises(ValueError, match="needs a reference mask"):
        segment_volume(_pipe(), vol, "box3d")
    with pytest.raises(TypeError, match="prompt: expected OracleSliceBoxes"):
        segment_volume(_pipe(), vol, 3)


@pytest.mark.shared_data
def test_real_lung_nodule_oracle_slices_with_fake_segmenter():
    image = read_volume(VOLUMES / "pyradiomics_lung_ct" / "images" / "lung1_crop.nii.gz").crop(z=slice(28, 38))
    mask = read_volume(VOLUMES / "pyradiomics_lung_ct" / "masks" / "lung1_crop.nii.gz").crop(z=slice(28, 38))
    seg = FakeSegmenter()
    result = segment_volume(Pipeline(OracleBoxPrompter(), seg, preprocess=[Window.preset("lung")]), image, "oracle", target=mask)
    assert sorted(result.encoded_slices) == [4, 5, 6]  # SOURCE.md: the nodule is on z32-34
    assert seg.encode_calls == 3
    assert volume_metrics(result.mask.array, mask.array > 0, spacing=image.spacing)["dice"] > 0.5


@pytest.mark.shared_data
@pytest.mark.real_model
def test_real_tumour_segmented_with_a_3d_box(litemedsam):
    # lung2 tumour (SOURCE.md: z15-25 y333-398 x318-404): a 5-slice slab through its middle keeps CI fast.
    image = read_volume(VOLUMES / "pyradiomics_lung_ct" / "images" / "lung2.nii.gz").crop(
        z=slice(18, 23), y=slice(280, 450), x=slice(270, 460)
    )
    mask = read_volume(VOLUMES / "pyradiomics_lung_ct" / "masks" / "lung2.nii.gz").crop(
        z=slice(18, 23), y=slice(280, 450), x=slice(270, 460)
    )
    pipe = Pipeline(OracleBoxPrompter(), litemedsam, preprocess=[Window.preset("lung")])
    result = segment_volume(pipe, image, "box3d", target=mask)
    assert result.encoded_slices == list(range(5))  # the tumour spans the whole 5-slice slab
    metrics = volume_metrics(result.mask.array, mask.array > 0, spacing=image.spacing)
    assert metrics["dice"] > 0.6, metrics


def test_pipeline_on_a_3d_array_points_to_segment_volume():
    vol, mask = _ellipsoid_volume()
    with pytest.raises(
        ValueError, match=r"image: expected shape \(H, W\).*got shape \(12, 48, 56\); a 3D volume.*segment_volume"
    ):
        _pipe()(vol.array, target=mask[0])


@pytest.mark.shared_data
@pytest.mark.real_model
def test_real_auto_prompt_with_a_fitted_embedding_head_on_held_out_slices(litemedsam, tmp_path):
    """``--prompt auto`` for real: a head fitted on some slices of lung2 finds the tumour on the next, unseen slices."""
    from scipy import ndimage

    from medsamkit import CachedSegmenter, EmbeddingCache, EmbeddingHeadPrompter

    # SOURCE.md: the lung2 tumour spans z15-25, y333-398, x318-404. A 256 x 256 crop around it
    # (LiteMedSAM's own input size: no resizing); fit on z10-20 (5 slices without the tumour, 6 with it),
    # segment the held-out slab z21-28 (5 slices with the tumour's lower part, 3 without).
    crop = {"y": slice(240, 496), "x": slice(240, 496)}
    image = read_volume(VOLUMES / "pyradiomics_lung_ct" / "images" / "lung2.nii.gz").crop(**crop)
    mask = read_volume(VOLUMES / "pyradiomics_lung_ct" / "masks" / "lung2.nii.gz").crop(**crop)
    window = Window.preset("lung")

    class _Slice:
        def __init__(self, k):
            self.k = k

        def load(self):
            return window(image.array[self.k]), mask.array[self.k] > 0

    cache = EmbeddingCache(tmp_path / "cache")
    head = EmbeddingHeadPrompter().fit(
        [_Slice(k) for k in range(10, 21)], segmenter=CachedSegmenter(litemedsam, cache), epochs=150, lr=3e-3
    )
    slab, reference = image.crop(z=slice(21, 29)), mask.crop(z=slice(21, 29)).array > 0
    pipe = Pipeline(head, litemedsam, preprocess=[window])
    result = segment_volume(pipe, slab, "auto", cache=cache)
    assert result.encoded_slices, "the head found no tumour on any held-out slice"
    dice = volume_metrics(result.mask.array, reference, spacing=slab.spacing)["dice"]
    assert dice > 0.5, dice
    # The 3D-consistency step: the same slices without it (read from the cache), then consistent_3d.
    raw = segment_volume(pipe, slab, AutoSlices(keep=None, bridge_gaps=False), cache=cache)
    assert raw.cache_hits == len(slab.array)  # every slice was encoded once, in the first run
    assert np.array_equal(result.mask.array, consistent_3d(raw.mask.array))
    assert ndimage.label(result.mask.array, structure=np.ones((3, 3, 3)))[1] == 1


class _HandshakeSegmenter(ThresholdSegmenter):
    """Decoding a slice waits until the next slice's encoding has started: it finishes only
    when encoder and decoder really overlap (sequentially it would wait for ever)."""

    def __init__(self, n_slices):
        super().__init__()
        import threading

        self.started = [threading.Event() for _ in range(n_slices + 1)]
        self.encode_threads = []
        self.n = 0

    def encode(self, image):
        import threading

        self.encode_threads.append(threading.current_thread().name)
        if len(self.encode_threads) <= len(self.started):
            self.started[len(self.encode_threads) - 1].set()
        return super().encode(image)

    def decode(self, encoding, prompts):
        i, self.n = self.n, self.n + 1
        if i + 1 < len(self.started) - 1:
            assert self.started[i + 1].wait(timeout=60), f"slice {i + 1} was not being encoded while slice {i} decoded"
        return super().decode(encoding, prompts)


@pytest.mark.parametrize("prompt", ["box3d", "oracle"])
def test_overlap_encodes_the_next_slice_while_decoding_and_gives_the_same_bytes(prompt):
    vol, mask = _ellipsoid_volume()
    sequential = segment_volume(_pipe(ThresholdSegmenter()), vol, prompt, target=mask, overlap=False)
    n = len(sequential.encoded_slices)
    seg = _HandshakeSegmenter(n)
    overlapped = segment_volume(_pipe(seg), vol, prompt, target=mask, overlap=True)
    assert overlapped.mask.array.tobytes() == sequential.mask.array.tobytes()
    assert overlapped.mask.array.any()
    assert overlapped.encoded_slices == sequential.encoded_slices
    assert all(np.array_equal(overlapped.scores[k], sequential.scores[k]) for k in sequential.scores)
    assert len(seg.encode_threads) == n  # each slice encoded once
    assert all(name.startswith("medsamkit-encode") for name in seg.encode_threads)


def test_overlap_passes_errors_on_and_checks_its_argument():
    vol, mask = _ellipsoid_volume()

    class Failing(ThresholdSegmenter):
        def encode(self, image):
            if self.encode_calls == 3:
                raise RuntimeError("encoder broke on the fourth slice")
            return super().encode(image)

    with pytest.raises(RuntimeError, match="encoder broke on the fourth slice"):
        segment_volume(_pipe(Failing()), vol, "box3d", target=mask, overlap=True)
    with pytest.raises(TypeError, match="overlap: expected True or False, got 'yes'"):
        segment_volume(_pipe(), vol, "box3d", target=mask, overlap="yes")


def test_overlap_with_a_cache_reads_the_same_encodings(tmp_path):
    vol, mask = _ellipsoid_volume()
    seg = FakeSegmenter()
    first = segment_volume(_pipe(seg), vol, "box3d", target=mask, cache=tmp_path / "cache", overlap=True)
    calls = seg.encode_calls
    second = segment_volume(_pipe(seg), vol, "box3d", target=mask, cache=tmp_path / "cache", overlap=True)
    assert seg.encode_calls == calls
    assert second.cache_hits == len(first.encoded_slices) > 0
    assert first.mask.array.tobytes() == second.mask.array.tobytes()


def test_overlap_is_off_by_default_and_uses_the_parallel_encoder_capability_when_asked():
    """Sequential by default (on a quiet 2-core machine the overlap is slower); with
    overlap=True a segmenter offering parallel_encoding (the ParallelEncoder protocol)
    runs its encodes in the pool inside that context."""
    import contextlib

    from medsamkit import ParallelEncoder

    vol, mask = _ellipsoid_volume()

    class Declaring(_HandshakeSegmenter):
        entered = 0

        @contextlib.contextmanager
        def parallel_encoding(self):
            Declaring.entered += 1
            yield 1

    seg = Declaring(0)
    assert isinstance(seg, ParallelEncoder) and not isinstance(_HandshakeSegmenter(0), ParallelEncoder)
    segment_volume(_pipe(seg), vol, "box3d", target=mask)
    assert Declaring.entered == 0 and set(seg.encode_threads) == {"MainThread"}
    seg = Declaring(0)
    segment_volume(_pipe(seg), vol, "box3d", target=mask, overlap=True)
    assert Declaring.entered == 1 and all(name.startswith("medsamkit-encode") for name in seg.encode_threads)


@pytest.mark.shared_data
@pytest.mark.real_model
def test_real_overlap_is_byte_identical_to_the_sequential_loop(litemedsam):
    """LiteMedSAM's fast encoder in the background thread, its bfloat16 decoder in the caller's."""
    crop = {"z": slice(15, 26), "y": slice(280, 450), "x": slice(270, 460)}
    image = read_volume(VOLUMES / "pyradiomics_lung_ct" / "images" / "lung2.nii.gz").crop(**crop)
    mask = read_volume(VOLUMES / "pyradiomics_lung_ct" / "masks" / "lung2.nii.gz").crop(**crop)
    pipe = Pipeline(OracleBoxPrompter(), litemedsam, preprocess=[Window.preset("lung")])
    sequential = segment_volume(pipe, image, "box3d", target=mask)  # sequential by default
    overlapped = segment_volume(pipe, image, "box3d", target=mask, overlap=True)
    assert len(sequential.encoded_slices) == 11
    assert overlapped.mask.array.tobytes() == sequential.mask.array.tobytes()
    assert all(np.array_equal(overlapped.scores[k], sequential.scores[k]) for k in sequential.scores)


def test_a_volume_without_intensity_step_is_said_once_per_pipeline_also_with_a_cache(tmp_path, caplog):
    """The cached copy of the pipeline that segment_volume runs shares the original's once-said note."""
    import logging

    vol, mask = _ellipsoid_volume(shape=(4, 32, 40), centre=(2, 16, 20), radii=(1.5, 8, 9))
    pipe = Pipeline(OracleBoxPrompter(), FakeSegmenter())  # HU without a Window: said once
    with caplog.at_level(logging.WARNING, logger="medsamkit"):
        segment_volume(pipe, vol, "box3d", target=mask, cache=tmp_path / "cache")
        segment_volume(pipe, vol, "box3d", target=mask, cache=tmp_path / "cache")
        segment_volume(pipe, vol, "box3d", target=mask)
    assert len([r for r in caplog.records if "without an intensity step" in r.getMessage()]) == 1

"""Segment a 3D volume slice by slice with any :class:`~medsamkit.Pipeline`.

A volume is a stack of ``(H, W)`` slices (``volume.array[k]``, z first). Each slice
that has a prompt is segmented by the pipeline (its ``preprocess`` steps, prompter
or the given prompts, segmenter, threshold, post-processing); a slice without a
prompt is not encoded at all. With ``cache=`` the segmenter is wrapped in a
:class:`~medsamkit.CachedSegmenter`, so a second run over the same volume reads
every encoding from disk.

Volume prompts (the ``prompt=`` argument of :func:`segment_volume`):

* :class:`OracleSliceBoxes` (``"oracle"``): per-slice oracle boxes from a reference mask.
* :class:`Box3D` (``"box3d"``): one 3D box ``[x_min, y_min, z_min, x_max, y_max, z_max]``
  (the box format of the CVPR 2024 "MedSAM on laptop" challenge's 3D cases); every
  slice in ``z_min..z_max`` (inclusive) gets the box's x-y rectangle.
* :class:`Propagate` (``"propagate"``): a box or mask on one seed slice; each
  slice's predicted mask gives the box of the next slice, outwards in both
  directions, until the predicted mask vanishes.
* :class:`AutoSlices` (``"auto"``): the pipeline's own (automatic) prompter on every
  slice, then 3D consistency (:func:`consistent_3d`: bridge single-slice gaps, keep
  the largest 3D connected components).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._geometry import grow_boxes_xyxy, mask_to_xyxy
from .._types import Prompts
from ..data import Volume

__all__ = [
    "AutoSlices",
    "Box3D",
    "OracleSliceBoxes",
    "Propagate",
    "VolumeResult",
    "consistent_3d",
    "segment_volume",
    "volume_prompt",
]


def _as_volume(volume: Any, *, name: str = "volume") -> Volume:
    if isinstance(volume, Volume):
        return volume
    array = np.asarray(volume)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a Volume or a (D, H, W) array, got shape {array.shape}")
    return Volume(array)


def _mask_array(target: Any, shape: tuple[int, int, int], *, name: str = "target") -> np.ndarray:
    array = target.array if isinstance(target, Volume) else np.asarray(target)
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected a mask of the volume's shape {tuple(shape)} (D, H, W), got {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f"{name}: expected a binary mask, got NaN values")
    return array != 0


@dataclass
class VolumeResult:
    """The result of :func:`segment_volume`.

    Attributes:
        mask: Bool mask :class:`~medsamkit.data.Volume` with the input's geometry.
        prompts: Prompts decoded on each slice (slice index -> :class:`Prompts`).
        encoded_slices: Slices that were encoded (had a prompt), in processing order.
        scores: Slice index -> predicted quality scores of its prompts.
        seconds: Wall time of the whole volume.
        cache_hits: Encodings read from the embedding cache (0 without a cache).
    """

    mask: Volume
    prompts: dict[int, Prompts] = field(default_factory=dict)
    encoded_slices: list[int] = field(default_factory=list)
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    cache_hits: int = 0

    @property
    def seconds_per_encoded_slice(self) -> float | None:
        """Wall time divided by the number of encoded slices (None when none was)."""
        return self.seconds / len(self.encoded_slices) if self.encoded_slices else None


class _Runner:
    """Segments single slices of one volume with one pipeline, recording what it did."""

    def __init__(self, pipeline: Any, volume: Volume, *, overlap: bool = False) -> None:
        self.pipeline = pipeline
        self.volume = volume
        self.overlap = overlap
        self.mask = np.zeros(volume.shape, dtype=bool)
        self.result = VolumeResult(mask=volume)

    def run(
        self, k: int, prompts: Prompts | None = None, target: np.ndarray | None = None, *, encoding: Any = None
    ) -> np.ndarray:
        image = self.volume.array[k]
        if prompts is not None and prompts.n == 0:
            return self.mask[k]
        out = self.pipeline(image, prompts=prompts, target=target, encoding=encoding)
        if out.prompts.n:
            self.result.encoded_slices.append(k)
            self.result.prompts[k] = out.prompts
            self.result.scores[k] = out.scores
        self.mask[k] = out.mask
        return out.mask

    def _encode(self, k: int) -> Any:
        return self.pipeline.segmenter.encode(self.pipeline.preprocess_image(self.volume.array[k]))

    def run_all(self, slices: list[tuple[int, Prompts]]) -> None:
        """Segment ``(k, prompts)`` in order, as :meth:`run` one by one.

        With ``overlap``, background threads encode the next slices while slice ``i``
        is decoded, thresholded and stored: one thread, or as many as the
        segmenter's ``parallel_encoding()`` allows (LiteMedSAM's OpenVINO encoder:
        two streams). Every slice is encoded by ``segmenter.encode`` on the same
        preprocessed image as in the sequential loop, with bit-identical numerics,
        so the masks are the same bytes.
        """
        slices = [(k, p) for k, p in slices if p.n]  # run() skips empty prompts without encoding
        if not self.overlap or len(slices) < 2:
            for k, prompts in slices:
                self.run(k, prompts)
            return
        import contextlib
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        from .._protocols import ParallelEncoder

        segmenter = self.pipeline.segmenter
        with contextlib.ExitStack() as stack:
            workers = (
                max(int(stack.enter_context(segmenter.parallel_encoding())), 1) if isinstance(segmenter, ParallelEncoder) else 1
            )
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medsamkit-encode"))
            pending: deque[Future[Any]] = deque()
            order = iter(slices)

            def fill() -> None:
                while len(pending) < workers:
                    item = next(order, None)
                    if item is None:
                        return
                    pending.append(pool.submit(self._encode, item[0]))

            try:
                for k, prompts in slices:
                    fill()
                    encoding = pending.popleft().result()
                    fill()  # the encoders keep working while this slice is decoded
                    self.run(k, prompts, encoding=encoding)
            finally:
                for future in pending:
                    future.cancel()


class OracleSliceBoxes:
    """Per-slice oracle boxes from a reference mask (the upper bound of box prompting).

    Each slice where ``target`` has foreground gets the boxes of an
    :class:`~medsamkit.OracleBoxPrompter` (one per component, or one for the whole
    slice with ``mode="whole"``); other slices are not segmented.
    """

    name = "oracle"

    def __init__(self, target: Any, *, mode: str = "components", min_area: int = 16) -> None:
        from ..prompters import OracleBoxPrompter

        self.target = target
        self.prompter = OracleBoxPrompter(mode=mode, min_area=min_area)  # type: ignore[arg-type]

    def run(self, runner: _Runner) -> None:
        target = _mask_array(self.target, runner.volume.shape)
        slices = [
            (int(k), self.prompter(runner.volume.array[k], target=target[k])) for k in np.flatnonzero(target.any(axis=(1, 2)))
        ]
        runner.run_all(slices)


class Box3D:
    """One 3D box ``[x_min, y_min, z_min, x_max, y_max, z_max]`` in voxel indices (inclusive).

    This is the order of the ``boxes`` of the 3D cases of the CVPR 2024 "MedSAM on
    laptop" challenge. Every slice ``z_min <= k <= z_max`` is segmented with the box
    ``[x_min, y_min, x_max, y_max]``; the others stay empty.
    """

    name = "box3d"

    def __init__(self, box: Any) -> None:
        values = np.asarray(box, dtype=np.float64).ravel()
        if values.size != 6 or not np.isfinite(values).all():
            raise ValueError(f"box: expected 6 finite numbers [x_min, y_min, z_min, x_max, y_max, z_max], got {box!r}")
        x0, y0, z0, x1, y1, z1 = values.tolist()
        if x1 < x0 or y1 < y0 or z1 < z0:
            raise ValueError(f"box: expected min <= max on every axis, got {values.tolist()}")
        self.box = (x0, y0, z0, x1, y1, z1)

    @classmethod
    def from_mask(cls, target: Any, *, margin: float = 0.0) -> Box3D:
        """The tight 3D box of a reference mask, grown by ``margin`` pixels in x and y."""
        array = target.array if isinstance(target, Volume) else np.asarray(target)
        if array.ndim != 3:
            raise ValueError(f"target: expected a (D, H, W) mask, got shape {array.shape}")
        nz = np.argwhere(array != 0)
        if nz.size == 0:
            raise ValueError("target: the mask is empty, so it has no 3D box")
        (z0, y0, x0), (z1, y1, x1) = nz.min(axis=0), nz.max(axis=0)
        h, w = array.shape[1:]
        return cls([max(x0 - margin, 0), max(y0 - margin, 0), z0, min(x1 + margin, w - 1), min(y1 + margin, h - 1), z1])

    def __repr__(self) -> str:
        return f"Box3D({[round(v, 2) for v in self.box]})"

    def run(self, runner: _Runner) -> None:
        x0, y0, z0, x1, y1, z1 = self.box
        depth = runner.volume.shape[0]
        first, last = max(round(z0), 0), min(round(z1), depth - 1)
        if first > last:
            raise ValueError(f"box: z range {z0:g}..{z1:g} lies outside the volume's {depth} slices")
        prompts = Prompts(box_xyxy=np.array([[x0, y0, x1, y1]], dtype=np.float32))
        runner.run_all([(k, prompts) for k in range(first, last + 1)])


class Propagate:
    """Slice-to-slice propagation from a seed slice.

    The seed slice is segmented with ``box`` (or, with ``mask``, that mask is taken as
    its segmentation). Then, outwards in both directions, each slice gets the box of
    its neighbour's predicted mask (grown by ``margin`` pixels). Propagation stops in
    a direction at the first slice whose prediction is smaller than ``min_area``
    pixels or than ``min_area_fraction`` of the seed slice's area: the target is
    taken to have vanished there, and that slice's prediction is discarded. A
    SAM-family model segments *something* inside almost any box (a vessel, partial
    volume), so without the fraction rule propagation on CT rarely stops by itself.

    Args:
        seed_slice: Index ``k`` of the seed slice.
        box: ``[x_min, y_min, x_max, y_max]`` on the seed slice.
        mask: ``(H, W)`` mask on the seed slice (instead of ``box``).
        margin: Pixels added on each side of a propagated box.
        min_area: Smallest predicted area (pixels) that continues the propagation.
        min_area_fraction: Smallest predicted area, as a fraction of the seed slice's,
            that continues the propagation (0 turns the rule off).
    """

    name = "propagate"

    def __init__(
        self,
        seed_slice: int,
        *,
        box: Any = None,
        mask: Any = None,
        margin: float = 2.0,
        min_area: int = 10,
        min_area_fraction: float = 0.2,
    ) -> None:
        if isinstance(seed_slice, bool) or not isinstance(seed_slice, (int, np.integer)):
            raise TypeError(f"seed_slice: expected a slice index (int), got {type(seed_slice).__name__}")
        if (box is None) == (mask is None):
            raise ValueError("box, mask: expected exactly one seed, a box or a mask")
        if box is not None:
            box = np.asarray(box, dtype=np.float32).ravel()
            if box.size != 4 or not np.isfinite(box).all():
                raise ValueError(f"box: expected 4 finite numbers [x_min, y_min, x_max, y_max], got {box.tolist()}")
        self.seed_slice = int(seed_slice)
        self.box = box
        self.seed_mask = None if mask is None else np.asarray(mask) != 0
        self.margin = float(margin)
        self.min_area = int(min_area)
        if not 0.0 <= float(min_area_fraction) < 1.0:
            raise ValueError(f"min_area_fraction: expected a number in [0, 1), got {min_area_fraction!r}")
        self.min_area_fraction = float(min_area_fraction)

    @classmethod
    def from_mask(cls, target: Any, *, seed_slice: int | None = None, **kwargs: Any) -> Propagate:
        """Seed with the reference mask's box on ``seed_slice`` (default: the middle of its z range)."""
        array = target.array if isinstance(target, Volume) else np.asarray(target)
        slices = np.flatnonzero((array != 0).any(axis=(1, 2)))
        if slices.size == 0:
            raise ValueError("target: the mask is empty, so there is no seed slice")
        if seed_slice is None:
            seed_slice = int(slices[0] + (slices[-1] - slices[0]) // 2)
            if not array[seed_slice].any():  # a gap in the middle: the nearest slice with foreground
                seed_slice = int(slices[np.argmin(np.abs(slices - seed_slice))])
        box = mask_to_xyxy(array[seed_slice] != 0)
        if box is None:
            raise ValueError(f"seed_slice: the mask is empty on slice {seed_slice}")
        return cls(seed_slice, box=box, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Propagate(seed_slice={self.seed_slice}, margin={self.margin:g}, min_area={self.min_area}, "
            f"min_area_fraction={self.min_area_fraction:g})"
        )

    def run(self, runner: _Runner) -> None:
        depth, h, w = runner.volume.shape
        s = self.seed_slice
        if not 0 <= s < depth:
            raise ValueError(f"seed_slice: expected 0 <= seed_slice < {depth}, got {s}")
        if self.seed_mask is not None:
            if self.seed_mask.shape != (h, w):
                raise ValueError(f"mask: expected the slice shape {(h, w)}, got {self.seed_mask.shape}")
            runner.mask[s] = self.seed_mask
            seed = self.seed_mask
        else:
            seed = runner.run(s, Prompts(box_xyxy=self.box[None]))
        smallest = max(self.min_area, 1, self.min_area_fraction * float(seed.sum()))
        for step in (-1, 1):
            previous, k = seed, s + step
            while 0 <= k < depth and float(previous.sum()) >= smallest:
                box = mask_to_xyxy(previous)
                assert box is not None  # previous has at least one pixel, or the loop ended
                grown = grow_boxes_xyxy(box[None], self.margin, (h, w))
                previous = runner.run(k, Prompts(box_xyxy=grown))
                if float(previous.sum()) < smallest:  # the target vanished here: not part of the result
                    runner.mask[k] = False
                k += step


class AutoSlices:
    """The pipeline's automatic prompter on every slice, then :func:`consistent_3d`.

    Args:
        keep: Number of largest 3D connected components kept (None keeps all).
        bridge_gaps: Fill voxels of a slice that are foreground on both neighbouring
            slices (one-slice gaps where the prompter missed the target).
    """

    name = "auto"

    def __init__(self, *, keep: int | None = 1, bridge_gaps: bool = True) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(f"keep: expected a positive int or None, got {keep!r}")
        self.keep = keep
        self.bridge_gaps = bool(bridge_gaps)

    def run(self, runner: _Runner) -> None:
        if getattr(runner.pipeline.prompter, "requires_target", False):
            raise ValueError(
                "prompt: 'auto' runs the pipeline's own prompter, which here needs a reference mask "
                f"({type(runner.pipeline.prompter).__name__}); use OracleSliceBoxes(target) instead"
            )
        for k in range(runner.volume.shape[0]):
            runner.run(k)
        runner.mask = consistent_3d(runner.mask, keep=self.keep, bridge_gaps=self.bridge_gaps)


def consistent_3d(mask: np.ndarray, *, keep: int | None = 1, bridge_gaps: bool = True) -> np.ndarray:
    """3D clean-up of a slice-by-slice segmentation.

    ``bridge_gaps`` first sets every voxel that is foreground on both the slice above
    and the slice below (a closing along z with a 3-voxel line); then only the
    ``keep`` largest 26-connected 3D components remain.
    """
    from scipy import ndimage

    mask = np.asarray(mask) != 0
    if mask.ndim != 3:
        raise ValueError(f"mask: expected a (D, H, W) mask, got shape {mask.shape}")
    if bridge_gaps and mask.shape[0] >= 3:
        bridged = mask.copy()
        bridged[1:-1] |= mask[:-2] & mask[2:]
        mask = bridged
    if keep is not None and mask.any():
        labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > keep:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            kept = np.argsort(-sizes, kind="stable")[:keep]
            mask = np.isin(labels, kept)
    return mask


_PROMPT_NAMES = ("oracle", "box3d", "propagate", "auto")


def volume_prompt(name: str, *, target: Any = None, box3d: Any = None, margin: float = 0.0) -> Any:
    """A volume prompt by name, drawing from ``target`` where needed.

    * ``"oracle"``: :class:`OracleSliceBoxes` of ``target``;
    * ``"box3d"``: :class:`Box3D` of ``box3d`` if given, else the 3D box of ``target``
      grown by ``margin`` pixels;
    * ``"propagate"``: :class:`Propagate` from the middle slice of ``target``'s box;
    * ``"auto"``: :class:`AutoSlices`.
    """
    if name not in _PROMPT_NAMES:
        raise ValueError(f"prompt: expected one of {list(_PROMPT_NAMES)}, got {name!r}")
    if name == "auto":
        return AutoSlices()
    if name == "box3d" and box3d is not None:
        return Box3D(box3d)
    if target is None:
        raise ValueError(f"prompt {name!r}: needs a reference mask (target=) to draw its prompts from")
    if name == "oracle":
        return OracleSliceBoxes(target)
    if name == "box3d":
        return Box3D.from_mask(target, margin=margin)
    return Propagate.from_mask(target)


def segment_volume(
    pipeline: Any,
    volume: Any,
    prompt: Any,
    *,
    target: Any = None,
    cache: Any = None,
    overlap: bool = False,
) -> VolumeResult:
    """Segment a volume slice by slice.

    Args:
        pipeline: A :class:`~medsamkit.Pipeline` (its intensity steps, segmenter,
            threshold and post-processing run on every slice).
        volume: A :class:`~medsamkit.data.Volume` (or a ``(D, H, W)`` array).
        prompt: :class:`OracleSliceBoxes`, :class:`Box3D`, :class:`Propagate`,
            :class:`AutoSlices`, or a name (``"oracle"``, ``"box3d"``,
            ``"propagate"``, ``"auto"``) resolved with :func:`volume_prompt` from ``target``.
        target: Reference mask volume, for prompts by name that need one.
        cache: An :class:`~medsamkit.EmbeddingCache` or a folder for one: encodings
            are read from and written to it.
        overlap: Encode the next slices in background threads while the current one
            is decoded (:class:`OracleSliceBoxes` and :class:`Box3D`, whose slices
            are known up front; the others run one slice after the other). With
            LiteMedSAM's OpenVINO encoder two slices are encoded at once, on two
            OpenVINO streams. The masks are the same bytes as the sequential loop's.
            Off by default: on a quiet 2-core machine it is slower (0.40 vs 0.35 s per
            encoded slice, docs/results.md); it pays where cores are spare or the
            machine is shared. Only for segmenters whose ``encode`` may run beside
            ``decode`` in another thread (:class:`~medsamkit.ParallelEncoder`, or
            thread-safe custom ones).

    Returns:
        A :class:`VolumeResult`; ``result.mask`` has the input's geometry.
    """
    vol = _as_volume(volume)
    if target is not None:
        _mask_array(target, vol.shape)  # shape check up front, naming target
    if isinstance(prompt, str):
        prompt = volume_prompt(prompt, target=target)
    if not callable(getattr(prompt, "run", None)):
        raise TypeError(
            f"prompt: expected OracleSliceBoxes, Box3D, Propagate, AutoSlices or one of {list(_PROMPT_NAMES)}, "
            f"got {type(prompt).__name__}"
        )
    pipe = pipeline
    cached = None
    if cache is not None:
        from .._cache import CachedSegmenter, EmbeddingCache

        cached = CachedSegmenter(pipeline.segmenter, cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(Path(cache)))
        pipe = pipeline.replace(segmenter=cached)  # shares the notes said once with the caller's pipeline
    hits_before = cached.cache.hits if cached is not None else 0
    if not isinstance(overlap, bool):
        raise TypeError(f"overlap: expected True or False, got {overlap!r}")
    runner = _Runner(pipe, vol, overlap=overlap)
    start = time.perf_counter()
    prompt.run(runner)
    runner.result.seconds = time.perf_counter() - start
    if cached is not None:
        runner.result.cache_hits = cached.cache.hits - hits_before
    runner.result.mask = vol.with_array(runner.mask)
    return runner.result

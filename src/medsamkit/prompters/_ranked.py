"""Proposals and a learned ranker: pick the best of many candidate prompts (or none), the way detectors score boxes.

An embedding head's coarse map says roughly where the target is, but its boxes at
one threshold are often in the wrong place, split or loose. :class:`RankedPrompter`
turns one map into a pool of candidate prompts (the map's components at several
thresholds, at a threshold relative to its peak, the head's own boxes, its largest
box grown and shrunk), decodes them all against the encoding the pipeline computed
anyway (one batched decoder call), describes each candidate mask by features
(the segmenter's predicted IoU and stability, the head's map inside and outside the
mask, area, position, compactness, agreement with the other candidates, the image
embedding inside vs outside) and lets a small learned model predict each
candidate's Dice with the reference. The best candidate is the prompt; when even
its predicted Dice is below ``min_score`` (calibrated on validation images) the
image gets no prompt: "no target here". The predicted Dice is also the result's
quality estimate (``presence``, which ``estimate_quality`` reads).

The ranker must learn on candidates from a head that has not seen the image:
``fit`` proposes on each training image with a head fitted on the other folds
(:func:`~medsamkit.training.out_of_fold_prompts`), then fits the head it keeps on
all training images.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._folds import out_of_fold_prompts
from .._geometry import grow_boxes_by_fraction, grow_boxes_xyxy, target_at_logits
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import check_probability
from ._embedding_head import (
    EmbeddingHeadPrompter,
    boxes_from_map,
    embedding_of,
    load_tensor_file,
    loaded_params,
    save_tensor_file,
)

__all__ = ["FEATURES", "Candidate", "RankedPrompter", "box_iou_xyxy"]

_log = logging.getLogger("medsamkit")

FEATURES = (
    "pred_iou",
    "stability",
    "mask_confidence",
    "map_mean_in",
    "map_max_in",
    "map_mean_out",
    "map_mass_share",
    "presence",
    "area_fraction",
    "box_area_fraction",
    "fill",
    "log_components",
    "compactness",
    "centre_y",
    "centre_x",
    "border_share",
    "agreement",
    "iou_with_map",
    "embedding_similarity",
    "n_boxes",
    "pred_iou_gap",
    "mass_share_of_best",
    "rank_source",
)
"""The ranker's input, per candidate (names saved with the ranker and checked on load)."""


@dataclass
class Candidate:
    """One candidate prompt of an image: its boxes, the union mask they decode to, its features.

    Attributes:
        boxes: ``(k, 4)`` float32 boxes (the prompt).
        mask: ``(H, W)`` bool union of the boxes' decoded masks.
        features: ``(len(FEATURES),)`` float32.
        source: Which proposal rule made it (``"head"``, ``"t0.50"``, ``"relative"``, ``"scale1.25"``, ...).
    """

    boxes: np.ndarray
    mask: np.ndarray
    features: np.ndarray
    source: str


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of inclusive-pixel ``xyxy`` boxes."""
    a, b = np.asarray(a, dtype=np.float64)[:, None], np.asarray(b, dtype=np.float64)[None]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1, 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1, 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0] + 1) * (x[..., 3] - x[..., 1] + 1)  # noqa: E731
    return np.asarray(inter / np.maximum(area(a) + area(b) - inter, 1e-9))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else int(np.logical_and(a, b).sum()) / union


def _build_ranker(n_features: int, hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(n_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))


class _CandidateRecorder:
    """A prompt provider that, asked for an image's prompts, records its candidates' features and Dice.

    ``out_of_fold_prompts`` asks it for the held-out images of a fold (with the reference mask:
    ``requires_target``), so the ranker learns on candidates of a head that never saw the image.
    """

    requires_target = True
    uses_encoding = True

    def __init__(self, owner: RankedPrompter, base: EmbeddingHeadPrompter, segmenter: Any, table: dict[str, list[Any]]):
        self.owner, self.base, self.segmenter, self.table = owner, base, segmenter, table

    def bind_segmenter(self, segmenter: Any) -> None:
        self.base.bind_segmenter(segmenter)

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        if target is None or encoding is None:
            raise ValueError("target, encoding: the candidate recorder needs the reference mask and the encoding")
        self.owner._record(self.owner.candidates(encoding, segmenter=self.segmenter, base=self.base), target, self.table)
        return Prompts.empty()


@register_component("prompter", "ranked", fitted=True)
class RankedPrompter:
    """The best of many candidate prompts from an embedding head, chosen by a learned ranker (or none).

    Per image: the head's coarse map (:meth:`EmbeddingHeadPrompter.probability_map`,
    the presence gate ignored: the ranker decides) gives candidate boxes: the
    8-connected components of the map at each of ``thresholds`` (the largest
    ``max_components``), at each of ``relative`` times the map's peak (a faint lesion the
    fixed thresholds miss), the head's own boxes together (its usual prompt), and the
    largest box at the head's threshold scaled by each of ``scales``. Near-duplicate
    boxes (IoU > ``dedupe_iou``) are dropped; all boxes are decoded in one call. Each
    candidate's mask is described by :data:`FEATURES` and the ranker (a two-layer
    perceptron on standardised features) predicts its Dice with the reference; the
    prompt is the candidate with the highest prediction, or none when that is below
    ``min_score``.

    Args:
        base: A fitted :class:`EmbeddingHeadPrompter` (``fit`` fits one when None).
        thresholds: Map thresholds whose components become candidates.
        relative: Also threshold the map at these fractions of its peak.
        max_components: Components per threshold, largest first.
        scales: The head's largest box grown by each of these fractions per side
            (negative: shrunk).
        grid: Boxes independent of the map: for each side ``g`` (a fraction of the
            image's width and height), a lattice of boxes of that size overlapping by
            half (``1.0``: the whole image; ``0.5``: 3 x 3 boxes).
        dedupe_iou: A box overlapping an earlier candidate box more than this is dropped.
        min_score: No prompt when the best predicted Dice is below this (``fit(...,
            val=...)`` calibrates it: the value that maximises the validation mean Dice,
            an empty result on an image without the target counting 1).
        mask_threshold: Probability threshold of the decoded masks (the pipeline's).
        hidden: Width of the ranker's hidden layers.
    """

    requires_target = False
    uses_encoding = True
    state_suffix = ".pt"

    def __init__(
        self,
        base: EmbeddingHeadPrompter | None = None,
        *,
        thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.5, 0.7),
        relative: Sequence[float] = (0.25, 0.5),
        max_components: int = 3,
        scales: Sequence[float] = (-0.1, 0.15, 0.35),
        grid: Sequence[float] = (),
        dedupe_iou: float = 0.9,
        min_score: float = 0.0,
        mask_threshold: float = 0.5,
        hidden: int = 16,
    ) -> None:
        if base is not None and not isinstance(base, EmbeddingHeadPrompter):
            raise TypeError(f"base: expected an EmbeddingHeadPrompter (or None: fit one), got {type(base).__name__}")
        self.base = base
        self.thresholds = tuple(check_probability(t, name="thresholds") for t in thresholds)
        if not self.thresholds:
            raise ValueError("thresholds: expected at least one map threshold, got none")
        self.relative = tuple(check_probability(r, name="relative") for r in relative)
        if isinstance(max_components, bool) or not isinstance(max_components, int) or max_components < 1:
            raise ValueError(f"max_components: expected a positive int, got {max_components!r}")
        self.max_components = max_components
        for s in scales:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not -0.45 <= s <= 1:
                raise ValueError(f"scales: expected numbers in [-0.45, 1] (fractions of a box side), got {list(scales)!r}")
        self.scales = tuple(float(s) for s in scales)
        for g in grid:
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0.1 <= g <= 1:
                raise ValueError(f"grid: expected box sides in [0.1, 1] (fractions of the image side), got {list(grid)!r}")
        self.grid = tuple(float(g) for g in grid)
        self.dedupe_iou = check_probability(dedupe_iou, name="dedupe_iou")
        self.min_score = check_probability(min_score, name="min_score")
        self.mask_threshold = check_probability(mask_threshold, name="mask_threshold")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden: expected a positive int, got {hidden!r}")
        self.hidden = hidden
        self.segmenter: Any = None
        self.ranker: Any = None
        self.feature_mean = np.zeros(len(FEATURES), dtype=np.float32)
        self.feature_std = np.ones(len(FEATURES), dtype=np.float32)
        self.calibration: dict[str, float] = {}
        self.last_score: float | None = None
        self._last: tuple[Any, list[Candidate], np.ndarray] | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.ranker is not None else "not fitted"
        return f"RankedPrompter({self.base!r}, min_score={self.min_score:.3f}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments other than the base (which the saved state holds)."""
        return {
            "thresholds": list(self.thresholds),
            "relative": list(self.relative),
            "max_components": self.max_components,
            "scales": list(self.scales),
            "grid": list(self.grid),
            "dedupe_iou": self.dedupe_iou,
            "min_score": self.min_score,
            "mask_threshold": self.mask_threshold,
            "hidden": self.hidden,
        }

    def bind_segmenter(self, segmenter: Any) -> None:
        """Decode candidates with ``segmenter`` (a :class:`~medsamkit.Pipeline` calls this) and let the base check it."""
        if self.base is not None:
            self.base.bind_segmenter(segmenter)
        self.segmenter = segmenter

    # -- candidates ---------------------------------------------------------------------------

    def _proposals(
        self, prob: np.ndarray, head_threshold: float, head_max_boxes: int, head_margin: float
    ) -> list[tuple[np.ndarray, str]]:
        h, w = prob.shape

        def boxes_at(t: float, k: int, margin: float = 0.02) -> np.ndarray:
            return boxes_from_map(prob, threshold=t, min_area_fraction=0.002, max_boxes=k, margin_fraction=margin)

        out: list[tuple[np.ndarray, str]] = []
        head = boxes_at(head_threshold, head_max_boxes, head_margin)
        if len(head) > 1:
            out.append((head, "head"))
        for t in dict.fromkeys((head_threshold, *self.thresholds)):
            out += [(b[None], f"t{t:.2f}") for b in boxes_at(t, self.max_components)]
        peak = float(prob.max())
        for r in self.relative if peak > 0 else ():
            out += [(b[None], "relative") for b in boxes_at(r * peak, self.max_components)]
        first = next((b for b, _ in out if len(b) == 1), None)
        if first is not None:
            out += [(grow_boxes_by_fraction(first, s, (h, w)), f"scale{s:+.2f}") for s in self.scales]
        for g in self.grid:  # boxes that do not depend on the map: a lesion the head does not see
            steps = np.linspace(0, 1 - g, max(1, round(2 * (1 - g) / g) + 1)) if g < 1 else np.zeros(1)
            for y0 in steps:
                for x0 in steps:
                    box = np.array([[x0 * w, y0 * h, (x0 + g) * w - 1, (y0 + g) * h - 1]], dtype=np.float32)
                    out.append((grow_boxes_xyxy(box, 0, (h, w)), "grid"))
        kept: list[tuple[np.ndarray, str]] = []
        for boxes, source in out:
            if len(boxes) == 1 and any(len(k) == 1 and box_iou_xyxy(boxes, k)[0, 0] > self.dedupe_iou for k, _ in kept):
                continue
            kept.append((boxes, source))
        return kept

    def candidates(
        self, encoding: ImageEncoding, *, segmenter: Any = None, base: EmbeddingHeadPrompter | None = None
    ) -> list[Candidate]:
        """The candidate prompts of one image, decoded and described (empty masks left out)."""
        from scipy import ndimage

        segmenter = segmenter if segmenter is not None else self.segmenter
        base = base if base is not None else self.base
        if segmenter is None:
            raise ValueError(
                "segmenter: RankedPrompter decodes its candidates; use it inside a Pipeline or call bind_segmenter()"
            )
        if base is None:
            raise RuntimeError("RankedPrompter has no fitted base head: call fit(samples, segmenter=...) or load(path) first")
        prob = base.probability_map(encoding)
        proposals = self._proposals(prob, base.threshold, base.max_boxes, base.margin_fraction)
        if not proposals:
            return []
        flat = np.concatenate([b for b, _ in proposals]).astype(np.float32)
        decoded = segmenter.decode(encoding, Prompts(box_xyxy=flat))
        probs, scores = np.asarray(decoded.probabilities), np.asarray(decoded.scores, dtype=np.float64)
        h, w = prob.shape
        head_region = prob > base.threshold
        emb = embedding_of(encoding.features).detach().float().cpu()[0]  # (C, s, s)
        emb = emb / emb.norm(dim=0, keepdim=True).clamp_min(1e-6)
        image_size = base.image_size or 1024
        presence = float(prob.max())
        total_mass = float(prob.sum()) + 1e-6
        start = 0
        masks, raws, members = [], [], []
        for boxes, _ in proposals:
            idx = list(range(start, start + len(boxes)))
            start += len(boxes)
            p = probs[idx].max(axis=0)
            masks.append(p > self.mask_threshold)
            raws.append(p)
            members.append(idx)
        out: list[Candidate] = []
        for i, ((boxes, source), mask, p, idx) in enumerate(zip(proposals, masks, raws, members)):
            area = int(mask.sum())
            if area == 0:
                continue
            inside = prob[mask]
            outside_n = h * w - area
            ys, xs = np.nonzero(mask)
            perimeter = area - int(ndimage.binary_erosion(mask).sum())
            _, n_comp = ndimage.label(mask)
            border = int(mask[0].sum() + mask[-1].sum() + mask[:, 0].sum() + mask[:, -1].sum())
            others = [_iou(mask, m) for j, m in enumerate(masks) if j != i and m.any()]
            small = target_at_logits(mask, encoding.input_size_hw, image_size, emb.shape[-1])[0].bool()
            if small.any() and (~small).any():
                similarity = float((emb[:, small].mean(1) * emb[:, ~small].mean(1)).sum())
            else:
                similarity = 1.0
            box_area = float(((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).sum())
            features = [
                float(scores[idx].min()),
                _iou(p > 0.73, p > 0.27),
                float(p[mask].mean()),
                float(inside.mean()),
                float(inside.max()),
                float((total_mass - inside.sum()) / max(outside_n, 1)),
                float(inside.sum() / total_mass),
                presence,
                area / (h * w),
                box_area / (h * w),
                area / max(box_area, 1.0),
                float(np.log1p(n_comp)),
                float(4 * np.pi * area / max(perimeter, 1) ** 2),
                float(ys.mean() / h),
                float(xs.mean() / w),
                border / max(perimeter, 1),
                float(np.mean(others)) if others else 1.0,
                _iou(mask, head_region),
                similarity,
                float(len(boxes)),
                float(scores[idx].min() - scores.max()),
                0.0,  # mass share relative to the best candidate's: filled below
                float(source == "head")
                + 2 * float(source.startswith("t"))
                + 3 * float(source == "relative")
                + 4 * float(source == "grid"),
            ]
            out.append(Candidate(boxes=boxes, mask=mask, features=np.asarray(features, dtype=np.float32), source=source))
        share = FEATURES.index("map_mass_share")
        best = max((c.features[share] for c in out), default=0.0)
        for c in out:
            c.features[FEATURES.index("mass_share_of_best")] = c.features[share] / max(best, 1e-6)
        return out

    # -- ranking ------------------------------------------------------------------------------

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The ranker's predicted Dice, ``(N,)`` in ``[0, 1]``, for ``(N, len(FEATURES))`` features."""
        import torch

        if self.ranker is None:
            raise RuntimeError("RankedPrompter is not fitted: call fit(samples, segmenter=...) or load(path) first")
        x = (np.asarray(features, dtype=np.float32) - self.feature_mean) / self.feature_std
        with torch.inference_mode():
            return torch.sigmoid(self.ranker(torch.from_numpy(x))[:, 0]).numpy().astype(np.float64)

    def _choose(self, encoding: ImageEncoding) -> tuple[list[Candidate], np.ndarray]:
        if self._last is not None and self._last[0] is encoding:
            return self._last[1], self._last[2]
        found = self.candidates(encoding)
        scores = self.predict(np.stack([c.features for c in found])) if found else np.zeros(0)
        self._last = (encoding, found, scores)
        return found, scores

    def presence(self, encoding: ImageEncoding) -> float:
        """The best candidate's predicted Dice: how likely the result is right (``estimate_quality`` reads it)."""
        _, scores = self._choose(encoding)
        return float(scores.max()) if len(scores) else 0.0

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """The best candidate's boxes, or no prompt when its predicted Dice is below ``min_score``."""
        if encoding is None:
            if self.segmenter is None:
                raise ValueError("encoding: RankedPrompter reads the segmenter's embedding; use it inside a Pipeline")
            encoding = self.segmenter.encode(image)
        found, scores = self._choose(encoding)
        self.last_score = float(scores.max()) if len(scores) else None
        if not found or scores.max() < self.min_score:
            return Prompts.empty()
        return Prompts(box_xyxy=found[int(np.argmax(scores))].boxes)

    # -- fitting ------------------------------------------------------------------------------

    def _record(self, found: list[Candidate], target: np.ndarray, table: dict[str, list[Any]]) -> None:
        from ..metrics import dice

        group = len(table["empty"])
        target = np.asarray(target) > 0
        table["empty"].append(not target.any())
        for c in found:
            table["features"].append(c.features)
            table["dice"].append(dice(c.mask, target))
            table["group"].append(group)

    @staticmethod
    def _new_table() -> dict[str, list[Any]]:
        return {"features": [], "dice": [], "group": [], "empty": []}

    @staticmethod
    def _as_arrays(table: dict[str, list[Any]]) -> dict[str, np.ndarray]:
        return {
            "features": np.asarray(table["features"], dtype=np.float32).reshape(-1, len(FEATURES)),
            "dice": np.asarray(table["dice"], dtype=np.float32),
            "group": np.asarray(table["group"], dtype=np.int64),
            "empty": np.asarray(table["empty"], dtype=bool),
        }

    def candidate_table(
        self, samples: Sequence[Any], segmenter: Any, *, base: EmbeddingHeadPrompter | None = None, progress: bool = False
    ) -> dict[str, np.ndarray]:
        """Features and true Dice of every candidate of ``samples`` (with masks), proposed by ``base`` (default: own).

        Returns:
            ``{"features" (N, F), "dice" (N,), "group" (N,) image index, "empty" (images,) no target}``.
        """
        from tqdm.auto import tqdm

        table = self._new_table()
        for sample in tqdm(samples, desc="candidates", unit="img", disable=not progress):
            image, mask = sample.load()
            self._record(self.candidates(segmenter.encode(image), segmenter=segmenter, base=base), mask, table)
        return self._as_arrays(table)

    def out_of_fold_table(
        self,
        samples: Sequence[Any],
        segmenter: Any,
        fit_base: Callable[[list[Any]], EmbeddingHeadPrompter],
        *,
        folds: int = 4,
        seed: int = 0,
    ) -> dict[str, np.ndarray]:
        """:meth:`candidate_table` of ``samples``, each image's candidates proposed by a head fitted on the other folds."""
        table = self._new_table()
        out_of_fold_prompts(
            lambda part: _CandidateRecorder(self, fit_base(part), segmenter, table), samples, segmenter, folds=folds, seed=seed
        )
        return self._as_arrays(table)

    def fit_ranker(self, table: dict[str, np.ndarray], *, epochs: int = 200, lr: float = 3e-3, seed: int = 0) -> RankedPrompter:
        """Train the ranker on a candidate table (predicted Dice, binary cross-entropy against the true Dice)."""
        import torch

        x, y = np.asarray(table["features"], dtype=np.float32), np.asarray(table["dice"], dtype=np.float32)
        if len(x) < 2:
            raise ValueError(f"table: expected at least 2 candidates to learn from, got {len(x)}")
        self.feature_mean = x.mean(0)
        self.feature_std = np.maximum(x.std(0), 1e-6).astype(np.float32)
        xt = torch.from_numpy((x - self.feature_mean) / self.feature_std)
        yt = torch.from_numpy(y)
        torch.manual_seed(seed)
        ranker = _build_ranker(x.shape[1], self.hidden)
        optimizer = torch.optim.AdamW(ranker.parameters(), lr=lr, weight_decay=1e-3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for _ in range(epochs):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(ranker(xt)[:, 0], yt)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            torch.set_num_threads(threads)
        ranker.eval()
        self.ranker = ranker
        _log.info("ranked prompter: ranker trained on %d candidates, loss %.4f", len(x), float(loss.detach()))
        return self

    def selection(self, table: dict[str, np.ndarray], min_score: float | None = None) -> dict[str, np.ndarray]:
        """Per image of ``table``: the predicted and true Dice of the candidate chosen, and the resulting Dice.

        Returns:
            ``{"score", "chosen_dice", "dice"}`` per image: ``dice`` is the chosen candidate's
            when its score reaches ``min_score`` (default: own), else 1 for an image without the
            target and 0 for one with it (an empty result).
        """
        t = self.min_score if min_score is None else min_score
        pred = self.predict(table["features"]) if len(table["features"]) else np.zeros(0)
        n = len(table["empty"])
        score, chosen = np.full(n, -1.0), np.zeros(n)
        for i in range(n):
            rows = np.flatnonzero(table["group"] == i)
            if len(rows):
                j = rows[int(np.argmax(pred[rows]))]
                score[i], chosen[i] = pred[j], table["dice"][j]
        empty = np.asarray(table["empty"], dtype=bool)
        dice = np.where(score >= t, chosen, empty.astype(np.float64))
        return {"score": score, "chosen_dice": chosen, "dice": dice}

    def calibrate(self, table: dict[str, np.ndarray]) -> dict[str, float]:
        """Set ``min_score`` to the value maximising the mean Dice over the images of a validation ``table``."""
        sel = self.selection(table, min_score=0.0)
        options = np.unique(np.concatenate([[0.0], sel["score"][sel["score"] >= 0] + 1e-9]))
        means = [float(self.selection(table, min_score=t)["dice"].mean()) for t in options]
        best = int(np.argmax(means))
        self.min_score = float(min(options[best], 1.0))
        self.calibration = {"min_score": self.min_score, "val_mean_dice": means[best], "n_val": float(len(table["empty"]))}
        _log.info("ranked prompter: min_score %.3f (validation mean Dice %.4f)", self.min_score, means[best])
        return self.calibration

    def fit(
        self,
        samples: Sequence[Any],
        *,
        segmenter: Any = None,
        val: Sequence[Any] | None = None,
        epochs: int = 40,
        folds: int = 4,
        seed: int = 0,
        progress: bool = False,
        fit_base: Callable[[list[Any]], EmbeddingHeadPrompter] | None = None,
    ) -> RankedPrompter:
        """Fit the base head (unless given), the ranker on out-of-fold candidates, ``min_score`` on ``val``.

        Args:
            samples: Training images with masks (items with ``stem`` and ``load()``).
            segmenter: Required: the SAM-family segmenter whose embedding the heads read and
                which decodes the candidates (wrap it in a ``CachedSegmenter``).
            val: Validation images with masks (none of the training images): ``min_score``
                is calibrated on them; without, it stays as it is.
            epochs: The heads' training epochs.
            folds: Out-of-fold heads used to propose the ranker's training candidates.
            seed: Seed of the folds, the heads and the ranker.
            progress: Progress bars.
            fit_base: ``samples -> fitted EmbeddingHeadPrompter`` (default: fit one with
                ``epochs`` and ``seed``); called once per fold, and on all samples when
                ``base`` was not given.
        """
        if segmenter is None:
            raise TypeError("segmenter: RankedPrompter.fit needs segmenter=<the segmenter whose embedding it reads>")
        samples = list(samples)
        if len(samples) < 2:
            raise ValueError(f"samples: expected at least 2 training samples, got {len(samples)}")

        def default_fit(part: list[Any]) -> EmbeddingHeadPrompter:
            return EmbeddingHeadPrompter().fit(part, segmenter=segmenter, epochs=epochs, seed=seed, progress=progress)

        fit_base = fit_base or default_fit
        _log.info("ranked prompter: out-of-fold candidates of %d training images (%d folds)", len(samples), folds)
        table = self.out_of_fold_table(samples, segmenter, fit_base, folds=folds, seed=seed)
        if self.base is None:
            _log.info("ranked prompter: fitting the head on all %d training images", len(samples))
            self.base = fit_base(samples)
        self.fit_ranker(table, seed=seed)
        self.bind_segmenter(segmenter)
        if val is not None and len(val):
            _log.info("ranked prompter: calibrating min_score on %d validation images", len(val))
            self.calibrate(self.candidate_table(val, segmenter, progress=progress))
        return self

    # -- state --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Save the base head, the ranker and the parameters in one ``.pt`` (tensors and JSON only), atomically."""
        import torch

        if self.ranker is None or self.base is None:
            raise RuntimeError("RankedPrompter is not fitted: nothing to save")
        with tempfile.TemporaryDirectory() as tmp:
            base_bytes = self.base.save(Path(tmp) / "base.pt").read_bytes()
        tensors = {
            "base": torch.frombuffer(bytearray(base_bytes), dtype=torch.uint8),
            "ranker": self.ranker.state_dict(),
            "feature_mean": torch.from_numpy(self.feature_mean),
            "feature_std": torch.from_numpy(self.feature_std),
        }
        meta = {"params": self.params(), "features": list(FEATURES), "calibration": self.calibration}
        return save_tensor_file(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> RankedPrompter:
        """Load a prompter saved with :meth:`save`; ``overrides`` change parameters (``min_score``, ...)."""
        path = Path(path)
        data, meta = load_tensor_file(
            path, "RankedPrompter", keys=("ranker", "feature_mean", "feature_std"), bytes_keys=("base",)
        )
        if meta.get("features") != list(FEATURES):
            raise ValueError(f"path: {path} was saved with other ranker features; fit it again")
        params = loaded_params(set(cls().params()), meta["params"], overrides, shape_params={"hidden"}, path=path)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "base.pt").write_bytes(data["base"])
            base = EmbeddingHeadPrompter.load(Path(tmp) / "base.pt")
        prompter = cls(base, **params)
        ranker = _build_ranker(len(FEATURES), prompter.hidden)
        ranker.load_state_dict(data["ranker"])
        ranker.eval()
        prompter.ranker = ranker
        prompter.feature_mean = data["feature_mean"].numpy().astype(np.float32)
        prompter.feature_std = data["feature_std"].numpy().astype(np.float32)
        prompter.calibration = meta.get("calibration", {})
        return prompter

"""A prompt provider learned on the segmenter's own image embedding.

The pipeline encodes every image anyway; a small convolutional head on that
embedding predicts a coarse foreground map, whose components become box prompts.
No second backbone, no extra encoder cost: training and inference reuse the
encoding (and the embedding cache), so fitting on tens of images takes minutes on
a CPU.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from .._augment import augmented_copies
from .._geometry import component_boxes_xyxy, grow_boxes_by_fraction, target_at_logits
from .._protocols import EncoderIdentified, Segmenter
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import check_probability

__all__ = ["EmbeddingHeadPrompter"]

_log = logging.getLogger("medsamkit")

_SegmenterT = TypeVar("_SegmenterT")


def map_loss(logits: Any, target: Any) -> Any:
    """Binary cross-entropy plus soft Dice per image (an empty target pushes the map to zero)."""
    import torch.nn.functional as F

    prob = logits.sigmoid()
    dims = tuple(range(1, logits.ndim))
    dice = 1 - (2 * (prob * target).sum(dims) + 1) / (prob.sum(dims) + target.sum(dims) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def save_tensor_file(path: str | Path, tensors: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (tensors or state dicts) and ``meta`` (as JSON) to one ``.pt`` file,
    atomically: what the learned prompters save, loadable with ``torch.load(weights_only=True)``."""
    import torch

    from ..data import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save({**tensors, "meta": json.dumps(meta)}, buffer)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_tensor_file(
    path: Path, what: str, *, keys: tuple[str, ...], file_format: str | None = None, bytes_keys: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, meta)`` of a file written by :func:`save_tensor_file`, read with
    ``torch.load(weights_only=True)`` (never unpickled).

    ``bytes_keys`` name entries that hold bytes as a ``uint8`` tensor (a nested saved
    file): they are returned as ``bytes``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not a saved ``what``: unreadable, without ``meta`` or one of
            ``keys`` / ``bytes_keys``, a ``bytes_keys`` entry that is not a tensor, or (with
            ``file_format``) of another format.
    """
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"path: expected a saved {what} .pt, got missing file {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(data["meta"])
        for key in keys:
            data[key]  # noqa: B018 - a missing key is a KeyError named in the message below
        for key in bytes_keys:
            data[key] = data[key].numpy().tobytes()
        if file_format is not None and meta.get("format") != file_format:
            raise ValueError(f"format {meta.get('format')!r}")
    except Exception as exc:
        raise ValueError(f"path: {path} is not a saved {what} ({exc})") from exc
    return data, meta


def check_fit_inputs(samples: Any, segmenter: _SegmenterT | None, *, epochs: Any, batch_size: Any, needs: str) -> _SegmenterT:
    """The checks a prompter trained on the segmenter's embedding makes first in ``fit``; returns the segmenter.

    Args:
        needs: What the message for a missing segmenter says after ``segmenter:``.

    Raises:
        TypeError: If ``samples`` is a segmenter (the old positional signature) or ``segmenter`` is None.
        ValueError: For no samples, or ``epochs`` / ``batch_size`` that are not positive ints.
    """
    if hasattr(samples, "encode") and hasattr(samples, "model_id"):
        raise TypeError(
            f"samples: got a segmenter ({type(samples).__name__}); the signature is fit(samples, *, segmenter=..., ...)"
        )
    if segmenter is None:
        raise TypeError(f"segmenter: {needs}")
    if len(samples) == 0:
        raise ValueError("samples: expected at least one training sample, got none")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return segmenter


def embedding_of(features: Any) -> Any:
    """The ``(1, C, h, w)`` image embedding inside an encoding's features."""
    import torch

    if isinstance(features, (tuple, list)):
        features = features[0]
    if not isinstance(features, torch.Tensor) or features.ndim != 4:
        raise TypeError(
            "encoding: expected features holding a (1, C, h, w) torch embedding (a SAM-family segmenter), "
            f"got {type(features).__name__}"
        )
    return features


def embedding_dataset(
    segmenter: Any, samples: Sequence[Any], *, pool: int = 1, flip: bool = False, target_scale: int = 1, progress: bool = False
) -> tuple[Any, Any]:
    """Encode image/mask samples once: the training data of a model on the segmenter's embedding.

    Returns ``(x, y)``: ``(N, C, h, w)`` float16 embeddings (average-pooled by ``pool``;
    half the memory, trained in float32) and ``(N, 1, s, s)`` float32 targets in the
    embedding's frame at ``target_scale`` times its side (:func:`target_at_logits`).
    With ``flip`` every image is also mirrored left-right and encoded (``N`` = 2 x
    the samples; wrap the segmenter in a ``CachedSegmenter`` to encode once across fits).
    """
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    image_size = segmenter.image_size
    embeddings, targets = [], []
    for sample in tqdm(samples, desc="encode", unit="img", disable=not progress):
        image, mask = sample.load()
        for view in range(2 if flip else 1):
            if view:
                image, mask = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
            enc = segmenter.encode(image)
            emb = embedding_of(enc.features).detach().float().cpu()
            emb = F.avg_pool2d(emb, pool) if pool > 1 else emb
            embeddings.append(emb[0].to(torch.float16))
            targets.append(target_at_logits(mask, enc.input_size_hw, image_size, emb.shape[-1] * target_scale))
    return torch.stack(embeddings), torch.stack(targets)


def presence_threshold_for(values: Any, labels: Any, *, rule: str = "accuracy") -> float | None:
    """The presence threshold that best separates images with the target (``labels`` True) from those without.

    ``rule="accuracy"`` maximises the share of right decisions (every image counts
    once, as in a mean Dice), ``"youden"`` sensitivity + specificity. The threshold
    lies midway between the chosen image score and the next lower one (less brittle
    than one image's exact value). None without images of both kinds.
    """
    s, y = np.asarray(values, dtype=np.float64), np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None
    best, best_score = 0.0, -np.inf
    for t in np.unique(np.concatenate([[0.0], s])):
        if rule == "youden":
            score = (s[y] >= t).mean() + (s[~y] < t).mean()
        else:  # accuracy: every image counts once, as in a mean Dice over the images
            score = ((s >= t) == y).mean()
        if score > best_score + 1e-12:
            best, best_score = float(t), score
    lower = s[s < best]
    return float((best + lower.max()) / 2) if len(lower) else best


def presence_values(
    presence: Callable[[ImageEncoding], float], segmenter: Any, samples: Sequence[Any], *, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(presence scores, has a target)`` of validation samples: ``presence`` of each image's encoding, and
    whether its mask is not empty (what :func:`presence_calibration` reads)."""
    from tqdm.auto import tqdm

    values, labels = [], []
    for sample in tqdm(samples, desc="calibrate", unit="img", disable=not progress):
        image, mask = sample.load()
        values.append(presence(segmenter.encode(image)))
        labels.append(bool(np.asarray(mask).any()))
    return np.asarray(values, dtype=np.float64), np.asarray(labels, dtype=bool)


def presence_calibration(values: np.ndarray, labels: np.ndarray, *, rule: str, current: float, what: str) -> dict[str, float]:
    """The presence threshold :func:`presence_threshold_for` picks on validation scores, and how it does.

    Returns:
        ``{"n_target", "n_empty", "threshold", "sensitivity", "specificity"}``; without images
        of both kinds the threshold stays ``current`` and the last two are left out. ``what``
        names the prompter in the log line.
    """
    result: dict[str, float] = {"n_target": int(labels.sum()), "n_empty": int((~labels).sum())}
    threshold = presence_threshold_for(values, labels, rule=rule)
    if threshold is None:
        result["threshold"] = current
        return result
    result.update(
        threshold=threshold,
        sensitivity=float((values[labels] >= threshold).mean()),
        specificity=float((values[~labels] < threshold).mean()),
    )
    _log.info(
        "%s: presence threshold %.3f (validation sensitivity %.3f, specificity %.3f)",
        what,
        threshold,
        result["sensitivity"],
        result["specificity"],
    )
    return result


def boxes_from_map(
    prob: np.ndarray, *, threshold: float, min_area_fraction: float, max_boxes: int, margin_fraction: float
) -> np.ndarray:
    """``(K, 4)`` boxes around the regions of a ``(H, W)`` probability map above ``threshold``.

    Each 8-connected region larger than ``min_area_fraction`` of the map gets a box
    (the largest ``max_boxes``), grown by ``margin_fraction`` of its side per side and
    clipped to the map.
    """
    region = prob > threshold
    h, w = region.shape
    min_area = max(1, int(min_area_fraction * h * w))
    boxes = component_boxes_xyxy(region, min_area=min_area, keep_largest=False)[:max_boxes]
    return grow_boxes_by_fraction(boxes, margin_fraction, (h, w)) if len(boxes) and margin_fraction else boxes


class MapBoxRule(Protocol):
    """What :func:`map_prompts` reads of a map-based prompter: its presence gate and how its map becomes boxes."""

    presence_threshold: float
    threshold: float
    min_area_fraction: float
    max_boxes: int
    margin_fraction: float


def map_prompts(rule: MapBoxRule, presence: float, probability_map: Callable[[], np.ndarray]) -> Prompts:
    """The prompt of a map-based prompter: no prompt when ``presence`` is below ``rule.presence_threshold``,
    else the :func:`boxes_from_map` of ``probability_map()`` (only computed then) with ``rule``'s settings."""
    if presence < rule.presence_threshold:
        return Prompts.empty()
    boxes = boxes_from_map(
        probability_map(),
        threshold=rule.threshold,
        min_area_fraction=rule.min_area_fraction,
        max_boxes=rule.max_boxes,
        margin_fraction=rule.margin_fraction,
    )
    return Prompts(box_xyxy=boxes)


def encoder_id_of(segmenter: Any) -> str | None:
    """``segmenter.encoder_id`` for an :class:`~medsamkit.EncoderIdentified` segmenter, else None."""
    return segmenter.encoder_id if isinstance(segmenter, EncoderIdentified) else None


def encoder_mismatch(fitted_encoder_id: str | None, fitted_model_id: str | None, segmenter: Any) -> tuple[Any, Any] | None:
    """None when ``segmenter`` computes the embedding a provider was fitted on, else ``(fitted, got)`` ids.

    Keys on ``encoder_id`` (the image encoder's weights and numerics: a decoder-only
    fine-tuned checkpoint keeps it) when both sides have one, else on ``model_id``.
    """
    theirs = encoder_id_of(segmenter)
    if fitted_encoder_id is not None and theirs is not None:
        return None if theirs == fitted_encoder_id else (fitted_encoder_id, theirs)
    model_id = segmenter.model_id if isinstance(segmenter, Segmenter) else None
    return None if model_id == fitted_model_id else (fitted_model_id, model_id)


def bind_checked(
    segmenter: Any,
    *,
    encoder_id: str | None,
    model_id: str | None,
    bound_model_ids: set[str],
    what: str,
    refit: str,
) -> None:
    """The shared body of the fitted providers' ``bind_segmenter``.

    Refuses a segmenter whose image encoder is not the one ``what`` was fitted on
    (:func:`encoder_mismatch`) and adds its ``model_id`` to ``bound_model_ids``, the
    encodings the provider then accepts.

    Raises:
        ValueError: If the segmenter's image encoder differs from the fitted one.
    """
    mismatch = encoder_mismatch(encoder_id, model_id, segmenter)
    if mismatch is not None:
        fitted, got = mismatch
        raise ValueError(
            f"segmenter: the {what} was fitted on the image encoder {fitted!r}, but this segmenter's encoder is "
            f"{got!r}. A decoder-only fine-tuned checkpoint keeps the encoder and works; a different encoder (other "
            f"weights, LoRA on the encoder, another model) needs a new fit ({refit})"
        )
    if isinstance(segmenter, Segmenter):
        bound_model_ids.add(segmenter.model_id)


def check_encoding_model(encoding: Any, model_id: str | None, bound_model_ids: set[str], what: str) -> None:
    """Refuse an encoding of another model than the one ``what`` was fitted on (or bound to)."""
    if not isinstance(encoding, ImageEncoding):
        raise TypeError(f"encoding: expected an ImageEncoding, got {type(encoding).__name__}")
    if encoding.model_id != model_id and encoding.model_id not in bound_model_ids:
        raise ValueError(
            f"encoding: the {what} was fitted on embeddings of {model_id!r}, got an encoding of "
            f"{encoding.model_id!r}; use the same segmenter, or one with the same image encoder "
            "(bind_segmenter(segmenter) checks it; a Pipeline does so when it is built)"
        )


def loaded_params(
    allowed: set[str], saved: dict[str, Any], overrides: dict[str, Any], *, shape_params: set[str], path: Path
) -> dict[str, Any]:
    """A saved provider's constructor parameters with ``overrides`` applied.

    Raises:
        TypeError: For a name that is not a parameter (like an unexpected keyword argument).
        ValueError: For a ``shape_params`` value that contradicts the saved one (it shapes the weights).
    """
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(allowed)}")
    for key in shape_params & set(overrides):
        if saved[key] != overrides[key]:
            raise ValueError(f"{key}: the saved prompter {path} has {saved[key]!r}, the config {overrides[key]!r}")
    return {**saved, **overrides}


_SHAPE_PARAMS = {"hidden", "arch", "pool"}
"""Parameters that shape the saved weights: ``load`` refuses to change them."""

ARCHITECTURES = ("light", "conv3")
"""Head architectures: ``light`` (default) and ``conv3`` (the first version's, kept to load old heads)."""


def _build_head(channels: int, hidden: int, arch: str = "conv3") -> Any:
    from torch import nn

    groups = 8 if hidden % 8 == 0 else 1
    if arch == "light":
        # A 1x1 projection first, then two 3x3 convolutions (the second dilated): about 7x fewer
        # operations than ``conv3`` at hidden=32, and a 7x7-cell receptive field.
        return nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.GroupNorm(groups, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
            nn.GroupNorm(groups, hidden),
            nn.GELU(),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=2, dilation=2),
            nn.GELU(),
            nn.Conv2d(hidden, 1, kernel_size=1),
        )
    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
        nn.GroupNorm(groups, hidden),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, 1, kernel_size=1),
    )


@register_component("prompter", "embedding-head", fitted=True)
class EmbeddingHeadPrompter:
    """Boxes from a small head trained on the segmenter's image embedding.

    ``fit`` encodes each training image once with the segmenter and trains a
    small convolutional head (``arch="light"``: about 18 k parameters for a
    256-channel embedding) to predict the reference mask at the embedding's resolution
    (Dice + binary cross-entropy). At inference the predicted map is cropped to the
    image area, resized to the input size and thresholded; each 8-connected region
    larger than ``min_area_fraction`` of the image becomes a box (the largest
    ``max_boxes``), grown by ``margin_fraction`` of its side. No region: no prompt,
    so the pipeline returns an empty mask (images without the target are handled).

    In a :class:`~medsamkit.Pipeline` the prompter receives the encoding the
    pipeline computes anyway (``uses_encoding = True``), so the encoder runs once.

    Args:
        threshold: Foreground probability of the coarse map, in ``[0, 1]``.
        min_area_fraction: Smallest region (fraction of the image area) that gets a box.
        max_boxes: At most this many boxes, largest regions first.
        margin_fraction: Boxes grow by this fraction of their width/height per side.
        hidden: Channels of the head's hidden layers.
        arch: ``"light"`` (a 1x1 projection, then a 3x3 and a dilated 3x3
            convolution) or ``"conv3"`` (two 3x3 convolutions on the full embedding,
            about 7x the compute; the architecture of heads saved before ``arch``).
        pool: The embedding is average-pooled by this factor before the head (2:
            LiteMedSAM's 64 x 64 embedding becomes a 32 x 32 map, 4x less compute;
            :class:`RefinedPrompter` tightens the coarser boxes).
        presence_rule: How :meth:`calibrate_presence` picks the threshold:
            ``"accuracy"`` or ``"youden"``.
        presence_threshold: An image whose presence score (:meth:`presence`, the
            largest value of the coarse map) is below this gets no prompt at all: "no
            target here". 0 never decides so; ``fit(..., val=...)`` calibrates it.
        test_flip: Test-time flip averaging: the left-right mirrored image is encoded
            too (a second encoder pass per image) and the coarse map is the mean of
            the two maps (the mirror's flipped back) before presence and boxes. Needs
            the segmenter, which a :class:`~medsamkit.Pipeline` binds when it is built
            (:meth:`bind_segmenter`).
    """

    requires_target = False
    uses_encoding = True
    state_suffix = ".pt"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        min_area_fraction: float = 0.002,
        max_boxes: int = 4,
        margin_fraction: float = 0.02,
        hidden: int = 32,
        presence_threshold: float = 0.0,
        arch: str = "light",
        pool: int = 2,
        presence_rule: str = "accuracy",
        test_flip: bool = False,
    ) -> None:
        self.threshold = check_probability(threshold, name="threshold")
        self.min_area_fraction = check_probability(min_area_fraction, name="min_area_fraction")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes: expected a positive int, got {max_boxes!r}")
        if not isinstance(margin_fraction, (int, float)) or not 0 <= margin_fraction <= 1:
            raise ValueError(f"margin_fraction: expected a number in [0, 1], got {margin_fraction!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden: expected a positive int, got {hidden!r}")
        self.max_boxes = max_boxes
        self.margin_fraction = float(margin_fraction)
        self.hidden = hidden
        if arch not in ARCHITECTURES:
            raise ValueError(f"arch: expected one of {ARCHITECTURES}, got {arch!r}")
        self.arch = arch
        if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
            raise ValueError(f"pool: expected a positive int, got {pool!r}")
        self.pool = pool
        if presence_rule not in ("accuracy", "youden"):
            raise ValueError(f"presence_rule: expected 'accuracy' or 'youden', got {presence_rule!r}")
        self.presence_rule = presence_rule
        self.presence_threshold = check_probability(presence_threshold, name="presence_threshold")
        if not isinstance(test_flip, bool):
            raise TypeError(f"test_flip: expected a bool, got {type(test_flip).__name__}")
        self.test_flip = test_flip
        self._segmenter: Any = None
        self.presence_calibration: dict[str, float] = {}
        self.head: Any = None
        self.model_id: str | None = None
        self.encoder_id: str | None = None
        self._bound_model_ids: set[str] = set()
        self.image_size: int | None = None
        self.history: list[dict[str, float]] = []

    def __repr__(self) -> str:
        state = f"fitted for {self.model_id}" if self.head is not None else "not fitted"
        return f"EmbeddingHeadPrompter(threshold={self.threshold}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving)."""
        return {
            "threshold": self.threshold,
            "min_area_fraction": self.min_area_fraction,
            "max_boxes": self.max_boxes,
            "margin_fraction": self.margin_fraction,
            "hidden": self.hidden,
            "presence_threshold": self.presence_threshold,
            "arch": self.arch,
            "pool": self.pool,
            "presence_rule": self.presence_rule,
            "test_flip": self.test_flip,
        }

    def fit(
        self,
        samples: Sequence[Any],
        *,
        segmenter: Segmenter | None = None,
        val: Sequence[Any] | None = None,
        epochs: int = 40,
        lr: float = 1e-3,
        batch_size: int = 8,
        flip: bool = False,
        augment: int = 0,
        seed: int = 0,
        progress: bool = False,
    ) -> EmbeddingHeadPrompter:
        """Train the head on ``samples`` (items with ``load() -> (image, mask)``).

        Each image is encoded once (wrap the segmenter in a ``CachedSegmenter`` to
        reuse encodings across fits); the head then trains on the stored embeddings in
        mini-batches (AdamW, one-cycle learning rate, Dice + binary cross-entropy).
        Stages are logged on the ``medsamkit`` logger (``INFO``), so a run without a
        progress bar still says what it is doing.

        Args:
            samples: Training images with masks; empty masks teach "no target here".
            segmenter: Required: the SAM-family segmenter whose embedding the head reads
                (wrap it in a ``CachedSegmenter`` to reuse encodings across fits).
            val: Optional validation images with masks (none of the training images):
                the presence threshold is calibrated on them (see
                :meth:`calibrate_presence`).
            epochs: Passes over the training images.
            lr: Peak AdamW learning rate.
            batch_size: Embeddings per optimiser step.
            flip: Also train on the left-right mirrored images (encodes each image twice).
            augment: Also train on this many augmented copies of each image (random scale,
                shift, rotation, gamma and contrast, seeded by ``seed`` and the sample's
                stem; each copy is encoded once, and mirrored too with ``flip``). On BUSI
                two copies took the test Dice from 0.730 to 0.753 (docs/results.md).
            seed: Seed of the initialisation, the order and the augmented copies.
            progress: Show progress bars.

        Returns:
            self.
        """
        import torch

        segmenter = check_fit_inputs(
            samples,
            segmenter,
            epochs=epochs,
            batch_size=batch_size,
            needs="EmbeddingHeadPrompter.fit needs segmenter=<the segmenter whose embedding it reads>",
        )
        image_size = getattr(segmenter, "image_size", None)
        if not isinstance(image_size, int):
            raise TypeError(f"segmenter: expected a SAM-family segmenter with image_size, got {type(segmenter).__name__}")
        training = augmented_copies(samples, augment, seed)
        _log.info(
            "embedding head: encoding %d training images%s%s",
            len(samples),
            f", {augment} augmented copies of each" if augment else "",
            " and their mirror images" if flip else "",
        )
        x_all, y_all = embedding_dataset(segmenter, training, pool=self.pool, flip=flip, progress=progress)
        torch.manual_seed(seed)
        head = _build_head(x_all.shape[1], self.hidden, self.arch)
        _log.info("embedding head: training on %d embeddings, %d epochs", len(x_all), epochs)
        # A head this small gains nothing from intra-op threads, and on a busy machine several
        # threads waiting for each other make each step about 10x slower: train on one.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._train(head, x_all, y_all, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
        finally:
            torch.set_num_threads(threads)
        head.eval()
        self.head = head
        self.model_id = segmenter.model_id
        self.encoder_id = encoder_id_of(segmenter)
        self._bound_model_ids = set()
        self.image_size = image_size
        if val is not None and len(val):
            self.calibrate_presence(segmenter, val, progress=progress)
        return self

    def _train(
        self, head: Any, x_all: Any, y_all: Any, *, epochs: int, lr: float, batch_size: int, seed: int, progress: bool
    ) -> None:
        import torch
        from tqdm.auto import tqdm

        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
        steps = max(1, len(x_all) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)
        rng = np.random.default_rng(seed)
        self.history = []
        for epoch in tqdm(range(1, epochs + 1), desc="fit head", unit="epoch", disable=not progress):
            head.train()
            losses = []
            for index in np.array_split(rng.permutation(len(x_all)), steps):
                x, y = x_all[index].float(), y_all[index]
                logits = head(x)
                loss = map_loss(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
            self.history.append({"epoch": epoch, "loss": float(np.mean(losses))})
            if epoch == 1 or epoch % 10 == 0 or epoch == epochs:
                _log.info("embedding head: epoch %d/%d, loss %.4f", epoch, epochs, self.history[-1]["loss"])

    def calibrate_presence(self, segmenter: Any, samples: Sequence[Any], *, progress: bool = False) -> dict[str, float]:
        """Set ``presence_threshold`` from validation images (with and without the target).

        The presence score of an image is the largest value of the head's coarse
        map (:meth:`presence`). The threshold chosen maximises the share of right
        decisions on ``samples`` (``presence_rule="accuracy"``, the default: every
        image counts once, as in a mean Dice, so the prevalence of the validation
        images matters) or sensitivity + specificity (``"youden"``: prevalence
        ignored); without images of both kinds the threshold is left as it is.

        Returns:
            ``{"threshold", "sensitivity", "specificity", "n_target", "n_empty"}``
            on the validation images (also kept in ``self.presence_calibration``).
        """
        self._check_fitted()
        _log.info("embedding head: calibrating the presence threshold on %d validation images", len(samples))
        values, labels = presence_values(self.presence, segmenter, samples, progress=progress)
        result = presence_calibration(
            values, labels, rule=self.presence_rule, current=self.presence_threshold, what="embedding head"
        )
        self.presence_threshold = result["threshold"]
        self.presence_calibration = result
        return result

    def _pooled(self, emb: Any) -> Any:
        import torch.nn.functional as F

        return F.avg_pool2d(emb, self.pool) if self.pool > 1 else emb

    def _check_fitted(self) -> None:
        if self.head is None:
            raise RuntimeError("EmbeddingHeadPrompter is not fitted: call fit(samples, segmenter=...) or load(path) first")

    def bind_segmenter(self, segmenter: Any) -> None:
        """Check once that ``segmenter`` computes the embedding the head was fitted on.

        A :class:`~medsamkit.Pipeline` calls this when it is built, so a mismatch is
        one clear error up front, not one per image. The check keys on the
        segmenter's ``encoder_id`` (the image encoder's weights and numerics), not
        on ``model_id``: a checkpoint whose mask decoder was fine-tuned keeps the
        encoder, so the head fitted on the original checkpoint works with it.

        Raises:
            ValueError: If the segmenter's image encoder differs from the fitted one.
        """
        self._check_fitted()
        bind_checked(  # model ids for heads saved before encoder ids
            segmenter,
            encoder_id=self.encoder_id,
            model_id=self.model_id,
            bound_model_ids=self._bound_model_ids,
            what="embedding head",
            refit="medsamkit fit-prompter ... --prompter embedding-head",
        )
        self._segmenter = segmenter

    def _check_encoding(self, encoding: ImageEncoding) -> None:
        check_encoding_model(encoding, self.model_id, self._bound_model_ids, "head")

    def _low_res_logits(self, encoding: ImageEncoding) -> Any:
        """The head's ``(1, 1, h, w)`` logits over the image area (padding cropped away)."""
        import torch

        self._check_fitted()
        self._check_encoding(encoding)
        emb = self._pooled(embedding_of(encoding.features).detach().float().cpu())
        with torch.inference_mode():
            logits = self.head(emb)
        scale = logits.shape[-1] / self.image_size
        h = max(1, round(encoding.input_size_hw[0] * scale))
        w = max(1, round(encoding.input_size_hw[1] * scale))
        return logits[..., :h, :w]

    def _flip_averaged_logits(self, image: np.ndarray, encoding: ImageEncoding) -> Any:
        """``test_flip``: logits of the mean of the image's and its mirror's coarse maps."""
        import torch

        logits = self._low_res_logits(encoding)
        if self._segmenter is None:
            raise RuntimeError(
                "test_flip: the head encodes the mirrored image with the segmenter it is bound to; use it inside "
                "a Pipeline or call bind_segmenter(segmenter) first"
            )
        mirrored = self._low_res_logits(self._segmenter.encode(np.ascontiguousarray(np.asarray(image)[:, ::-1])))
        mean = (logits.sigmoid() + mirrored.flip(-1).sigmoid()) / 2
        return torch.logit(mean.clamp(1e-6, 1 - 1e-6))

    def presence(self, encoding: ImageEncoding) -> float:
        """Presence score in ``[0, 1]``: the largest value of the coarse foreground map."""
        return float(self._low_res_logits(encoding).max().sigmoid())

    def probability_map(self, encoding: ImageEncoding) -> np.ndarray:
        """``(H, W)`` float32 coarse foreground probability at the input resolution."""
        return self._probability_map(self._low_res_logits(encoding), encoding)

    @staticmethod
    def _probability_map(logits: Any, encoding: ImageEncoding) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            up = F.interpolate(logits, size=tuple(encoding.size_hw), mode="bilinear", align_corners=False)
            return torch.sigmoid(up[0, 0]).numpy()

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Boxes around the regions of the coarse map (``encoding`` from the pipeline is required).

        No prompt when the presence score is below ``presence_threshold``.
        """
        if encoding is None:
            raise ValueError(
                "encoding: EmbeddingHeadPrompter reads the segmenter's embedding; use it inside a Pipeline "
                "or pass encoding=segmenter.encode(image)"
            )
        logits = self._flip_averaged_logits(image, encoding) if self.test_flip else self._low_res_logits(encoding)
        return map_prompts(self, float(logits.max().sigmoid()), lambda: self._probability_map(logits, encoding))

    def save(self, path: str | Path) -> Path:
        """Save the head, its parameters and the segmenter's model id (``.pt``), atomically."""
        self._check_fitted()
        meta = {
            "params": self.params(),
            "model_id": self.model_id,
            "encoder_id": self.encoder_id,
            "image_size": self.image_size,
            "history": self.history,
            "presence_calibration": self.presence_calibration,
        }
        return save_tensor_file(path, {"head": self.head.state_dict()}, meta)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> EmbeddingHeadPrompter:
        """Load a prompter saved with :meth:`save`.

        Args:
            path: The ``.pt`` file.
            **overrides: Parameters (:meth:`params`) to change after fitting
                (``threshold``, ``presence_threshold``, ``max_boxes``, ...);
                ``hidden``, ``arch`` and ``pool`` shape the saved weights and must equal
                the saved values.

        Raises:
            TypeError: For a name that is not a parameter.
            ValueError: For ``hidden`` / ``arch`` / ``pool`` values that contradict the saved ones.
        """
        path = Path(path)
        data, meta = load_tensor_file(path, "EmbeddingHeadPrompter", keys=("head",))
        state = data["head"]
        params = {"arch": "conv3", "pool": 1, "presence_rule": "youden", **meta["params"]}  # heads saved before these
        prompter = cls(**loaded_params(set(cls().params()), params, overrides, shape_params=_SHAPE_PARAMS, path=path))
        head = _build_head(state["0.weight"].shape[1], prompter.hidden, prompter.arch)
        head.load_state_dict(state)
        head.eval()
        prompter.head = head
        prompter.model_id = meta["model_id"]
        prompter.encoder_id = meta.get("encoder_id")
        prompter.image_size = meta["image_size"]
        prompter.history = meta.get("history", [])
        prompter.presence_calibration = meta.get("presence_calibration", {})
        return prompter

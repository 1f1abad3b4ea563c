"""Box prompts from a class activation map (the prompt generator of SAM-Mix, paper 001).

A small image classifier learns *presence* (does the image contain the target?)
from nothing but the masks' emptiness; a class activation map (CAM) of its last
convolutional block, computed with the ``pytorch-grad-cam`` package, says where it
looked. The CAM thresholded at ``omega * max`` gives regions, and each region a box
prompt. Images the classifier calls "absent" get no prompt, so the pipeline returns
an empty mask for them.

Two backbones: ``"cnn"`` (default) trains a small CNN from scratch on the image;
``"embedding"`` trains a small conv classifier on the segmenter's own frozen image
embedding (LiteMedSAM's 256 x 64 x 64, medically pre-trained), read from the
pipeline's encoding as the embedding head does, and the CAM of its last conv layer
is upsampled to the image.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._geometry import component_boxes_xyxy
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import as_image, as_mask, check_probability
from ._embedding_head import bind_checked, check_encoding_model, embedding_of, encoder_id_of

__all__ = [
    "CAM_BACKBONES",
    "CAM_METHODS",
    "CAMBoxPrompter",
    "classifier_arrays",
    "classifier_scores",
    "classifier_step",
    "embedding_presence_arrays",
    "focal_loss",
    "index_batches",
    "presence_arrays",
    "seeded_classifier",
]

CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
}
"""CAM method names accepted by :class:`CAMBoxPrompter` -> ``pytorch_grad_cam`` class names.

Methods that run one forward pass per channel or need per-layer biases (ScoreCAM,
AblationCAM, FullGrad) are left out: they are slow or do not fit the classifier.
"""

CAM_BACKBONES: tuple[str, ...] = ("cnn", "embedding")
"""What :class:`CAMBoxPrompter`'s classifier reads: ``"cnn"`` the image (a CNN trained from scratch),
``"embedding"`` the segmenter's frozen image embedding (a small conv classifier on top)."""

# Inference-only parameters: ``load(path, **overrides)`` may change them; the others fix the network.
_OVERRIDABLE = ("cam", "omega", "presence_threshold", "max_boxes", "min_area_fraction")


def _grad_cam() -> Any:
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError("CAMBoxPrompter needs pytorch-grad-cam: pip install medsamkit[cam]") from None
    return pytorch_grad_cam


def _to_input(image: Any, size: int, *, name: str = "image") -> np.ndarray:
    """``(size, size)`` float32 grayscale in ``[0, 1]``: channels averaged (alpha dropped), per-image min-max."""
    import cv2

    image = as_image(image, name=name)
    gray = image.astype(np.float32)
    if gray.ndim == 3:
        gray = gray[..., :3].mean(axis=2)
    lo, hi = float(gray.min()), float(gray.max())
    gray = (gray - lo) / max(hi - lo, 1e-8)
    h, w = gray.shape
    interpolation = cv2.INTER_AREA if h >= size and w >= size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interpolation)


def _presence_net(blocks: list[Any], channels: int, *, offset: float) -> Any:
    """Either backbone's network: ``blocks`` (the last one is the CAM layer) on the input minus
    ``offset``, global average pooling, a linear layer to one presence logit."""
    from torch import nn

    class PresenceNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*blocks)
            self.fc = nn.Linear(channels, 1)

        def forward(self, x: Any) -> Any:
            return self.fc(self.features(x - offset if offset else x).mean(dim=(2, 3)))

    return PresenceNet()


def _build_classifier(width: int, depth: int) -> Any:
    """``depth`` blocks of 3x3 conv + BN + ReLU (max-pool between), GAP, linear: one presence logit.

    Channels ``width * (1, 2, 4, 4, ...)``; the last block (stride ``2 ** (depth - 1)``)
    is the CAM layer.
    """
    from torch import nn

    layers: list[nn.Module] = []
    c_in = 1
    for j in range(depth):
        c_out = width * min(2**j, 4)
        if j:
            layers.append(nn.MaxPool2d(2))
        layers.append(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        )
        c_in = c_out

    return _presence_net(layers, c_in, offset=0.5)


def _build_embedding_classifier(channels: int, width: int, depth: int) -> Any:
    """The ``"embedding"`` backbone: a 1x1 projection of the ``channels`` embedding channels to
    ``4 * width``, then ``depth - 1`` blocks of 3x3 conv (each conv followed by group norm, 4 groups,
    and ReLU) at the embedding's resolution (the last block is the CAM layer), GAP, linear: one
    presence logit.

    Group norm, not batch norm: it normalises each image on its own, so the classifier behaves the
    same in training and in eval mode from the first step (batch norm's running statistics need many
    steps to settle on the embedding's scale, and a SAM-Mix run with few images and epochs asks the
    classifier for boxes, in eval mode, long before that: it said "absent" for every image).
    """
    from torch import nn

    hidden = 4 * width
    blocks: list[nn.Module] = [nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GroupNorm(4, hidden), nn.ReLU(inplace=True))]
    for _ in range(depth - 1):
        blocks.append(nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.GroupNorm(4, hidden), nn.ReLU(inplace=True)))

    return _presence_net(blocks, hidden, offset=0.0)


def _pooled_embedding(features: Any, pool: int) -> Any:
    """``(1, C, h / pool, w / pool)`` float32 CPU tensor of an encoding's embedding."""
    import torch.nn.functional as F

    emb = embedding_of(features).detach().float().cpu()
    return F.avg_pool2d(emb, pool) if pool > 1 else emb


def _image_and_mask(sample: Any, i: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The checked ``(image, mask)`` of a sample with ``load()`` or of an ``(image, mask)`` pair."""
    if hasattr(sample, "load"):
        image, mask = sample.load()
    else:
        try:
            image, mask = sample
        except (TypeError, ValueError):
            raise TypeError(
                f"{name}[{i}]: expected a sample with load() -> (image, mask) or an (image, mask) pair, "
                f"got {type(sample).__name__}"
            ) from None
    image = as_image(image, name=f"{name}[{i}] image")
    return image, as_mask(mask, name=f"{name}[{i}] mask", size_hw=image.shape[:2])


def embedding_presence_arrays(segmenter: Any, samples: Sequence[Any], *, pool: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``"embedding"`` backbone's training data: ``(N, C, h, w)`` float16 embeddings (average-pooled by
    ``pool``; half the memory, trained in float32) and ``(N,)`` presence labels (mask non-empty).

    Each image is encoded once with ``segmenter`` (wrap it in a ``CachedSegmenter`` to reuse encodings).
    """
    images, labels = [], []
    for i, sample in enumerate(samples):
        image, mask = _image_and_mask(sample, i, name)
        images.append(_pooled_embedding(segmenter.encode(image).features, pool)[0].numpy().astype(np.float16))
        labels.append(float(mask.any()))
    return np.stack(images), np.asarray(labels, dtype=np.float32)


def presence_arrays(samples: Sequence[Any], size: int, *, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed images ``(N, size, size)`` and presence labels ``(N,)`` (mask non-empty)."""
    images, labels = [], []
    for i, sample in enumerate(samples):
        image, mask = _image_and_mask(sample, i, name)
        images.append(_to_input(image, size))
        labels.append(float(mask.any()))
    return np.stack(images), np.asarray(labels, dtype=np.float32)


def _augment(batch: Any, rng: np.random.Generator, *, shift: float, intensity: float, flip: bool) -> Any:
    """Random shift (replicate padding), gamma/contrast/brightness and optional horizontal flip, per image."""
    import torch
    import torch.nn.functional as F

    n, _, size, _ = batch.shape
    pad = int(round(shift * size))
    out = batch
    if pad > 0:
        padded = F.pad(batch, (pad, pad, pad, pad), mode="replicate")
        offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
        out = torch.stack([padded[i, :, oy : oy + size, ox : ox + size] for i, (oy, ox) in enumerate(offsets)])
    if intensity > 0:
        gamma = torch.as_tensor(np.exp(rng.uniform(-intensity, intensity, n)), dtype=out.dtype).view(n, 1, 1, 1)
        gain = torch.as_tensor(rng.uniform(1 - intensity / 2, 1 + intensity / 2, n), dtype=out.dtype).view(n, 1, 1, 1)
        bias = torch.as_tensor(rng.uniform(-intensity / 4, intensity / 4, n), dtype=out.dtype).view(n, 1, 1, 1)
        out = (out.clamp(0, 1) ** gamma * gain + bias).clamp(0, 1)
    if flip:
        which = torch.as_tensor(rng.random(n) < 0.5)
        out = torch.where(which.view(n, 1, 1, 1), out.flip(-1), out)
    return out


def classifier_arrays(
    samples: Sequence[Any], *, backbone: str, input_size: int, pool: int, segmenter: Any = None, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's inputs for ``backbone`` and the presence labels ``(N,)``.

    ``"cnn"``: ``(N, 1, S, S)`` float32 images in ``[0, 1]`` (:func:`presence_arrays`);
    ``"embedding"``: ``(N, C, h, w)`` float16 embeddings of ``segmenter`` (:func:`embedding_presence_arrays`).
    """
    if backbone == "embedding":
        return embedding_presence_arrays(segmenter, samples, pool=pool, name=name)
    x, y = presence_arrays(samples, input_size, name=name)
    return x[:, None], y


# Pieces of the presence classifier's training, public: CAMBoxPrompter.fit and SAM-Mix's
# joint loop (medsamkit.training.fit_sammix, which steps the classifier between segmenter
# steps) train it with the same code.


def seeded_classifier(width: int, depth: int, seed: int, *, backbone: str = "cnn", channels: int | None = None) -> Any:
    """A fresh classifier initialised from ``seed`` (the global torch RNG state is left untouched).

    ``backbone="embedding"`` needs ``channels``, the number of embedding channels it reads."""
    import torch

    if backbone not in CAM_BACKBONES:
        raise ValueError(f"backbone: expected one of {list(CAM_BACKBONES)}, got {backbone!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if backbone == "cnn":
            return _build_classifier(width, depth)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels: the embedding backbone needs the embedding's channel count, got {channels!r}")
        return _build_embedding_classifier(channels, width, depth)


def focal_loss(alpha: float | None, gamma: float) -> Any:
    """``loss(logits (N,), labels (N,)) -> scalar``: mean sigmoid focal loss; ``alpha`` None: no class weight."""
    from torchvision.ops import sigmoid_focal_loss

    focal_alpha = -1.0 if alpha is None else float(alpha)

    def loss_fn(logits: Any, target: Any) -> Any:
        return sigmoid_focal_loss(logits, target, alpha=focal_alpha, gamma=float(gamma), reduction="mean")

    return loss_fn


def index_batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive index batches of ``order`` (the last one may be shorter)."""
    return [order[begin : begin + batch_size] for begin in range(0, len(order), batch_size)]


def classifier_step(
    model: Any,
    optimizer: Any,
    x: Any,
    y: Any,
    index: np.ndarray,
    rng: np.random.Generator,
    *,
    loss_fn: Any,
    shift: float,
    intensity: float,
    flip: bool,
) -> tuple[float, int] | None:
    """One optimiser step of the classifier on the augmented images ``x[index]``.

    Args:
        model: The classifier (put in training mode here).
        optimizer: Its optimiser.
        x: ``(N, 1, S, S)`` float32 inputs in ``[0, 1]`` (the ``"embedding"`` backbone: ``(N, C, h, w)``
            embeddings, float16 or float32; pass ``intensity=0`` and ``flip=False`` for them).
        y: ``(N,)`` float32 presence labels.
        index: Indices of the batch in ``x``.
        rng: Augmentation randomness.
        loss_fn: See :func:`focal_loss`.
        shift, intensity, flip: Augmentation settings (see :meth:`CAMBoxPrompter.fit`).

    Returns:
        ``(mean loss of the batch, number of correct predictions at logit 0)``, or None
        when the batch was skipped: BatchNorm needs two images, so a single leftover
        image (of a set of two or more) is left for the next epoch.
    """
    import torch

    if len(index) < 2 and len(x) >= 2:
        return None
    rows = torch.as_tensor(index)
    model.train()
    xb = _augment(x[rows].float(), rng, shift=shift, intensity=intensity, flip=flip)
    logits = model(xb)[:, 0]
    loss = loss_fn(logits, y[rows])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int(((logits.detach() > 0).float() == y[rows]).sum())


def classifier_scores(model: Any, x: Any, y: Any, loss_fn: Any, *, threshold: float = 0.5) -> tuple[float, float]:
    """``(loss, accuracy)`` of the classifier in eval mode; "present" when the probability exceeds ``threshold``."""
    import math

    import torch

    model.eval()
    with torch.no_grad():
        logits = model(x.float())[:, 0]
    cut = -math.inf if threshold <= 0 else math.inf if threshold >= 1 else math.log(threshold / (1 - threshold))
    return float(loss_fn(logits, y)), float(((logits > cut).float() == y).float().mean())


@register_component("prompter", "cam-box", fitted=True)
class CAMBoxPrompter:
    """Boxes around the class-activation regions of a small presence classifier (SAM-Mix prompts).

    ``fit`` trains a small CNN from scratch (``depth`` blocks of 3x3 conv + batch
    norm + ReLU with 2x2 max-pooling between them, ``width``, ``2 width``, ``4 width``,
    ``4 width``, ... channels, global average pooling, one logit; 60 k parameters at
    ``width=16, depth=4``) on grayscale images resized to ``input_size`` x
    ``input_size`` and min-max scaled per image. The label of an image is whether its
    mask is non-empty; the loss is the sigmoid focal loss
    (``torchvision.ops.sigmoid_focal_loss``). The CAM layer is the last block, at
    stride ``2 ** (depth - 1)`` (a 16 x 16 map for the defaults). ``depth`` sets the
    receptive field: too large for the target and the CAM spreads around it.

    At call time: if the classifier's presence probability is below
    ``presence_threshold`` the image gets no prompt (``Prompts.empty()``). Otherwise
    the CAM of the last conv block for the presence logit (``pytorch-grad-cam``,
    method ``cam``) is resized to the image, thresholded at ``omega * max(cam)``,
    and each 8-connected region becomes a tight box, largest first: regions smaller
    than ``min_area_fraction`` of the image are dropped (the largest is always
    kept), at most ``max_boxes`` boxes. A CAM that is zero everywhere gives no prompt.

    Args:
        cam: CAM method, one of :data:`CAM_METHODS` (``"gradcam"``, ``"gradcam++"``,
            ``"xgradcam"``, ``"hirescam"``, ``"gradcamelementwise"``, ``"layercam"``,
            ``"eigencam"``, ``"eigengradcam"``).
        omega: Threshold factor ``ω`` in ``[0, 1]``: pixels with ``cam >= ω max(cam)``
            are activated. Larger ω, smaller boxes.
        presence_threshold: Classifier probability below which the image gets no prompt.
        max_boxes: At most this many boxes.
        min_area_fraction: Smallest region (fraction of the image area) that gets a box.
        input_size: Side of the classifier's square input in pixels (a multiple of
            ``2 ** (depth - 1)``, at least 4 times that).
        width: Channels of the first conv block (the classifier's size).
        depth: Number of conv blocks, 2 to 6.

        backbone: What the classifier reads (:data:`CAM_BACKBONES`). ``"cnn"`` (default):
            the image, through the CNN above, trained from scratch. ``"embedding"``: the
            segmenter's frozen image embedding (LiteMedSAM: 256 x 64 x 64, medically
            pre-trained), average-pooled by ``pool``, through a 1x1 projection to
            ``4 * width`` channels and ``depth - 1`` blocks of 3x3 conv + group norm +
            ReLU (the last is the CAM layer), global average pooling, one logit. Its
            CAM covers the embedding's square (the padded resized image); the part over
            the image is resized to the image. It needs the pipeline's ``encoding``
            (``uses_encoding`` is True), ``fit(..., segmenter=...)``, and a segmenter
            with the image encoder it was fitted on (checked once by
            :meth:`bind_segmenter`, as for the embedding head). ``input_size`` plays
            no part.
        pool: ``"embedding"`` backbone: average-pooling of the embedding before the
            classifier (1, 2 or 4; 2: a 32 x 32 CAM for LiteMedSAM, 4x less compute).

    Requires the optional ``pytorch-grad-cam`` package (``pip install medsamkit[cam]``).
    """

    requires_target = False
    uses_encoding = False  # the class default (the CLI asks the class); an "embedding" instance says True
    state_suffix = ".pt"

    def __init__(
        self,
        *,
        cam: str = "gradcam",
        omega: float = 0.5,
        presence_threshold: float = 0.5,
        max_boxes: int = 4,
        min_area_fraction: float = 0.002,
        input_size: int = 128,
        width: int = 16,
        depth: int = 4,
        backbone: str = "cnn",
        pool: int = 2,
    ) -> None:
        if backbone not in CAM_BACKBONES:
            raise ValueError(f"backbone: expected one of {list(CAM_BACKBONES)}, got {backbone!r}")
        if isinstance(pool, bool) or pool not in (1, 2, 4):
            raise ValueError(f"pool: expected 1, 2 or 4, got {pool!r}")
        if not isinstance(cam, str) or cam.lower() not in CAM_METHODS:
            raise ValueError(f"cam: expected one of {sorted(CAM_METHODS)}, got {cam!r}")
        self.omega = check_probability(omega, name="omega")
        self.presence_threshold = check_probability(presence_threshold, name="presence_threshold")
        self.min_area_fraction = check_probability(min_area_fraction, name="min_area_fraction")
        if isinstance(max_boxes, bool) or not isinstance(max_boxes, int) or max_boxes < 1:
            raise ValueError(f"max_boxes: expected a positive int, got {max_boxes!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 2 <= depth <= 6:
            raise ValueError(f"depth: expected an int in [2, 6], got {depth!r}")
        stride = 2 ** (depth - 1)
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 4 * stride or input_size % stride:
            raise ValueError(
                f"input_size: expected a multiple of {stride} (2 ** (depth - 1)) and at least {4 * stride}, got {input_size!r}"
            )
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width: expected a positive int, got {width!r}")
        self._cam_class = getattr(_grad_cam(), CAM_METHODS[cam.lower()])
        self.cam = cam.lower()
        self.max_boxes = max_boxes
        self.input_size = input_size
        self.width = width
        self.depth = depth
        self.backbone = backbone
        self.pool = pool
        self.uses_encoding = backbone == "embedding"
        # The embedding backbone: the segmenter it was fitted on (set by fit / load / set_classifier).
        self.model_id: str | None = None
        self.encoder_id: str | None = None
        self.channels: int | None = None
        self._bound_model_ids: set[str] = set()
        self.model: Any = None
        self.history: list[dict[str, float]] = []
        self.train_info: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = f"fitted on {self.train_info.get('n_train', '?')} images" if self.model is not None else "not fitted"
        return f"CAMBoxPrompter(cam={self.cam!r}, omega={self.omega}, backbone={self.backbone!r}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving)."""
        return {
            "cam": self.cam,
            "omega": self.omega,
            "presence_threshold": self.presence_threshold,
            "max_boxes": self.max_boxes,
            "min_area_fraction": self.min_area_fraction,
            "input_size": self.input_size,
            "width": self.width,
            "depth": self.depth,
            "backbone": self.backbone,
            "pool": self.pool,
        }

    # ------------------------------------------------------------------ training

    def fit(
        self,
        samples: Sequence[Any],
        *,
        segmenter: Any = None,
        val: Sequence[Any] | None = None,
        epochs: int = 40,
        batch_size: int = 16,
        lr: float = 1e-3,
        alpha: float | None = None,
        gamma: float = 2.0,
        shift: float = 0.1,
        intensity: float = 0.2,
        flip: bool = False,
        seed: int = 0,
        progress: bool = False,
    ) -> CAMBoxPrompter:
        """Train the presence classifier on ``samples`` (label: the mask is non-empty).

        Args:
            samples: Items with ``load() -> (image, mask)`` (``MaskFolder`` samples) or
                ``(image, mask)`` pairs. Include images with empty masks: they are the
                negatives (BUSI's "normal" images); with only positives the classifier
                learns nothing useful.
            segmenter: The ``"embedding"`` backbone: the SAM-family segmenter whose
                embedding the classifier reads (required; wrap it in a
                ``CachedSegmenter`` to reuse encodings). Not used by ``"cnn"``.
            val: Optional validation samples. With them, the weights of the epoch with
                the lowest validation loss are kept (otherwise the last epoch's), and
                ``history`` records validation loss and accuracy.
            epochs: Passes over the training set.
            batch_size: Images per Adam step.
            lr: Adam learning rate.
            alpha: Focal-loss weight of the positive class in ``[0, 1]`` (negatives get
                ``1 - alpha``); None: no class weighting.
            gamma: Focal-loss focusing parameter (0: plain binary cross-entropy).
            shift: Random shift of each training image, as a fraction of its side
                (replicate padding); 0 disables it. The ``"embedding"`` backbone shifts
                the embedding map the same way.
            intensity: Strength of the random gamma / contrast / brightness change; 0
                disables it. Image-only: not applied to the ``"embedding"`` backbone.
            flip: Random horizontal flips (off by default: left and right are not
                interchangeable in many medical images). Image-only: not applied to
                the ``"embedding"`` backbone (a mirrored embedding is not the
                embedding of the mirrored image).
            seed: Seed of the initialisation, the batch order and the augmentation
                (the global torch RNG state is left untouched).
            progress: Show a progress bar.

        Returns:
            self.
        """
        import torch
        from tqdm.auto import tqdm

        if hasattr(samples, "encode") and hasattr(samples, "model_id"):
            raise TypeError(
                f"samples: got a segmenter ({type(samples).__name__}); the signature is fit(samples, *, segmenter=..., ...)"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        if alpha is not None:
            check_probability(alpha, name="alpha")
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) or gamma < 0:
            raise ValueError(f"gamma: expected a number >= 0, got {gamma!r}")
        if not isinstance(shift, (int, float)) or isinstance(shift, bool) or not 0 <= shift < 0.5:
            raise ValueError(f"shift: expected a number in [0, 0.5), got {shift!r}")
        if not isinstance(intensity, (int, float)) or isinstance(intensity, bool) or not 0 <= intensity <= 1:
            raise ValueError(f"intensity: expected a number in [0, 1], got {intensity!r}")
        if samples is None or len(samples) == 0:
            raise ValueError("samples: expected at least one training sample, got none")

        embedding = self.backbone == "embedding"
        if embedding:
            if segmenter is None or not hasattr(segmenter, "encode"):
                raise TypeError(
                    "segmenter: CAMBoxPrompter(backbone='embedding').fit needs segmenter=<the SAM-family segmenter "
                    f"whose embedding it reads>, got {type(segmenter).__name__}"
                )
        start = time.perf_counter()
        inputs = {"backbone": self.backbone, "input_size": self.input_size, "pool": self.pool, "segmenter": segmenter}
        x_np, y_np = classifier_arrays(samples, name="samples", **inputs)
        if y_np.min() == y_np.max():
            kind = "non-empty" if y_np[0] else "empty"
            raise ValueError(
                f"samples: expected images with and without the target, got {len(y_np)} images, all with {kind} "
                "masks; add images whose mask is empty (or non-empty)"
            )
        x_train, y_train = torch.from_numpy(x_np), torch.from_numpy(y_np)
        x_val = y_val = None
        if val is not None and len(val):
            xv, yv = classifier_arrays(val, name="val", **inputs)
            x_val, y_val = torch.from_numpy(xv), torch.from_numpy(yv)
        if embedding:  # image-only augmentations
            intensity, flip = 0.0, False

        loss_fn = focal_loss(alpha, gamma)
        rng = np.random.default_rng(seed)
        history: list[dict[str, float]] = []
        best: tuple[float, int, dict[str, Any]] | None = None
        model = seeded_classifier(
            self.width, self.depth, seed, backbone=self.backbone, channels=int(x_train.shape[1]) if embedding else None
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        n = len(y_train)
        for epoch in tqdm(range(1, epochs + 1), desc="fit CAM classifier", unit="epoch", disable=not progress):
            losses, correct = [], 0
            for index in index_batches(rng.permutation(n), batch_size):
                step = classifier_step(
                    model,
                    optimizer,
                    x_train,
                    y_train,
                    index,
                    rng,
                    loss_fn=loss_fn,
                    shift=shift,
                    intensity=intensity,
                    flip=flip,
                )
                if step is not None:
                    losses.append(step[0] * len(index))
                    correct += step[1]
            record = {"epoch": epoch, "loss": float(np.sum(losses) / n), "accuracy": correct / n}
            if x_val is not None:
                val_loss, val_accuracy = classifier_scores(model, x_val, y_val, loss_fn)
                record["val_loss"] = val_loss
                record["val_accuracy"] = val_accuracy
                if best is None or val_loss < best[0]:
                    best = (val_loss, epoch, {k: v.clone() for k, v in model.state_dict().items()})
            history.append(record)
        if best is not None:
            model.load_state_dict(best[2])
        model.eval()
        self.set_classifier(model, segmenter=segmenter if embedding else None)
        self.history = history
        self.train_info = {
            "n_train": int(n),
            "n_positive": int(y_np.sum()),
            "n_val": 0 if y_val is None else int(len(y_val)),
            "epochs": epochs,
            "best_epoch": epochs if best is None else best[1],
            "batch_size": batch_size,
            "lr": lr,
            "alpha": alpha,
            "gamma": gamma,
            "shift": shift,
            "intensity": intensity,
            "flip": flip,
            "seed": seed,
            "seconds": round(time.perf_counter() - start, 2),
        }
        return self

    def set_classifier(self, model: Any, *, segmenter: Any = None) -> None:
        """Use ``model`` (a classifier of :func:`seeded_classifier` for this backbone) as the prompter's classifier.

        What ``fit`` does at its end, public for training loops that train the classifier themselves
        (SAM-Mix). The ``"embedding"`` backbone also records which segmenter's embedding it reads:
        ``segmenter`` is required there.
        """
        if self.backbone == "embedding":
            if segmenter is None:
                raise TypeError("segmenter: the embedding backbone needs the segmenter whose embedding the classifier reads")
            first = model.features[0][0]
            self.channels = int(first.in_channels)
            self.model_id = getattr(segmenter, "model_id", None)
            self.encoder_id = encoder_id_of(segmenter)
            self._bound_model_ids = set()
        self.model = model

    # ------------------------------------------------------------------ inference

    def _check_fitted(self) -> None:
        if self.model is None:
            raise RuntimeError("CAMBoxPrompter is not fitted: call fit(samples) or load(path) first")

    def bind_segmenter(self, segmenter: Any) -> None:
        """The ``"embedding"`` backbone: check once that ``segmenter`` computes the embedding the classifier was
        fitted on (a :class:`~medsamkit.Pipeline` calls this when it is built). Nothing to check for ``"cnn"``.

        Raises:
            ValueError: If the segmenter's image encoder differs from the fitted one.
        """
        if self.backbone != "embedding":
            return
        self._check_fitted()
        bind_checked(
            segmenter,
            encoder_id=self.encoder_id,
            model_id=self.model_id,
            bound_model_ids=self._bound_model_ids,
            what="CAM classifier (backbone='embedding')",
            refit="medsamkit fit-prompter ... --prompter cam-box",
        )

    def _tensor(self, image: Any, encoding: ImageEncoding | None = None) -> Any:
        """The classifier's input: the resized image (``"cnn"``) or the pooled embedding of ``encoding``."""
        import torch

        if self.backbone == "cnn":
            return torch.from_numpy(_to_input(image, self.input_size))[None, None]
        if encoding is None:
            raise ValueError(
                "encoding: CAMBoxPrompter(backbone='embedding') reads the segmenter's embedding; use it inside a "
                "Pipeline or pass encoding=segmenter.encode(image)"
            )
        check_encoding_model(encoding, self.model_id, self._bound_model_ids, "CAM classifier")
        return _pooled_embedding(encoding.features, self.pool)

    def presence(self, image: np.ndarray, *, encoding: ImageEncoding | None = None) -> float:
        """The classifier's probability that ``image`` contains the target (``"embedding"``: ``encoding`` required)."""
        import torch

        self._check_fitted()
        with torch.no_grad():
            return float(torch.sigmoid(self.model(self._tensor(image, encoding)))[0, 0])

    def cam_map(self, image: np.ndarray, *, encoding: ImageEncoding | None = None) -> np.ndarray:
        """``(H, W)`` float32 class activation map in ``[0, 1]`` for the presence logit (at any probability).

        Gradient-based CAMs need autograd: it is switched on here, so the prompter also
        works inside ``torch.no_grad()`` or ``torch.inference_mode()`` (e.g. as the
        validation prompter of :func:`medsamkit.finetune`). The ``"embedding"`` backbone
        needs ``encoding``; its CAM over the embedding's square is cropped to the image
        part (the rest is the encoder's padding) before it is resized to the image.
        """
        import cv2
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self._check_fitted()
        image = as_image(image)
        h, w = image.shape[:2]
        explainer = self._cam_class(model=self.model, target_layers=[self.model.features[-1]])
        try:
            with torch.inference_mode(False), torch.enable_grad():
                # a copy: an embedding made under inference_mode (a validation pass) is an inference
                # tensor, which autograd refuses to record
                tensor = self._tensor(image, encoding).clone()
                cam = explainer(input_tensor=tensor, targets=[ClassifierOutputTarget(0)])[0]
        finally:
            explainer.activations_and_grads.release()  # remove the hooks from the model
            self.model.zero_grad(set_to_none=True)
        if encoding is not None and self.backbone == "embedding":
            side = tensor.shape[-1] / max(encoding.input_size_hw)  # cells per pixel of the resized, padded input
            cam = np.asarray(cam)[
                : max(1, round(encoding.input_size_hw[0] * side)), : max(1, round(encoding.input_size_hw[1] * side))
            ]
        cam = cv2.resize(np.asarray(cam, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        return np.clip(np.nan_to_num(cam, nan=0.0), 0.0, 1.0)

    def boxes_from_cam(self, cam: np.ndarray) -> np.ndarray:
        """``(N, 4)`` float32 boxes of the regions where ``cam >= omega * max(cam)``, largest first."""
        cam = np.asarray(cam, dtype=np.float32)
        if cam.ndim != 2:
            raise ValueError(f"cam: expected an (H, W) map, got shape {cam.shape}")
        peak = float(cam.max()) if cam.size else 0.0
        if not peak > 1e-6:
            return np.zeros((0, 4), dtype=np.float32)
        h, w = cam.shape
        region = cam >= self.omega * peak
        min_area = max(1, int(self.min_area_fraction * h * w))
        return component_boxes_xyxy(region, min_area=min_area, keep_largest=True)[: self.max_boxes]

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Box prompts for ``image`` (``target`` is not read); none when the classifier says "absent".

        The ``"embedding"`` backbone needs ``encoding`` (the pipeline passes it)."""
        self._check_fitted()
        image = as_image(image)
        if self.presence(image, encoding=encoding) < self.presence_threshold:
            return Prompts.empty()
        boxes = self.boxes_from_cam(self.cam_map(image, encoding=encoding))
        return Prompts(box_xyxy=boxes) if len(boxes) else Prompts.empty()

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save the classifier weights, parameters, history and training info (``.pt``), atomically."""
        import torch

        from ..data import atomic_write_bytes

        self._check_fitted()
        buffer = io.BytesIO()
        meta: dict[str, Any] = {"params": self.params(), "history": self.history, "train_info": self.train_info}
        if self.backbone == "embedding":
            meta.update(model_id=self.model_id, encoder_id=self.encoder_id, channels=self.channels)
        torch.save({"model": self.model.state_dict(), "meta": json.dumps(meta)}, buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> CAMBoxPrompter:
        """Load a prompter saved with :meth:`save`.

        Args:
            path: The ``.pt`` file.
            **overrides: New values of the inference parameters ``cam``, ``omega``,
                ``presence_threshold``, ``max_boxes``, ``min_area_fraction``;
                ``input_size``, ``width``, ``depth``, ``backbone`` and ``pool`` must
                equal the saved ones (they fix the network). Files saved before
                ``backbone`` existed load as ``"cnn"``.
        """
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a saved CAMBoxPrompter .pt, got missing file {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(data["meta"])
            state = data["model"]
            params = dict(meta["params"])
        except Exception as exc:
            raise ValueError(f"path: {path} is not a saved CAMBoxPrompter ({exc})") from exc
        for key, value in overrides.items():
            if key in _OVERRIDABLE:
                params[key] = value
            elif key in params:
                if value != params[key]:
                    raise ValueError(f"{key}: the saved prompter {path} has {params[key]!r}, got {value!r}")
            else:
                raise TypeError(f"unexpected parameter {key!r}; expected some of {sorted(params)}")
        prompter = cls(**params)
        try:
            if prompter.backbone == "embedding":
                model = _build_embedding_classifier(int(meta["channels"]), prompter.width, prompter.depth)
            else:
                model = _build_classifier(prompter.width, prompter.depth)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"path: {path} does not hold CAMBoxPrompter weights ({exc})") from exc
        model.eval()
        prompter.model = model
        if prompter.backbone == "embedding":
            prompter.model_id, prompter.encoder_id = meta.get("model_id"), meta.get("encoder_id")
            prompter.channels = int(meta["channels"])
        prompter.history = meta.get("history", [])
        prompter.train_info = meta.get("train_info", {})
        return prompter

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._geometry import component_boxes_xyxy, grow_boxes_xyxy, target_at_logits
from .._protocols import Segmenter
from .._registry import register_component
from .._types import ImageEncoding, Prompts
from .._validation import check_probability

__all__ = ["EmbeddingHeadPrompter"]


def _embedding(features: Any) -> Any:
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


def _build_head(channels: int, hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
        nn.GroupNorm(8 if hidden % 8 == 0 else 1, hidden),
        nn.GELU(),
        nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
        nn.GELU(),
        nn.Conv2d(hidden, 1, kernel_size=1),
    )


@register_component("prompter", "embedding-head", fitted=True)
class EmbeddingHeadPrompter:
    """Boxes from a small head trained on the segmenter's image embedding.

    ``fit`` encodes each training image once with the segmenter and trains a
    three-layer convolutional head (about 0.2 M parameters for a 256-channel
    embedding) to predict the reference mask at the embedding's resolution
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
        hidden: int = 64,
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
        self.head: Any = None
        self.model_id: str | None = None
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
        }

    def fit(
        self,
        samples: Sequence[Any],
        *,
        segmenter: Segmenter | None = None,
        val: Sequence[Any] | None = None,
        epochs: int = 40,
        lr: float = 1e-3,
        seed: int = 0,
        progress: bool = False,
    ) -> EmbeddingHeadPrompter:
        """Train the head on ``samples`` (items with ``load() -> (image, mask)``).

        Args:
            samples: Training images with masks; empty masks teach "no target here".
            segmenter: Required: the SAM-family segmenter whose embedding the head reads
                (wrap it in a ``CachedSegmenter`` to reuse encodings across studies).
            val: Not read: the head trains for ``epochs`` without validation
                (accepted so that every learned provider is fitted the same way, see
                :class:`~medsamkit.FittablePrompter`).
            epochs: Passes over the training images (each pass costs milliseconds per
                image: the encodings are computed once).
            lr: AdamW learning rate.
            seed: Seed of the initialisation and the order.
            progress: Show a progress bar.

        Returns:
            self.
        """
        import torch
        from tqdm.auto import tqdm

        if hasattr(samples, "encode") and hasattr(samples, "model_id"):
            raise TypeError(
                f"samples: got a segmenter ({type(samples).__name__}); the signature is "
                "fit(samples, *, segmenter=..., ...)"
            )
        if segmenter is None:
            raise TypeError("segmenter: EmbeddingHeadPrompter.fit needs segmenter=<the segmenter whose embedding it reads>")
        if len(samples) == 0:
            raise ValueError("samples: expected at least one training sample, got none")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
        image_size = getattr(segmenter, "image_size", None)
        if not isinstance(image_size, int):
            raise TypeError(f"segmenter: expected a SAM-family segmenter with image_size, got {type(segmenter).__name__}")
        data = []
        for sample in tqdm(samples, desc="encode", unit="img", disable=not progress):
            image, mask = sample.load()
            enc = segmenter.encode(image)
            emb = _embedding(enc.features).detach().float().cpu().clone()  # a normal tensor, even from inference mode
            target = target_at_logits(mask, enc.input_size_hw, image_size, emb.shape[-1])
            data.append((emb, target[None]))
        torch.manual_seed(seed)
        head = _build_head(data[0][0].shape[1], self.hidden)
        optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
        bce = torch.nn.BCEWithLogitsLoss()
        rng = np.random.default_rng(seed)
        self.history = []
        for epoch in tqdm(range(1, epochs + 1), desc="fit head", unit="epoch", disable=not progress):
            head.train()
            losses = []
            for index in rng.permutation(len(data)):
                emb, target = data[index]
                logits = head(emb)
                prob = torch.sigmoid(logits)
                dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
                loss = bce(logits, target) + dice
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            self.history.append({"epoch": epoch, "loss": float(np.mean(losses))})
        head.eval()
        self.head = head
        self.model_id = segmenter.model_id
        self.image_size = image_size
        return self

    def _check_fitted(self) -> None:
        if self.head is None:
            raise RuntimeError("EmbeddingHeadPrompter is not fitted: call fit(samples, segmenter=...) or load(path) first")

    def probability_map(self, encoding: ImageEncoding) -> np.ndarray:
        """``(H, W)`` float32 coarse foreground probability at the input resolution."""
        import torch
        import torch.nn.functional as F

        self._check_fitted()
        if not isinstance(encoding, ImageEncoding):
            raise TypeError(f"encoding: expected an ImageEncoding, got {type(encoding).__name__}")
        if encoding.model_id != self.model_id:
            raise ValueError(
                f"encoding: the head was fitted on embeddings of {self.model_id!r}, got an encoding of "
                f"{encoding.model_id!r}; use the same segmenter"
            )
        emb = _embedding(encoding.features).detach().float().cpu()
        with torch.inference_mode():
            logits = self.head(emb)
        side = logits.shape[-1]
        scale = side / self.image_size
        h = max(1, round(encoding.input_size_hw[0] * scale))
        w = max(1, round(encoding.input_size_hw[1] * scale))
        up = F.interpolate(logits[..., :h, :w], size=tuple(encoding.size_hw), mode="bilinear", align_corners=False)
        return torch.sigmoid(up[0, 0]).numpy()

    def __call__(
        self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None
    ) -> Prompts:
        """Boxes around the regions of the coarse map (``encoding`` from the pipeline is required)."""
        if encoding is None:
            raise ValueError(
                "encoding: EmbeddingHeadPrompter reads the segmenter's embedding; use it inside a Pipeline "
                "or pass encoding=segmenter.encode(image)"
            )
        prob = self.probability_map(encoding)
        region = prob > self.threshold
        h, w = region.shape
        min_area = max(1, int(self.min_area_fraction * h * w))
        boxes = component_boxes_xyxy(region, min_area=min_area, keep_largest=False)[: self.max_boxes]
        if len(boxes) and self.margin_fraction:
            size = boxes[:, 2:] - boxes[:, :2] + 1
            grown = boxes.copy()
            grown[:, :2] -= self.margin_fraction * size
            grown[:, 2:] += self.margin_fraction * size
            boxes = grow_boxes_xyxy(grown, 0, (h, w))
        return Prompts(box_xyxy=boxes)

    def save(self, path: str | Path) -> Path:
        """Save the head, its parameters and the segmenter's model id (``.pt``), atomically."""
        import torch

        from ..data import atomic_write_bytes

        self._check_fitted()
        buffer = io.BytesIO()
        torch.save(
            {
                "head": self.head.state_dict(),
                "meta": json.dumps(
                    {"params": self.params(), "model_id": self.model_id, "image_size": self.image_size, "history": self.history}
                ),
            },
            buffer,
        )
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> EmbeddingHeadPrompter:
        """Load a prompter saved with :meth:`save`.

        Args:
            path: The ``.pt`` file.
            **overrides: Parameters (:meth:`params`) as a config states them: each must
                equal the saved value.

        Raises:
            TypeError: For a name that is not a parameter.
            ValueError: For a value that contradicts the saved one.
        """
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a saved EmbeddingHeadPrompter .pt, got missing file {path}")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            meta = json.loads(data["meta"])
            state = data["head"]
        except Exception as exc:
            raise ValueError(f"path: {path} is not a saved EmbeddingHeadPrompter ({exc})") from exc
        params = meta["params"]
        unknown = sorted(set(overrides) - set(params))
        if unknown:  # TypeError, like an unexpected keyword argument
            raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(params)}")
        for key, value in overrides.items():
            if params[key] != value:
                raise ValueError(f"{key}: the saved prompter {path} has {params[key]!r}, the config {value!r}")
        prompter = cls(**params)
        head = _build_head(state["0.weight"].shape[1], prompter.hidden)
        head.load_state_dict(state)
        head.eval()
        prompter.head = head
        prompter.model_id = meta["model_id"]
        prompter.image_size = meta["image_size"]
        prompter.history = meta.get("history", [])
        return prompter

"""Extension points: the written contracts between medsamkit's parts.

Anything with these methods plugs in; nothing has to inherit from a medsamkit class.

* :class:`PromptProvider` finds where to segment; :class:`FittablePrompter` is one
  that learns it from image/mask samples (and saves and loads what it learned).
* :class:`Segmenter` encodes an image once and decodes many prompts;
  :class:`TrainableSegmenter` is one that fine-tuning can train (the SAM family);
  :class:`LowResDecoder` is one whose decoder outputs an embedding cache may keep.
* :func:`prompts_for` is the one way every loop asks a provider for prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ._types import ImageEncoding, PromptMasks, Prompts

if TYPE_CHECKING:  # pragma: no cover
    from typing_extensions import Self

__all__ = [
    "FittablePrompter",
    "LowResDecoder",
    "ParallelEncoder",
    "PromptProvider",
    "Segmenter",
    "TrainableSegmenter",
    "prompts_for",
]


@runtime_checkable
class PromptProvider(Protocol):
    """Finds where to segment: turns an image into :class:`Prompts`.

    Attributes:
        requires_target: True for providers that read the reference mask (oracle
            and perturbed boxes); :func:`prompts_for` passes ``target`` to them and
            they raise ``ValueError`` when it is missing.
        uses_encoding: True for providers that read the segmenter's image
            embedding (``EmbeddingHeadPrompter``); :func:`prompts_for` passes the
            ``encoding`` to them (a :class:`Pipeline` encodes the image first, once).
            Providers without the attribute are taken not to.
    """

    @property
    def requires_target(self) -> bool: ...

    @property
    def uses_encoding(self) -> bool: ...

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """Return the prompts for ``image`` (``(H, W)`` or ``(H, W, C)``)."""
        ...


@runtime_checkable
class FittablePrompter(PromptProvider, Protocol):
    """A prompt provider learned from image/mask samples: the one signature of every learned provider.

    ``fit`` trains on ``samples`` (items with ``load() -> (image, mask)``, e.g. the
    samples of a :class:`~medsamkit.MaskFolder`), optionally validated on ``val``,
    with a progress bar when ``progress`` (default False); other settings are
    keywords of the provider (``epochs``, ``seed``, ...; ``EmbeddingHeadPrompter``
    needs ``segmenter=``). ``save`` writes what was learned to one file
    (``state_suffix``); ``load`` rebuilds the provider from it, with ``overrides``
    for the parameters that may change after fitting (the others must equal the
    saved ones). ``params`` are the constructor arguments (for pipeline configs).
    """

    state_suffix: str

    def fit(
        self, samples: Sequence[Any], *, val: Sequence[Any] | None = None, progress: bool = False, **settings: Any
    ) -> Self: ...

    def save(self, path: str | Path) -> Path: ...

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Self: ...

    def params(self) -> dict[str, Any]: ...


@runtime_checkable
class Segmenter(Protocol):
    """A promptable segmentation model: encode an image once, decode many prompts.

    Attributes:
        model_id: Identifies weights and preprocessing (checks encodings; the
            embedding cache's key).
    """

    @property
    def model_id(self) -> str: ...

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """Run the image encoder once on ``image`` (``(H, W)`` or ``(H, W, C)``)."""
        ...

    def decode(self, encoding: ImageEncoding, prompts: Prompts) -> PromptMasks:
        """Decode all ``prompts`` against ``encoding`` in one batched call."""
        ...


@runtime_checkable
class LowResDecoder(Segmenter, Protocol):
    """A segmenter whose ``decode`` splits into an expensive and a cheap half.

    :class:`~medsamkit.CachedSegmenter` keeps the expensive half's output (the
    decoder's low-resolution logits) keyed by ``decoder_digest()``; the SAM family
    offers it (``medsamkit.segmenters.LowResDecoding``).
    """

    def decode_low_res(self, encoding: ImageEncoding, prompts: Prompts) -> tuple[Any, np.ndarray]:
        """``(logits (N, 1, L, L) float32 CPU tensor, scores (N,))`` for ``N >= 1`` prompts."""
        ...

    def finish_low_res(self, encoding: ImageEncoding, logits: Any, scores: np.ndarray) -> PromptMasks:
        """Crop, upsample and squash low-resolution logits: what ``decode`` would return."""
        ...

    def decoder_digest(self) -> str:
        """A digest of the weights that turn an encoding and prompts into logits."""
        ...


@runtime_checkable
class EncoderIdentified(Segmenter, Protocol):
    """A segmenter that names its image encoder apart from the rest of the model.

    Providers fitted on the segmenter's embeddings (the embedding head, the decoder
    localiser, the CAM classifier on the embedding) bind to ``encoder_id``: equal ids
    mean the same image embeddings, so a checkpoint whose mask decoder was fine-tuned
    keeps the id and a fitted provider keeps working with it. Segmenters without it are
    compared by ``model_id``.
    """

    @property
    def encoder_id(self) -> str:
        """The image encoder's weights and numerics, e.g. ``litemedsam-encoder:<digest>:openvino-bf16``."""
        ...


@runtime_checkable
class ParallelEncoder(Segmenter, Protocol):
    """A segmenter whose ``encode`` may run in several threads at once, beside ``decode``.

    ``segment_volume(..., overlap=True)`` encodes the next slices in background threads
    while the current one is decoded; with a segmenter offering this capability it uses
    as many threads as the context yields (LiteMedSAM's OpenVINO encoder: two streams),
    otherwise one.
    """

    def parallel_encoding(self) -> AbstractContextManager[int]:
        """A context within which ``encode`` may be called from up to the yielded number of
        threads at once, with the same results as one call after the other."""
        ...


@runtime_checkable
class TrainableSegmenter(Segmenter, Protocol):
    """What fine-tuning (``finetune``, ``fit_sammix``, ``fit_sam_pp``, LoRA) needs of a segmenter.

    Attributes:
        model: The ``torch.nn.Module`` with ``image_encoder``, ``prompt_encoder``
            and ``mask_decoder`` (the SAM layout).
        device: Its torch device.
        image_size: Side of the square model input in pixels.
        max_prompts_per_batch: Prompts decoded together in one decoder call.
    """

    model: Any
    device: Any
    max_prompts_per_batch: int

    @property
    def image_size(self) -> int: ...

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """``(padded (3, S, S) float32 model input, resized (h, w) inside it)``."""
        ...

    def decode_logits(self, features: Any, boxes: Any, points: Any) -> tuple[Any, Any]:
        """Differentiable low-resolution logits ``(N, 1, L, L)`` and predicted IoU ``(N, 1)``."""
        ...

    def postprocess_logits(self, logits: Any, encoding: ImageEncoding) -> Any:
        """Low-resolution logits brought to the image: ``(N, 1, H, W)``."""
        ...

    def params(self) -> dict[str, Any]:
        """Constructor arguments: ``type(self)(**params)`` rebuilds the segmenter (with ``checkpoint=``)."""
        ...


def prompts_for(
    prompter: PromptProvider,
    image: np.ndarray,
    *,
    target: np.ndarray | None = None,
    encoding: ImageEncoding | None = None,
) -> Prompts:
    """Ask ``prompter`` for the prompts of ``image``: the one place that knows the calling convention.

    ``target`` goes to providers with ``requires_target``, ``encoding`` to providers
    with ``uses_encoding`` (a provider without that attribute gets no encoding, so
    providers written before it existed keep working).

    Raises:
        TypeError: If the provider returns something other than :class:`Prompts`.
    """
    kwargs: dict[str, Any] = {}
    if prompter.requires_target:
        kwargs["target"] = target
    if getattr(prompter, "uses_encoding", False):
        kwargs["encoding"] = encoding
    prompts = prompter(image, **kwargs)
    if not isinstance(prompts, Prompts):
        raise TypeError(f"prompter: expected it to return Prompts, got {type(prompts).__name__}")
    return prompts

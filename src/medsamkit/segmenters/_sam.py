"""SAM and HQ-SAM segmenters (``segment-anything`` and ``segment-anything-hq`` packages).

Both reproduce ``SamPredictor`` of their package: the same image preprocessing,
prompt scaling, mask decoding and upsampling, so that for a ``uint8`` RGB image
they give the masks the upstream predictor gives. The packages and torch are
imported when a model is first built, never by ``import medsamkit``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._oneshot import OneShotMixin
from .._paths import file_digest
from .._registry import register_component
from .._types import ImageEncoding, PromptMasks, Prompts
from .._validation import as_image
from ._common import LowResDecoding, check_device, decode_prompts, longest_side_size_hw
from ._fast import FastEncoderMixin

__all__ = [
    "HQSAM",
    "HQSAM_CHECKPOINT_NAMES",
    "SAM",
    "SAM_CHECKPOINT_DIR_ENV",
    "SAM_CHECKPOINT_NAMES",
    "SAM_MODEL_TYPES",
    "HQSAMFeatures",
    "build_hqsam_model",
    "build_sam_model",
    "sam_checkpoint_path",
    "sam_image_uint8",
]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
"""SAM image encoder sizes (ViT-B, ViT-L, ViT-H), for both SAM and HQ-SAM."""

SAM_CHECKPOINT_DIR_ENV = "MEDSAMKIT_SAM_CHECKPOINT_DIR"
"""Environment variable naming a folder with the official checkpoint files."""

SAM_CHECKPOINT_NAMES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
"""Official SAM checkpoint file names by model type."""

HQSAM_CHECKPOINT_NAMES = {
    "vit_b": "sam_hq_vit_b.pth",
    "vit_l": "sam_hq_vit_l.pth",
    "vit_h": "sam_hq_vit_h.pth",
}
"""Official HQ-SAM checkpoint file names by model type."""

_EMBED_DIMS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_EMBED_DIMS_INV = {t: d for d, t in _EMBED_DIMS.items()}
_PATCH_EMBED_KEY = "image_encoder.patch_embed.proj.weight"
_HQ_KEY_PREFIX = "mask_decoder.hf_token"
_BLOCK_ELEMENTS = 1 << 16  # elements (float64) per block when converting a big image to uint8


class _Family(NamedTuple):
    label: str  # human name in messages
    prefix: str  # model_id / registry prefix
    package: str  # pip distribution
    module: str  # import name
    names: dict[str, str]  # checkpoint file names
    hq: bool


_SAM = _Family("SAM", "sam", "segment-anything", "segment_anything", SAM_CHECKPOINT_NAMES, False)
_HQ = _Family("HQ-SAM", "hq-sam", "segment-anything-hq", "segment_anything_hq", HQSAM_CHECKPOINT_NAMES, True)


class HQSAMFeatures(NamedTuple):
    """What :meth:`HQSAM.encode` stores in :attr:`ImageEncoding.features`.

    A flat tuple of two tensors, so that it can be cached like any tuple of tensors
    (:class:`HQSAM` accepts any such pair, e.g. a plain tuple read back from a cache).

    Attributes:
        image_embeddings: ``(1, 256, h, w)`` output of the image encoder neck.
        interm_embedding: ``(1, h, w, C)`` output of the first global-attention ViT
            block, the early feature HQ-SAM's decoder reads (the later ones, which
            the decoder ignores, are not kept).
    """

    image_embeddings: Any
    interm_embedding: Any


def _import(family: _Family) -> Any:
    """Import ``segment_anything`` or ``segment_anything_hq`` with a helpful error.

    ``segment_anything_hq`` imports timm through deprecated paths and re-registers
    timm's ``tiny_vit_*`` model names; those warnings are silenced here.
    """
    import importlib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit", category=UserWarning)
            return importlib.import_module(family.module)
    except ImportError as exc:
        if exc.name == "torchvision":
            message = f"{family.label} needs torchvision (imported by {family.module}): pip install torchvision"
            raise ImportError(message) from None
        if exc.name != family.module:
            raise
        raise ImportError(f"{family.label} needs the {family.package} package: pip install medsamkit[sam]") from None


def _check_model_type(model_type: Any) -> str:
    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f"model_type: expected one of {list(SAM_MODEL_TYPES)}, got {model_type!r}")
    return model_type


def sam_checkpoint_path(model_type: str = "vit_b", *, hq: bool = False) -> Path:
    """Where the official checkpoint of ``model_type`` is expected.

    ``$MEDSAMKIT_SAM_CHECKPOINT_DIR/<official file name>``, for example
    ``sam_vit_b_01ec64.pth`` (SAM) or ``sam_hq_vit_b.pth`` (HQ-SAM).

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        hq: HQ-SAM instead of SAM.

    Raises:
        FileNotFoundError: If the environment variable is not set or the file is
            not in that folder.
    """
    family = _HQ if hq else _SAM
    model_type = _check_model_type(model_type)
    name = family.names[model_type]
    folder = os.environ.get(SAM_CHECKPOINT_DIR_ENV)
    how = (
        f"pass checkpoint=PATH (CLI: --checkpoint PATH) or set {SAM_CHECKPOINT_DIR_ENV} "
        f"to the folder holding {name} (see docs/segmenters.md)"
    )
    if not folder:
        raise FileNotFoundError(
            f"checkpoint: {family.label} {model_type} needs the weights file {name}, and none was given "
            f"and {SAM_CHECKPOINT_DIR_ENV} is not set; {how}"
        )
    path = Path(folder).expanduser() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint: expected the {family.label} {model_type} weights {name} in "
            f"{SAM_CHECKPOINT_DIR_ENV}={folder}, but {path} does not exist; {how}"
        )
    return path


def _load_state(path: Path, family: _Family, model_type: str) -> dict[str, Any]:
    """Read a state dict and check it is ``family`` / ``model_type`` before building the model."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint: could not read {path} as a torch state dict ({exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint: expected a {family.label} {model_type} state dict in {path}, got {type(state).__name__}")
    expected = f"{family.label} {model_type} weights"
    patch = state.get(_PATCH_EMBED_KEY)
    if patch is not None and hasattr(patch, "shape"):
        dim = int(patch.shape[0])
        found = _EMBED_DIMS.get(dim)
        if found != model_type:
            hint = (
                f"they look like {found} weights: use model_type={found!r}"
                if found
                else f"which is none of {', '.join(f'{t} ({d})' for d, t in _EMBED_DIMS.items())}"
            )
            raise ValueError(
                f"checkpoint: expected {expected} in {path}, but they do not fit the model: the image encoder "
                f"has embedding size {dim} ({_EMBED_DIMS_INV[model_type]} expected); {hint}"
            )
    is_hq = any(str(key).startswith(_HQ_KEY_PREFIX) for key in state)
    if is_hq != family.hq:
        other = "HQ-SAM (use HQSAM / hq-sam-*)" if is_hq else "plain SAM (use SAM / sam-*)"
        raise ValueError(f"checkpoint: expected {expected} in {path}, but they are {other} weights")
    return state


def _build(family: _Family, model_type: str, checkpoint: str | Path | None) -> tuple[Any, Path]:
    package = _import(family)
    model_type = _check_model_type(model_type)
    path = sam_checkpoint_path(model_type, hq=family.hq) if checkpoint is None else Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint: expected a {family.label} {model_type} .pth file (official name "
            f"{family.names[model_type]}), got missing path {path}; pass checkpoint=PATH of an existing "
            f"file, or no checkpoint and set {SAM_CHECKPOINT_DIR_ENV} to the folder holding {family.names[model_type]}"
        )
    state = _load_state(path, family, model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = package.sam_model_registry[model_type](checkpoint=None)
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError, KeyError) as exc:
        raise ValueError(
            f"checkpoint: expected {family.label} {model_type} weights in {path}, but they do not fit the model: {str(exc)[:300]}"
        ) from exc
    del state
    # HQ-SAM's builder freezes all but its HQ layers; like SAM's, leave every parameter trainable.
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model.eval(), path


def build_sam_model(model_type: str = "vit_b", checkpoint: str | Path | None = None) -> Any:
    """Build SAM (``segment_anything``) of ``model_type`` and load its weights.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        checkpoint: SAM state dict (``.pth``); None reads the official file from
            ``$MEDSAMKIT_SAM_CHECKPOINT_DIR``.

    Returns:
        The ``segment_anything.modeling.Sam`` module in eval mode on the CPU.

    Raises:
        ImportError: If ``segment-anything`` is not installed.
        FileNotFoundError: If the checkpoint is missing (or cannot be located).
        ValueError: If the file is not a SAM state dict of ``model_type``.
    """
    return _build(_SAM, model_type, checkpoint)[0]


def build_hqsam_model(model_type: str = "vit_b", checkpoint: str | Path | None = None) -> Any:
    """Build HQ-SAM (``segment_anything_hq``) of ``model_type`` and load its weights.

    Same arguments and errors as :func:`build_sam_model`; the official file names are
    ``sam_hq_vit_b.pth``, ``sam_hq_vit_l.pth`` and ``sam_hq_vit_h.pth``.
    """
    return _build(_HQ, model_type, checkpoint)[0]


def sam_image_uint8(image: np.ndarray, input_size_hw: tuple[int, int]) -> np.ndarray:
    """The ``(h, w, 3)`` uint8 RGB image SAM's encoder sees, before normalisation and padding.

    ``uint8`` images are used as they are. Any other dtype is min-max scaled per
    image to ``0..255`` and rounded (bool: 0 / 255); this full-size copy is
    ``uint8`` (made in blocks, so a 16-bit radiograph never gets a full-size float
    copy). The result is resized like ``ResizeLongestSide.apply_image`` (PIL
    bilinear) and, for gray images, repeated to three channels after resizing.
    RGBA loses its alpha channel.

    Args:
        image: Validated ``(H, W)`` or ``(H, W, C)`` image, C in 1, 3, 4.
        input_size_hw: Target ``(height, width)``.
    """
    from PIL import Image

    if image.ndim == 3:
        image = image[..., :3] if image.shape[2] >= 3 else image[..., 0]
    image = _to_uint8(image)
    h, w = input_size_hw
    resized = np.array(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))  # type: ignore[attr-defined]
    if resized.ndim == 2:
        resized = np.repeat(resized[..., None], 3, axis=2)
    return resized


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.bool_:
        return image.view(np.uint8) * np.uint8(255)
    lo, hi = float(image.min()), float(image.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(image.shape, dtype=np.uint8)
    row_size = max(1, int(np.prod(image.shape[1:])))
    rows = max(1, _BLOCK_ELEMENTS // row_size)
    for start in range(0, image.shape[0], rows):
        block = np.subtract(image[start : start + rows], lo, dtype=np.float64)
        block *= scale
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = block
    return out


class _FirstIntermediate:
    """HQ-SAM's encoder reduced to ``(embedding, first intermediate embedding)`` for acceleration."""

    @staticmethod
    def wrap(encoder: Any) -> Any:
        import torch

        class FirstIntermediate(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: Any) -> tuple[Any, Any]:
                embeddings, interm = self.inner(x)
                return embeddings, interm[0]

        return FirstIntermediate(encoder)


class _SAMFamily(OneShotMixin, LowResDecoding, FastEncoderMixin):
    """Shared code of :class:`SAM` and :class:`HQSAM` (see :class:`SAM`)."""

    _family: _Family

    def __init__(
        self,
        model_type: str = "vit_b",
        *,
        checkpoint: str | Path | None = None,
        model: Any = None,
        device: str = "cpu",
        multimask: bool | str = True,
        max_prompts_per_batch: int = 32,
        precision: str = "float32",
    ) -> None:
        family = self._family
        self.model_type = _check_model_type(model_type)
        if model is not None and checkpoint is not None:
            raise ValueError("checkpoint: give either checkpoint or model, not both")
        if multimask not in (True, False, "always") or not isinstance(multimask, (bool, str)):
            raise ValueError(f"multimask: expected True, False or 'always', got {multimask!r}")
        if isinstance(max_prompts_per_batch, bool) or not isinstance(max_prompts_per_batch, int) or (max_prompts_per_batch < 1):
            raise ValueError(f"max_prompts_per_batch: expected a positive int, got {max_prompts_per_batch!r}")
        _import(family)  # ImportError with the install hint, also when a module is given
        self.device = check_device(device)
        self._check_precision(precision)
        if model is None:
            model, path = _build(family, self.model_type, checkpoint)
            self._base_id = f"{family.prefix}-{self.model_type}:{file_digest(path)}"
            self.checkpoint: Path | None = path
        else:
            for attribute in ("image_encoder", "prompt_encoder", "mask_decoder", "preprocess", "postprocess_masks"):
                if not hasattr(model, attribute):
                    raise TypeError(
                        f"model: expected a {family.label} Sam module (with image_encoder, prompt_encoder, "
                        f"mask_decoder), got {type(model).__name__} without {attribute}"
                    )
            is_hq = hasattr(model.mask_decoder, "hf_token")
            if is_hq != family.hq:
                other = "an HQ-SAM module (use HQSAM)" if is_hq else "a plain SAM module (use SAM)"
                raise ValueError(f"model: expected a {family.label} module, got {other}")
            self._base_id = f"{family.prefix}-{self.model_type}:module-{id(model):x}"
            self.checkpoint = None
        self.model = model.to(self.device).eval()
        self.multimask = multimask
        self.max_prompts_per_batch = max_prompts_per_batch
        self._init_fast_encoder(precision)

    # -- description -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """Registry name, e.g. ``"sam-vit-b"`` (used by pipeline configs)."""
        return f"{self._family.prefix}-{self.model_type.replace('_', '-')}"

    @property
    def image_size(self) -> int:
        """Side of the square model input (1024 for the official models)."""
        return int(self.model.image_encoder.img_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, device={str(self.device)!r})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs): ``type(self)(**params)`` rebuilds the segmenter.

        A wrapped module cannot be rebuilt from them: ``{"module": model_id, "model_type": ...}``.
        """
        if self.checkpoint is None:
            return {"module": self.model_id, "model_type": self.model_type}
        return {
            "model_type": self.model_type,
            "checkpoint": str(self.checkpoint),
            "device": str(self.device),
            "multimask": self.multimask,
            "max_prompts_per_batch": self.max_prompts_per_batch,
            "precision": self.precision,
        }

    # -- encoding ----------------------------------------------------------------------

    def _input_tensor(self, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        import torch

        input_size_hw = longest_side_size_hw(image.shape[:2], self.image_size)
        rgb = sam_image_uint8(image, input_size_hw)
        x = torch.as_tensor(rgb, device=self.device).permute(2, 0, 1).contiguous()[None]
        return self.model.preprocess(x), input_size_hw

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Turn an image into the padded, normalised ``(3, S, S)`` float32 model input.

        See :func:`sam_image_uint8` for the conversion to uint8 RGB and the resize;
        then ``Sam.preprocess`` subtracts ``pixel_mean``, divides by ``pixel_std``
        and zero-pads at the bottom and right to ``S`` = :attr:`image_size`.

        Returns:
            ``(chw, input_size_hw)``: the model input and the resized size inside it.
        """
        import torch

        image = as_image(image)
        with torch.no_grad():
            x, input_size_hw = self._input_tensor(image)
        return x[0].float().cpu().numpy(), input_size_hw

    def _encode_tensor(self, x: Any) -> Any:
        fast = self._encoder()
        return self.model.image_encoder(x) if fast is None else fast(x)

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """Encode ``image`` once; decode any number of prompts against the result.

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` image (uint8, uint16, float, ...).
        """
        import torch

        image = as_image(image)
        # no_grad rather than inference_mode: the features stay usable by decode_logits under autograd.
        with torch.no_grad():
            x, input_size_hw = self._input_tensor(image)
            features = self._encode_tensor(x)
        return ImageEncoding(
            features=features,
            size_hw=(int(image.shape[0]), int(image.shape[1])),
            input_size_hw=input_size_hw,
            model_id=self.model_id,
        )

    # -- decoding ----------------------------------------------------------------------

    def use_multimask(self, boxes: Any, points: Any) -> bool:
        """Whether the decoder predicts three masks (the best one is kept) for these prompts.

        ``multimask=True``: only for ambiguous prompts, a single point and no box
        (SAM's advice: multimask output for a single click, one mask for boxes or
        several points). ``"always"``: for every prompt. ``False``: never.
        """
        if self.multimask == "always":
            return True
        if self.multimask is False:
            return False
        return boxes is None and points is not None and int(points[0].shape[1]) == 1

    def _mask_decoder(self, features: Any, sparse: Any, dense: Any, multimask_output: bool) -> tuple[Any, Any]:
        model = self.model
        return model.mask_decoder(
            image_embeddings=features,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode_logits(self, features: Any, boxes: Any, points: Any, *, multimask_output: bool | None = None) -> tuple[Any, Any]:
        """Low-resolution logits ``(N, 1, S/4, S/4)`` and IoU scores ``(N, 1)`` (differentiable).

        With multimask output the mask with the highest predicted IoU of the three is
        kept for each prompt (as ``SamPredictor`` users do) and its IoU is the score.
        The logits cover the padded ``S x S`` input (``S`` = :attr:`image_size`);
        :meth:`postprocess_logits` brings them to the image size.

        Args:
            features: ``ImageEncoding.features`` of this segmenter.
            boxes: ``(N, 4)`` boxes in the resized frame (``S`` px long side), or None.
            points: ``(coords (N, P, 2), labels (N, P))`` in the resized frame, or None.
            multimask_output: Override :meth:`use_multimask`.
        """
        import torch

        if multimask_output is None:
            multimask_output = self.use_multimask(boxes, points)
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=None)
        logits, iou = self._mask_decoder(features, sparse, dense, bool(multimask_output))
        if logits.shape[1] > 1:
            best = iou.argmax(dim=1)
            rows = torch.arange(logits.shape[0], device=logits.device)
            logits = logits[rows, best][:, None]
            iou = iou[rows, best][:, None]
        return logits, iou

    def postprocess_logits(self, logits: Any, encoding: ImageEncoding) -> Any:
        """Upsample ``(N, 1, S/4, S/4)`` logits to ``(N, 1, H, W)`` with ``Sam.postprocess_masks``."""
        return self.model.postprocess_masks(logits, encoding.input_size_hw, encoding.size_hw)

    def decode(self, encoding: ImageEncoding, prompts: Prompts) -> PromptMasks:
        """Decode every prompt against one encoding.

        Args:
            encoding: The result of :meth:`encode` for this model.
            prompts: ``N`` prompts in input-image pixels; boxes or points outside the
                image raise ``ValueError``, boxes partly outside are clipped.

        Returns:
            :class:`PromptMasks` with ``(N, H, W)`` probabilities and ``(N,)`` scores.
        """
        return decode_prompts(self, encoding, prompts)


def _builder(class_name: str, model_type: str) -> Any:
    """Registry builder of ``SAM`` / ``HQSAM`` for one model type (names ``sam-vit-b``, ``hq-sam-vit-h``, ...)."""

    def build(*, checkpoint: str | Path | None = None, module: str | None = None, **params: Any) -> Any:
        if module is not None:
            raise ValueError(
                f"segmenter: this config describes a {class_name} wrapping an in-memory module ({module}); "
                "it cannot be rebuilt from the config. Save the weights and pass checkpoint=PATH."
            )
        given = params.pop("model_type", model_type)
        if given != model_type:
            raise ValueError(f"model_type: the segmenter name fixes {model_type!r}, got {given!r}")
        cls = {"SAM": SAM, "HQSAM": HQSAM}[class_name]
        return cls(model_type, checkpoint=checkpoint, **params)

    return build


def _register_family(class_name: str, prefix: str) -> Any:
    """Register a SAM-family class under ``<prefix>-vit-b``, ``-vit-l`` and ``-vit-h``."""

    def decorate(cls: Any) -> Any:
        for model_type in SAM_MODEL_TYPES:
            register_component("segmenter", f"{prefix}-{model_type.replace('_', '-')}", build=_builder(class_name, model_type))(
                cls
            )
        return cls

    return decorate


@_register_family("SAM", "sam")
class SAM(_SAMFamily):
    """Segment Anything (Kirillov et al. 2023) with ``SamPredictor``'s pre- and post-processing.

    Preprocessing: the image becomes uint8 RGB (other dtypes min-max scaled per
    image, gray repeated, see :func:`sam_image_uint8`), is resized so the long side
    is :attr:`image_size` (1024 px) with PIL bilinear, normalised with SAM's
    ``pixel_mean`` / ``pixel_std`` and zero-padded to a square. Prompts are scaled
    like ``ResizeLongestSide.apply_boxes`` / ``apply_coords``; the low-resolution
    logits are upsampled with ``Sam.postprocess_masks`` and passed through a sigmoid.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        checkpoint: Path to the SAM weights. None reads the official file
            (``sam_vit_b_01ec64.pth``, ``sam_vit_l_0b3195.pth``, ``sam_vit_h_4b8939.pth``)
            from the folder in ``$MEDSAMKIT_SAM_CHECKPOINT_DIR``.
        model: An already built ``segment_anything`` ``Sam`` module to wrap instead of
            loading weights (tests, fine-tuning). Mutually exclusive with ``checkpoint``.
        device: Torch device, ``"cpu"`` by default.
        multimask: True: three candidate masks for ambiguous prompts (a single point
            without box), the one with the highest predicted IoU is kept; one mask
            otherwise. ``"always"``: three candidates for every prompt. False: one mask.
        max_prompts_per_batch: Prompts decoded together in one decoder call.
        precision: ``"float32"`` (default): the reference encoder, identical to
            ``SamPredictor``. ``"fast"``: the image encoder in bfloat16 through
            OpenVINO (or an optimised PyTorch copy) on CPUs with native bfloat16, as
            for LiteMedSAM (``docs/performance.md``: 4.8x faster for ViT-B on two
            cores; the first use converts the encoder, 36 s for ViT-B, kept on
            disk). Opt-in because its effect on Dice could not be measured here
            without the official weights; the model id gets the backend's tag.

    Raises:
        ImportError: If ``segment-anything`` is not installed (``pip install medsamkit[sam]``).
        FileNotFoundError: If the checkpoint is missing or cannot be located.
        ValueError: If the checkpoint does not hold SAM weights of ``model_type``.

    Example:
        >>> seg = SAM("vit_b", checkpoint="sam_vit_b_01ec64.pth")
        >>> out = seg.decode(seg.encode(image), Prompts(box_xyxy=[[10, 20, 200, 220]]))
    """

    _family = _SAM


@_register_family("HQSAM", "hq-sam")
class HQSAM(_SAMFamily):
    """HQ-SAM (Ke et al. 2023): SAM with a high-quality output token, same protocol as :class:`SAM`.

    Preprocessing and prompts as :class:`SAM`. The encoder also returns early ViT
    features; :meth:`encode` keeps them next to the image embedding in a
    :class:`HQSAMFeatures`. With multimask output HQ-SAM's own decoder picks the
    SAM mask with the highest predicted IoU and adds the HQ mask to it.

    Args:
        model_type: ``"vit_b"``, ``"vit_l"`` or ``"vit_h"``.
        checkpoint: Path to the HQ-SAM weights. None reads the official file
            (``sam_hq_vit_b.pth``, ``sam_hq_vit_l.pth``, ``sam_hq_vit_h.pth``) from the
            folder in ``$MEDSAMKIT_SAM_CHECKPOINT_DIR``.
        model: An already built ``segment_anything_hq`` ``Sam`` module to wrap.
        device: Torch device.
        multimask: As for :class:`SAM`.
        hq_token_only: Use the HQ mask alone instead of SAM's mask plus the HQ mask
            (``SamPredictor.predict(hq_token_only=...)``, False by default).
        max_prompts_per_batch: Prompts decoded together in one decoder call.
        precision: ``"float32"`` or ``"fast"``, as for :class:`SAM`.
    """

    _family = _HQ

    def __init__(
        self,
        model_type: str = "vit_b",
        *,
        checkpoint: str | Path | None = None,
        model: Any = None,
        device: str = "cpu",
        multimask: bool | str = True,
        hq_token_only: bool = False,
        max_prompts_per_batch: int = 32,
        precision: str = "float32",
    ) -> None:
        if not isinstance(hq_token_only, bool):
            raise TypeError(f"hq_token_only: expected a bool, got {hq_token_only!r}")
        super().__init__(
            model_type,
            checkpoint=checkpoint,
            model=model,
            device=device,
            multimask=multimask,
            max_prompts_per_batch=max_prompts_per_batch,
            precision=precision,
        )
        self.hq_token_only = hq_token_only

    def params(self) -> dict[str, Any]:
        """Constructor arguments (see :meth:`SAM.params`)."""
        params = super().params()
        if "module" not in params:
            params["hq_token_only"] = self.hq_token_only
        return params

    _fast_adapter = staticmethod(lambda encoder: _FirstIntermediate.wrap(encoder))

    def _encode_tensor(self, x: Any) -> HQSAMFeatures:
        fast = self._encoder()
        if fast is not None:
            return HQSAMFeatures(*fast(x))
        embeddings, interm = self.model.image_encoder(x)
        if not interm:
            raise ValueError("model: HQ-SAM's image encoder returned no global-attention features")
        return HQSAMFeatures(embeddings, interm[0])

    def _mask_decoder(self, features: Any, sparse: Any, dense: Any, multimask_output: bool) -> tuple[Any, Any]:
        if not isinstance(features, (tuple, list)) or len(features) != 2:
            raise TypeError(
                f"features: expected HQSAMFeatures (image_embeddings, interm_embedding) from HQSAM.encode, "
                f"got {type(features).__name__}"
            )
        image_embeddings, interm_embedding = features
        model = self.model
        return model.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            hq_token_only=self.hq_token_only,
            interm_embeddings=[interm_embedding],
        )

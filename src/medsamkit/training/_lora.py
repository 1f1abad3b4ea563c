"""LoRA adapters on the image encoder of SAM-family models, with the ``peft`` library (paper 001).

LoRA (Hu et al. 2021) adds a trainable low-rank update ``B @ A`` (rank ``r``, scaled by
``alpha / r``) to chosen linear layers and keeps their weights frozen. Paper 001 puts
rank-8 adapters on the attention ``qkv`` projections of SAM's ViT encoder; the same
``qkv`` layers exist in LiteMedSAM's TinyViT (its three attention stages) and in
HQ-SAM's ViT.

Everything LoRA is peft's: :func:`apply_lora` wraps ``model.image_encoder`` in a
``peft.PeftModel`` (``peft.get_peft_model``), :func:`merge_lora` folds the adapters
into the weights (``merge_and_unload``), :func:`save_lora` / :func:`load_lora` use
``get_peft_model_state_dict`` / ``set_peft_model_state_dict``. peft is imported only
when one of these functions is called (``pip install medsamkit[lora]``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._paths import file_digest
from .._protocols import Segmenter, TrainableSegmenter

__all__ = [
    "LORA_FILE",
    "apply_lora",
    "has_lora",
    "load_lora",
    "lora_settings",
    "merge_lora",
    "read_lora",
    "save_lora",
    "unload_lora",
]

LORA_FILE = "adapters.safetensors"
"""Name of the adapter file in a LoRA fine-tuning run folder."""

_FORMAT = "medsamkit-lora/1"
_DECODER_PREFIX = "mask_decoder."
_ADAPTER = "default"  # peft's adapter name


def import_peft() -> Any:
    """Import peft, or say how to install it."""
    try:
        import peft
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "peft":
            raise  # peft is there but one of its own dependencies is broken: show that error
        raise ImportError("LoRA fine-tuning needs peft: pip install medsamkit[lora]") from None
    return peft


def _check_model(model: Any) -> None:
    for attribute in ("image_encoder", "mask_decoder"):
        if not hasattr(model, attribute):
            raise TypeError(
                "model: expected a SAM-family torch module (LiteMedSAM, SAM or HQ-SAM: .model of the "
                f"segmenter) with image_encoder and mask_decoder, got {type(model).__name__} without {attribute}"
            )


def has_lora(model: Any) -> bool:
    """Whether ``model.image_encoder`` carries peft LoRA adapters (see :func:`apply_lora`)."""
    return isinstance(getattr(getattr(model, "image_encoder", None), "peft_config", None), dict)


def _require_lora(model: Any) -> None:
    _check_model(model)
    if not has_lora(model):
        raise ValueError("model: expected a model with LoRA adapters (apply_lora or load_lora), found none")


def apply_lora(
    model: Any,
    *,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("qkv",),
    train_decoder: bool = False,
) -> Any:
    """Add LoRA adapters to the image encoder of a SAM-family module, in place.

    ``model.image_encoder`` is replaced by ``peft.get_peft_model(image_encoder,
    LoraConfig(...))``: every ``nn.Linear`` whose name ends with one of
    ``target_modules`` gets an adapter (``B`` starts at zero, so the adapted model
    first computes exactly what the original did). Afterwards only the adapter
    weights require gradients, plus the mask decoder's if ``train_decoder``.

    Args:
        model: The torch module of a segmenter (``segmenter.model``), with
            ``image_encoder`` and ``mask_decoder``.
        rank: LoRA rank ``r`` (paper 001: 8).
        alpha: LoRA scaling numerator: the update is ``alpha / rank * B @ A``.
        dropout: Dropout on the adapters' input during training.
        target_modules: Suffixes of the linear layers to adapt (default: the
            attention ``qkv`` projections of ViT / TinyViT).
        train_decoder: Also let the mask decoder's weights train.

    Returns:
        ``model`` itself.

    Raises:
        ImportError: If peft is not installed.
        ValueError: On bad settings, if ``model`` already has adapters, or if no
            layer matches ``target_modules``.
    """
    _check_model(model)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank: expected a positive int, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"alpha: expected a positive number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    targets = list(target_modules)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules: expected non-empty module name suffixes, got {target_modules!r}")
    if has_lora(model):
        raise ValueError("model: already has LoRA adapters; merge_lora or unload_lora them first")
    peft = import_peft()
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(dropout), target_modules=targets)
    try:
        adapted = peft.get_peft_model(model.image_encoder, config)
    except ValueError as exc:
        if "not found" not in str(exc).lower():
            raise
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.image_encoder.named_modules() if type(m).__name__ == "Linear"})
        raise ValueError(
            f"target_modules: no layer of the image encoder matches {targets}; its linear layers are named {linear}"
        ) from None
    adapter_params = {id(p) for p in adapted.parameters() if p.requires_grad}
    model.image_encoder = adapted
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in adapter_params)
    if train_decoder:
        for parameter in model.mask_decoder.parameters():
            parameter.requires_grad_(True)
    return model


def lora_settings(model: Any) -> dict[str, Any]:
    """``{"rank", "alpha", "dropout", "target_modules"}`` of a model's adapters."""
    _require_lora(model)
    config = model.image_encoder.peft_config[_ADAPTER]
    return {
        "rank": int(config.r),
        "alpha": float(config.lora_alpha),
        "dropout": float(config.lora_dropout),
        "target_modules": sorted(config.target_modules),
    }


def merge_lora(model: Any) -> Any:
    """Fold the adapters into the adapted weights and remove peft from ``model`` (in place).

    Uses peft's ``merge_and_unload``: each adapted layer's weight becomes
    ``W + alpha / rank * B @ A``, and ``model.image_encoder`` is the plain encoder
    again, so ``model.state_dict()`` has the keys of the original model (a
    ``model.pth`` that ``LiteMedSAM(checkpoint=...)`` loads, no peft needed).

    Returns:
        ``model`` itself.
    """
    _require_lora(model)
    model.image_encoder = model.image_encoder.merge_and_unload()
    return model


def unload_lora(model: Any) -> Any:
    """Remove the adapters without merging them (peft's ``unload``): the original encoder again."""
    _require_lora(model)
    model.image_encoder = model.image_encoder.unload()
    return model


def save_lora(model: Any, path: str | Path, *, decoder: bool = False, base_model_id: str | None = None) -> Path:
    """Save a model's adapters alone, as safetensors (written atomically).

    The encoder tensors are peft's own adapter state dict
    (``get_peft_model_state_dict``, the keys of peft's ``adapter_model.safetensors``);
    the LoRA settings go into the file's metadata. With ``decoder=True`` the mask
    decoder's weights are stored too (keys ``mask_decoder.*``), for runs that trained
    it: the file then holds everything that differs from the base model.

    Args:
        model: A model with adapters (:func:`apply_lora`).
        path: Target file (``adapters.safetensors``).
        decoder: Also store the mask decoder's weights.
        base_model_id: ``model_id`` of the segmenter the adapters were trained on
            (recorded for :func:`load_lora`'s check).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from safetensors.torch import save

    from ..data import atomic_write_bytes

    _require_lora(model)
    peft = import_peft()
    tensors = {
        key: value.detach().cpu().contiguous() for key, value in peft.get_peft_model_state_dict(model.image_encoder).items()
    }
    if decoder:
        for key, value in model.mask_decoder.state_dict().items():
            tensors[_DECODER_PREFIX + key] = value.detach().cpu().contiguous()
    metadata = {
        "format": _FORMAT,
        "lora": json.dumps(lora_settings(model)),
        "decoder": json.dumps(bool(decoder)),
        "base_model_id": base_model_id or "",
    }
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return path


def _lora_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / LORA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"path: expected a LoRA adapter file ({LORA_FILE}), got missing path {path}")
    return path


def read_lora(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read an adapter file written by :func:`save_lora`.

    Returns:
        ``(tensors, info)``: the tensors by key, and ``{"lora": settings, "decoder":
        bool, "base_model_id": str | None}``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it is not a medsamkit LoRA file.
    """
    from safetensors import safe_open

    path = _lora_path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as exc:
        raise ValueError(f"path: could not read {path} as safetensors ({exc})") from exc
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"path: {path} is not a medsamkit LoRA adapter file (no {_FORMAT!r} metadata)")
    info = {
        "lora": json.loads(metadata["lora"]),
        "decoder": json.loads(metadata.get("decoder", "false")),
        "base_model_id": metadata.get("base_model_id") or None,
    }
    return tensors, info


def base_segmenter(segmenter: Segmenter) -> Any:
    """The segmenter itself, out of wrappers such as a CachedSegmenter (their ``config_component``)."""
    base: Any = segmenter
    while callable(getattr(type(base), "config_component", None)):
        base = base.config_component()
    return base


def _weights_id(model_id: str) -> str:
    """``family:weights`` part of a model id (without a numerics suffix such as ``:openvino-bf16``)."""
    return ":".join(str(model_id).split(":")[:2])


def load_lora(segmenter: TrainableSegmenter, path: str | Path, *, merge: bool = False) -> TrainableSegmenter:
    """A segmenter like ``segmenter`` with saved adapters attached (``segmenter`` is unchanged).

    The segmenter's module is copied, :func:`apply_lora` adds adapters with the saved
    settings and ``peft.set_peft_model_state_dict`` fills them (and the mask decoder,
    if the file holds it). The result is a segmenter of the same kind wrapping that
    module: ``encode`` / ``decode`` run the adapted encoder, so it works in a
    :class:`~medsamkit.Pipeline` and :func:`~medsamkit.evaluation.evaluate` like any
    other. Its ``model_id`` names the base model and the adapter file, so embedding
    caches never mix it up with the base model. A segmenter wrapping a module cannot
    be saved in ``pipeline.json``: to share a fine-tuned model, use the run's merged
    ``model.pth`` (``LiteMedSAM(checkpoint=...)``, no peft needed). A warning is shown
    when the file records another base model (family and weights digest of ``model_id``).

    Args:
        segmenter: A SAM-family segmenter (LiteMedSAM, SAM, HQSAM, or one of them in a
            ``CachedSegmenter``), normally the one the adapters were trained on.
        path: An ``adapters.safetensors`` file (or a run folder holding one).
        merge: Merge the adapters into the weights right away (:func:`merge_lora`):
            the same outputs up to float rounding, a little faster, no peft layers.

    Returns:
        The new segmenter.

    Raises:
        ImportError: If peft is not installed.
        FileNotFoundError / ValueError: For a missing or foreign file, or adapters
            that do not fit the segmenter's encoder.
    """
    import warnings

    tensors, info = read_lora(path)
    base = base_segmenter(segmenter)
    if not hasattr(base, "model") or not callable(getattr(base, "params", None)):
        raise TypeError(f"segmenter: expected a SAM-family segmenter with a torch model, got {type(segmenter).__name__}")
    _check_model(base.model)
    trained_on = info["base_model_id"]
    if trained_on and _weights_id(trained_on) != _weights_id(base.model_id):
        warnings.warn(
            f"load_lora: the adapters were trained on {trained_on!r}, not on this segmenter's model "
            f"{base.model_id!r}; they are attached anyway",
            UserWarning,
            stacklevel=2,
        )
    peft = import_peft()
    settings = info["lora"]
    model = copy.deepcopy(base.model)
    if has_lora(model):
        raise ValueError("segmenter: its model already has LoRA adapters; load them onto the base segmenter")
    apply_lora(
        model,
        rank=settings["rank"],
        alpha=settings["alpha"],
        dropout=settings["dropout"],
        target_modules=settings["target_modules"],
    )
    encoder_state = {k: v for k, v in tensors.items() if not k.startswith(_DECODER_PREFIX)}
    expected = set(peft.get_peft_model_state_dict(model.image_encoder))
    if set(encoder_state) != expected:
        missing, extra = sorted(expected - set(encoder_state)), sorted(set(encoder_state) - expected)
        raise ValueError(
            f"path: the adapters do not fit this segmenter's encoder (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    try:
        peft.set_peft_model_state_dict(model.image_encoder, encoder_state)
        if info["decoder"]:
            decoder_state = {k[len(_DECODER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_DECODER_PREFIX)}
            model.mask_decoder.load_state_dict(decoder_state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"path: the saved weights do not fit this segmenter's model: {str(exc)[:300]}") from exc
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if merge:
        merge_lora(model)
    model.eval()
    params = dict(base.params())
    params.pop("checkpoint", None)
    params.pop("module", None)
    params.setdefault("device", str(base.device))
    adapted = type(base)(model=model, **params)
    tag = "lora-merged" if merge else "lora"
    adapted.model_id = f"{base.model_id}+{tag}:{file_digest(_lora_path(path))}"
    return adapted

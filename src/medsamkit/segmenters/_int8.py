"""INT8 post-training quantization of an OpenVINO image encoder with NNCF (opt-in).

``precision="int8"`` (:class:`~medsamkit.LiteMedSAM`) quantizes the converted
encoder's convolutions and matrix multiplications to 8-bit integers with NNCF's
post-training quantization (``nncf.quantize``): weights per channel, activations
with ranges measured on a **calibration set**, the user's own images passed
explicitly. Nothing is bundled and nothing is downloaded; the calibration images
are reduced to a digest that becomes part of the cache key of the quantized model
and of the ``model_id``, so encodings quantized with different calibration sets
never share a cache entry. See ``docs/performance.md`` for speed and Dice.

NNCF is the optional extra ``pip install "medsamkit[int8]"``; it is imported
lazily, with its usage telemetry off (:func:`import_nncf`).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._common import without_openvino_telemetry

__all__ = ["INT8_SCHEME", "calibration_digest", "import_nncf", "nncf_available", "quantize_openvino_model"]

INT8_SCHEME = "ptq1+ends+sq0.5"
"""Names the quantization recipe (:func:`quantize_openvino_model`); part of every int8 cache
key and model id. ``ptq1+ends+sq0.5``: NNCF's transformer defaults, with the first
convolution and the neck left in floating point and SmoothQuant alpha 0.5 (instead of
0.95), which removed the Dice cost of ``ptq1`` on lung2 at the same speed
(``docs/performance.md``)."""

_lock = threading.Lock()


def nncf_available() -> bool:
    """True when the ``nncf`` package can be imported."""
    return importlib.util.find_spec("nncf") is not None


def import_nncf() -> Any:
    """Import NNCF with its usage telemetry off and return the ``nncf`` module.

    NNCF sends usage events through ``openvino-telemetry`` when that package is
    importable at ``import nncf`` time (``nncf/telemetry/wrapper.py``); without it,
    NNCF binds its own no-op stub. medsamkit sends nothing anywhere, so while NNCF is
    first imported ``openvino_telemetry`` is hidden (as in
    :func:`~medsamkit.segmenters._fast.import_openvino`, which the callers run first
    so that OpenVINO's converter binds its own stub too).

    Raises:
        ImportError: If NNCF is not installed (``pip install "medsamkit[int8]"``).
    """
    with _lock:
        if "nncf" in sys.modules and sys.modules["nncf"] is not None:
            return sys.modules["nncf"]
        if not nncf_available():
            raise ImportError("precision='int8' needs NNCF and OpenVINO: pip install \"medsamkit[int8]\"") from None
        with without_openvino_telemetry():
            return importlib.import_module("nncf")


def calibration_digest(inputs: np.ndarray) -> str:
    """A digest of the preprocessed calibration inputs ``(N, 3, S, S)`` float32 (16 hex digits)."""
    array = np.ascontiguousarray(inputs, dtype=np.float32)
    digest = hashlib.sha256(f"{INT8_SCHEME}|{array.shape}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def check_calibration_inputs(inputs: Any, image_size: int) -> np.ndarray:
    """``inputs`` as a ``(N, 3, S, S)`` float32 array, or ValueError naming ``calibration``."""
    if isinstance(inputs, np.ndarray):
        array = inputs
    elif isinstance(inputs, Sequence) and len(inputs) > 0:
        array = np.stack([np.asarray(x) for x in inputs])
    else:
        raise ValueError(f"calibration: expected a non-empty sequence of images, got {type(inputs).__name__}")
    expected = (3, image_size, image_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != expected or array.shape[0] == 0:
        raise ValueError(
            f"calibration: expected preprocessed inputs of shape (N, {', '.join(map(str, expected))}), got {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("calibration: the inputs contain NaN or infinite values")
    return np.ascontiguousarray(array, dtype=np.float32)


@contextlib.contextmanager
def _quiet_nncf(nncf: Any) -> Any:
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


_ENDS = [r"__module\.patch_embed\.seq\.0/.*", r"__module\.neck\..*"]
"""Node-name patterns of the encoder's first convolution (3 input channels) and its neck (the embedding itself)."""


def _recipe(nncf: Any, scheme: str) -> dict[str, Any]:
    """``nncf.quantize`` options of a quantization recipe (``scheme``; ``benchmarks/int8_variants.py`` compares them)."""
    options: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER}
    parts = scheme.split("+")
    if parts[0] != "ptq1":
        raise ValueError(f"scheme: expected 'ptq1[+option...]', got {scheme!r}")
    ignored: dict[str, list[str]] = {"patterns": [], "types": []}
    for part in parts[1:]:
        if part == "ends":  # first convolution and neck stay in floating point
            ignored["patterns"] += _ENDS
        elif part == "sdpa":  # the attention's q, k, v stay in floating point
            ignored["types"].append("ScaledDotProductAttention")
        elif part == "bc":  # full bias correction instead of the fast one
            options["fast_bias_correction"] = False
        elif part.startswith("sq"):  # SmoothQuant alpha of the matrix multiplications ("sq-1": off)
            alphas = nncf.AdvancedSmoothQuantParameters(matmul=float(part[2:]))
            options["advanced_parameters"] = nncf.AdvancedQuantizationParameters(smooth_quant_alphas=alphas)
        elif part == "performance":
            options["preset"] = nncf.QuantizationPreset.PERFORMANCE
        else:
            raise ValueError(f"scheme: unknown option {part!r} in {scheme!r}")
    if ignored["patterns"] or ignored["types"]:
        options["ignored_scope"] = nncf.IgnoredScope(**ignored, validate=False)
    return options


def quantize_openvino_model(model: Any, inputs: np.ndarray, scheme: str | None = None) -> Any:
    """Post-training INT8 quantization of an OpenVINO model with NNCF.

    Args:
        model: An ``openvino.Model`` (float32) with one input.
        inputs: Calibration inputs ``(N, 3, S, S)`` float32 (already preprocessed);
            every one of them is used to measure the activation ranges.
        scheme: The recipe (default :data:`INT8_SCHEME`): ``ptq1`` (NNCF's transformer
            defaults: mixed preset, SmoothQuant alpha 0.95, fast bias correction), with
            ``+`` options: ``ends`` (the first convolution and the neck unquantized),
            ``sdpa`` (the attention's q, k, v unquantized), ``bc`` (full bias
            correction), ``sq<alpha>`` (SmoothQuant alpha, ``sq-1`` off), ``performance``
            (symmetric activations).

    Returns:
        The quantized ``openvino.Model`` (weights and activations of convolutions and
        matrix multiplications in int8, the rest as compiled).
    """
    nncf = import_nncf()
    options = _recipe(nncf, INT8_SCHEME if scheme is None else scheme)
    samples = [inputs[i : i + 1] for i in range(inputs.shape[0])]
    with _quiet_nncf(nncf):
        return nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples), **options)

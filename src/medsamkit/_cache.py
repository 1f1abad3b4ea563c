"""A bounded on-disk cache of image encodings, and a segmenter wrapper that uses it.

Encoding an image is almost all of the cost of SAM-family inference (LiteMedSAM:
about 1 s per image on two CPU cores, SAM ViT-B about 12 s); decoding a prompt
costs milliseconds. Every study (thresholds, prompt types, folds) re-runs the same
images, so encodings are kept on disk, keyed by the model, its preprocessing and
the image content.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import threading
import weakref
from pathlib import Path
from typing import Any, cast

import numpy as np

from ._oneshot import OneShotMixin
from ._paths import default_cache_dir
from ._protocols import LowResDecoder, Segmenter
from ._types import ImageEncoding, PromptMasks, Prompts
from ._validation import as_image

__all__ = ["CachedSegmenter", "EmbeddingCache", "image_key"]

_FORMAT = 1
_SUFFIX = ".npz"
_RESCAN_EVERY = 64
"""Writes between two scans of the folder while the size this instance knows of is below the bound."""
_KEY_FIELD = "_key"
"""Every entry stores its own key: an entry copied or renamed onto another key is not trusted."""

logger = logging.getLogger("medsamkit")


def _discard(path: Path) -> None:
    """Remove a bad entry (a file, or a directory someone put in its place); never raise."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _check_encoding_arrays(data: dict[str, np.ndarray]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """The metadata and feature arrays of an encoding entry, checked; ValueError when they disagree."""
    info = json.loads(str(data["meta"]))
    n = int(data["n_arrays"])
    arrays = [data[f"a{i}"] for i in range(n)]
    shapes, dtypes = info.get("shapes"), info.get("dtypes")
    if shapes is None or dtypes is None or len(shapes) != n or len(dtypes) != n:
        raise ValueError("entry without array shapes")
    for array, shape, dtype in zip(arrays, shapes, dtypes):
        if list(array.shape) != list(shape) or array.dtype.str != dtype:
            raise ValueError("array shape or dtype differs from the entry's record")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError("non-finite features")
        if array.dtype.kind not in "fiub":
            raise ValueError(f"unexpected dtype {array.dtype}")
    return info, arrays


def image_key(image: np.ndarray, model_id: str) -> str:
    """Cache key of an image for a model: SHA-256 of the model id, shape, dtype and pixels."""
    image = np.ascontiguousarray(as_image(image))
    digest = hashlib.sha256()
    digest.update(f"v{_FORMAT}|{model_id}|{image.shape}|{image.dtype.str}|".encode())
    digest.update(image.data.cast("B"))
    return digest.hexdigest()


def _to_arrays(features: Any) -> tuple[str, list[np.ndarray]]:
    """Flatten features (a tensor, an array, or a tuple/list of them) to numpy arrays."""
    items = features if isinstance(features, (tuple, list)) else (features,)
    kind = "tuple" if isinstance(features, (tuple, list)) else "single"
    arrays, types = [], []
    for item in items:
        if isinstance(item, np.ndarray):
            arrays.append(item)
            types.append("numpy")
        elif hasattr(item, "detach") and hasattr(item, "cpu"):
            arrays.append(item.detach().float().cpu().numpy())
            types.append("torch")
        else:
            raise TypeError(f"features: cannot cache {type(item).__name__}; expected tensors or numpy arrays")
    meta = {"kind": kind, "types": types, "shapes": [list(a.shape) for a in arrays], "dtypes": [a.dtype.str for a in arrays]}
    return json.dumps(meta), arrays


def _from_arrays(meta: str, arrays: list[np.ndarray], device: Any) -> Any:
    info = json.loads(meta)
    items: list[Any] = []
    for kind, array in zip(info["types"], arrays):
        if kind == "torch":
            import torch

            items.append(torch.from_numpy(array).to(device) if device is not None else torch.from_numpy(array))
        else:
            items.append(array)
    return tuple(items) if info["kind"] == "tuple" else items[0]


class EmbeddingCache:
    """Image encodings on disk: atomic entries, bounded size, least-recently-used eviction.

    Each entry is one ``.npz`` file written to a temporary name and renamed into
    place, so an interrupted write never leaves an entry that can be read back
    half-written. An unreadable entry (truncated by a crash of the file system,
    edited by hand) is deleted and treated as a miss. Reading an entry refreshes its
    modification time; when the cache grows beyond ``max_bytes``, the entries used
    least recently are deleted. The folder is scanned on the first write, whenever
    the size known to this instance (last scan plus its own writes) passes
    ``max_bytes``, and every 64 writes (other processes may share the folder), not on
    every write: a scan of a thousand entries costs about 15 ms.

    Args:
        directory: Cache folder (created). Default: :func:`default_cache_dir`.
        max_bytes: Size bound in bytes (default 2 GiB; a LiteMedSAM encoding is 4 MiB).

    Attributes:
        hits, misses: Counters for this instance.
    """

    def __init__(self, directory: str | Path | None = None, *, max_bytes: int = 2 * 1024**3) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes: expected a positive int (bytes), got {max_bytes!r}")
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        self._known_bytes: int | None = None  # size after the last scan plus what this instance wrote since
        self._puts = 0
        self.writable = True
        """False after a write failed (read-only folder or HOME, full disk): later writes are skipped."""

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}{_SUFFIX}"

    def get_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key`` (loaded into memory), or None. Does not count hits or misses.

        An entry that cannot be read, or that was stored under another key (copied or
        renamed onto this one), is a miss and is deleted.
        """
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            if str(arrays.pop(_KEY_FIELD)) != key:
                raise ValueError("entry of another key")
        except FileNotFoundError:
            return None
        except Exception:  # a damaged or foreign entry is a miss, and goes away
            _discard(path)
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        return arrays

    def discard(self, key: str) -> None:
        """Delete the entry of ``key`` (a wrong one found by a caller's check)."""
        _discard(self._path(key))

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Store named arrays under ``key`` atomically, then evict beyond ``max_bytes``.

        If the folder cannot be written (read-only, full), a warning says once that the
        run goes on without the embedding cache, and later writes are skipped.
        """
        from .data import atomic_write_bytes

        if not self.writable:
            return
        buffer = io.BytesIO()
        np.savez(buffer, **arrays, **{_KEY_FIELD: np.array(key)})  # type: ignore[arg-type]  # numpy's stubs take the names for its keywords
        data = buffer.getvalue()
        try:
            atomic_write_bytes(self._path(key), data)
        except OSError as exc:
            with self._lock:
                first, self.writable = self.writable, False
            if first:
                logger.warning(
                    "medsamkit: cannot write the embedding cache in %s (%s); going on without the embedding cache",
                    self.directory,
                    exc,
                )
            return
        with self._lock:
            self._puts += 1
            if self._known_bytes is not None:
                self._known_bytes += len(data)
            due = (
                self._known_bytes is None
                or self._known_bytes > self.max_bytes
                or self._puts % _RESCAN_EVERY == 0  # other processes may write to the same folder
            )
        if due:
            self.evict()

    def get(
        self, key: str, *, device: Any = None, size_hw: tuple[int, int] | None = None, model_id: str | None = None
    ) -> ImageEncoding | None:
        """The cached encoding for ``key``, or None.

        The entry is checked before it is used: its stored key, its arrays' shapes and
        dtypes against its own record, finite features, and (when given) the image size
        ``size_hw`` and ``model_id``. Any mismatch is a miss and the entry is deleted.
        """
        data = self.get_arrays(key)
        encoding = None
        if data is not None:
            try:
                _, arrays = _check_encoding_arrays(data)
                encoding = ImageEncoding(
                    features=_from_arrays(str(data["meta"]), arrays, device),
                    size_hw=cast("tuple[int, int]", tuple(int(v) for v in data["size_hw"])),
                    input_size_hw=cast("tuple[int, int]", tuple(int(v) for v in data["input_size_hw"])),
                    model_id=str(data["model_id"]),
                )
                if size_hw is not None and tuple(encoding.size_hw) != tuple(size_hw):
                    raise ValueError("encoding of an image of another size")
                if model_id is not None and encoding.model_id != model_id:
                    raise ValueError("encoding of another model")
            except Exception:  # not an encoding entry, a damaged or a wrong one: a miss, and it goes away
                encoding = None
                self.discard(key)
        if encoding is None:
            self.misses += 1
        else:
            self.hits += 1
        return encoding

    def put(self, key: str, encoding: ImageEncoding) -> None:
        """Store ``encoding`` under ``key`` atomically, then evict beyond ``max_bytes``."""
        meta, arrays = _to_arrays(encoding.features)
        self.put_arrays(
            key,
            {
                "meta": np.array(meta),
                "n_arrays": np.int64(len(arrays)),
                "size_hw": np.asarray(encoding.size_hw, dtype=np.int64),
                "input_size_hw": np.asarray(encoding.input_size_hw, dtype=np.int64),
                "model_id": np.array(encoding.model_id),
                **{f"a{i}": a for i, a in enumerate(arrays)},
            },
        )

    def entries(self) -> list[Path]:
        """Paths of all entries."""
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.glob(f"*/*{_SUFFIX}") if not p.name.startswith(".")]

    def size_bytes(self) -> int:
        """Total size of the entries in bytes."""
        total = 0
        for path in self.entries():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def evict(self) -> int:
        """Delete least recently used entries until the cache fits ``max_bytes``; returns how many."""
        with self._lock:
            stats = []
            for path in self.entries():
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                stats.append((st.st_mtime, st.st_size, path))
            total = sum(size for _, size, _ in stats)
            removed = 0
            for _, size, path in sorted(stats, key=lambda item: item[0]):
                if total <= self.max_bytes:
                    break
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
            self._known_bytes = total
            return removed

    def clear(self) -> None:
        """Delete every entry."""
        for path in self.entries():
            path.unlink(missing_ok=True)


def _valid_logits(entry: dict[str, np.ndarray], n: int) -> bool:
    """True when a decode entry holds float32 ``(n, 1, H, W)`` finite logits and ``(n,)`` finite scores."""
    logits, scores = entry.get("logits"), entry.get("scores")
    if logits is None or scores is None:
        return False
    return bool(
        logits.dtype == np.float32
        and logits.ndim == 4
        and logits.shape[:2] == (n, 1)
        and scores.shape == (n,)
        and scores.dtype.kind == "f"
        and np.isfinite(logits).all()
        and np.isfinite(scores).all()
    )


class CachedSegmenter(OneShotMixin):
    """Wraps a segmenter so ``encode`` reads and writes an :class:`EmbeddingCache`.

    The wrapper is a :class:`~medsamkit.Segmenter` with the same ``model_id`` and
    the same configuration as the wrapped one (caching never changes results), so a
    cached and an uncached run of ``evaluate`` can resume each other.

    Args:
        segmenter: The segmenter to wrap. Its ``model_id`` must identify the
            weights and preprocessing (all medsamkit segmenters do).
        cache: An :class:`EmbeddingCache`, or a folder path for one.
    """

    def __init__(self, segmenter: Segmenter, cache: EmbeddingCache | str | Path | None = None, *, decodes: bool = True) -> None:
        if not hasattr(segmenter, "encode") or not hasattr(segmenter, "model_id"):
            raise TypeError(f"segmenter: expected a Segmenter, got {type(segmenter).__name__}")
        if not isinstance(decodes, bool):
            raise TypeError(f"decodes: expected a bool, got {type(decodes).__name__}")
        self.segmenter = segmenter
        self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
        self.decodes = decodes
        self.decode_hits = 0
        self.decode_misses = 0
        self._keys: weakref.WeakKeyDictionary[ImageEncoding, str] = weakref.WeakKeyDictionary()

    @property
    def model_id(self) -> str:
        return self.segmenter.model_id

    def __repr__(self) -> str:
        return f"CachedSegmenter({self.segmenter!r}, {self.cache!r})"

    def config_component(self) -> Any:
        """The component whose configuration describes this one (the wrapped segmenter)."""
        return self.segmenter

    def __getattr__(self, name: str) -> Any:
        # Delegate everything else (params, preprocess, decode_logits, model, ...).
        if name in ("segmenter", "cache", "decodes", "_keys"):
            raise AttributeError(name)
        return getattr(self.segmenter, name)

    def encode(self, image: np.ndarray) -> ImageEncoding:
        """The cached encoding of ``image``, computing and storing it on a miss."""
        key = image_key(image, self.model_id)
        size_hw = (int(np.shape(image)[0]), int(np.shape(image)[1]))
        encoding = self.cache.get(key, device=getattr(self.segmenter, "device", None), size_hw=size_hw, model_id=self.model_id)
        if encoding is None:
            encoding = self.segmenter.encode(image)
            self.cache.put(key, encoding)
        self._keys[encoding] = key
        return encoding

    def decode(self, encoding: ImageEncoding, prompts: Prompts) -> PromptMasks:
        """Decode with the wrapped segmenter, reusing cached low-resolution logits when possible.

        For segmenters that offer the :class:`~medsamkit.LowResDecoder` capability
        (the SAM family: ``decode_low_res``, ``finish_low_res``, ``decoder_digest``)
        and an encoding that came from this wrapper's :meth:`encode`, the decoder's
        ``(N, 1, 256, 256)`` float32 logits and scores are cached under a key made of
        the image's cache key, the exact prompts and the segmenter's digest of its
        prompt-encoder and mask-decoder weights (recomputed whenever a weight tensor is
        replaced or changed in place, e.g. by fine-tuning). A hit skips the decoder;
        cropping, upsampling and the sigmoid run as usual, so the probabilities are
        identical to an uncached decode. Everything else is decoded by the wrapped segmenter.
        """
        seg = self.segmenter
        key = self._decode_key(encoding, prompts)
        if key is None or not isinstance(seg, LowResDecoder):
            return seg.decode(encoding, prompts)
        entry = self.cache.get_arrays(key)
        if entry is not None and not _valid_logits(entry, prompts.n):
            self.cache.discard(key)
            entry = None
        if entry is not None:
            import torch

            from .segmenters import check_encoding

            check_encoding(encoding, self.model_id)
            self.decode_hits += 1
            logits, scores = torch.from_numpy(entry["logits"]), entry["scores"]
        else:
            self.decode_misses += 1
            logits, scores = seg.decode_low_res(encoding, prompts)
            self.cache.put_arrays(key, {"logits": logits.numpy(), "scores": scores})
        return seg.finish_low_res(encoding, logits, scores)

    def _decode_key(self, encoding: ImageEncoding, prompts: Prompts) -> str | None:
        """Cache key of decoding ``prompts`` against ``encoding``, or None when it cannot be cached."""
        seg = self.segmenter
        if not (self.decodes and isinstance(seg, LowResDecoder)) or not isinstance(prompts, Prompts):
            return None
        image = self._keys.get(encoding) if isinstance(encoding, ImageEncoding) else None
        if image is None or prompts.n == 0:
            return None
        prompts = prompts.clipped_to(encoding.size_hw)
        digest = hashlib.sha256()
        digest.update(f"decode|v{_FORMAT}|{image}|{seg.decoder_digest()}|".encode())
        for name in ("box_xyxy", "points_xy", "point_labels"):
            value = getattr(prompts, name)
            digest.update(f"{name}:{'-' if value is None else value.dtype.str + str(value.shape)}|".encode())
            if value is not None:
                digest.update(np.ascontiguousarray(value).tobytes())
        return digest.hexdigest()

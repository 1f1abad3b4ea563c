"""The machinery every YOLO component shares: offline training, prediction, saving and loading.

:class:`YOLOModel` is the base of :class:`~medsamkit.prompters.YOLOBoxPrompter` and
:class:`~medsamkit.segmenters.YOLOSegmenter`. Its weights are held as
:class:`~._weights.YOLOWeights` (YAML + plain arrays), never as a pickle: they are
saved in an ``.npz`` read with ``allow_pickle=False`` and the model is rebuilt from them.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import as_image, check_probability, describe
from ._dataset import masks_to_yolo_dataset, to_bgr
from ._offline import import_ultralytics, offline_guard, preserve_global_state
from ._weights import (
    YOLOWeights,
    build_model,
    check_model_yaml,
    read_checkpoint,
    weights_of,
)

__all__ = ["STATE_VERSION", "YOLOModel", "check_positive_int", "result_boxes", "to_numpy"]

#: Version of the saved-state layout (1: an embedded Ultralytics pickle, no longer read).
STATE_VERSION = 2
# Arguments medsamkit sets itself for training (offline guarantees and bookkeeping).
_RESERVED_TRAIN_ARGS = frozenset(
    {
        "data",
        "model",
        "pretrained",
        "amp",
        "plots",
        "project",
        "name",
        "exist_ok",
        "epochs",
        "imgsz",
        "batch",
        "seed",
        "deterministic",
        "device",
        "verbose",
        "resume",
        "save",
        "val",
        "task",
        "mode",
    }
)


def to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def result_boxes(
    result: Any, size_hw: tuple[int, int], *, conf: float, max_boxes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one Ultralytics ``Results`` as medsamkit boxes.

    Ultralytics boxes are continuous ``[x0, x1)`` intervals in input pixels; the
    inclusive medsamkit box of pixels ``x0 .. x1 - 1`` (the inverse of the dataset
    labels), clipped to the image.

    Returns:
        ``(boxes (N, 4) float32, scores (N,) float32, order)`` sorted by decreasing
        confidence, ``N <= max_boxes``, all with confidence ``>= conf``; ``order``
        indexes the kept detections in ``result``.
    """
    h, w = size_hw
    boxes = getattr(result, "boxes", None)
    if boxes is None or len(to_numpy(boxes.conf)) == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    xyxy = to_numpy(boxes.xyxy).reshape(-1, 4)
    scores = to_numpy(boxes.conf).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= conf][:max_boxes]
    xyxy, scores = xyxy[order].astype(np.float64), scores[order]
    out = np.empty_like(xyxy)
    out[:, 0] = np.clip(xyxy[:, 0], 0, w - 1)
    out[:, 1] = np.clip(xyxy[:, 1], 0, h - 1)
    out[:, 2] = np.clip(np.maximum(xyxy[:, 2] - 1, xyxy[:, 0]), 0, w - 1)
    out[:, 3] = np.clip(np.maximum(xyxy[:, 3] - 1, xyxy[:, 1]), 0, h - 1)
    return out.astype(np.float32), scores.astype(np.float32), order.astype(np.int64)


def check_positive_int(value: Any, *, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def _weights_path(path: str | os.PathLike[str], *, name: str = "weights") -> Path:
    path = Path(path).expanduser()
    if path.suffix.lower() != ".pt":
        raise ValueError(f"{name}: expected an Ultralytics checkpoint file ending in '.pt', got '{path}'")
    if not path.is_file():
        # Ultralytics would try to download a missing 'yolov8n.pt'; medsamkit never does.
        raise FileNotFoundError(
            f"{name}: checkpoint '{path}' not found (medsamkit never downloads weights; give a local .pt file)"
        )
    return path.absolute()


def _ultralytics_checkpoint(model: Any, train_args: dict[str, Any]) -> dict[str, Any]:
    """What Ultralytics writes as ``best.pt`` (enough for ``YOLO(path)`` and ``yolo predict``)."""
    import ultralytics

    return {
        "model": model,
        "train_args": dict(train_args),
        "version": ultralytics.__version__,
        "epoch": -1,
        "ema": None,
        "optimizer": None,
        "date": None,
    }


class YOLOModel:
    """Shared machinery: model YAML or weights, offline training, weights as plain data, save/load."""

    _task = "detect"
    _format = "medsamkit.YOLOBoxPrompter"
    _default_model = "yolov8n.yaml"

    requires_target = False
    uses_encoding = False
    state_suffix = ".npz"

    def __init__(
        self,
        *,
        model: str | None = None,
        weights: str | os.PathLike[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        max_boxes: int = 4,
        imgsz: int = 640,
        device: str = "cpu",
    ) -> None:
        model = self._default_model if model is None else model
        if not isinstance(model, str) or not model.lower().endswith((".yaml", ".yml")):
            raise ValueError(
                f"model: expected an Ultralytics model YAML such as {self._default_model!r}, got {model!r} "
                "(pass a .pt checkpoint as weights=)"
            )
        if not isinstance(device, str):
            raise TypeError(f"device: expected a str such as 'cpu' or 'cuda:0', got {describe(device)}")
        self.model = model
        self.conf = check_probability(conf, name="conf")
        self.iou = check_probability(iou, name="iou")
        self.max_boxes = check_positive_int(max_boxes, name="max_boxes")
        self.imgsz = check_positive_int(imgsz, name="imgsz", minimum=32)
        self.device = device
        self.weights: Path | None = None
        self._init_weights: Path | None = None
        self._init_state: YOLOWeights | None = None
        self._state: YOLOWeights | None = None
        self._source = "the weights"  # where the weights came from, for messages
        self._yolo: Any = None
        self.train_info: dict[str, Any] = {}
        if weights is not None:
            self.weights = _weights_path(weights)
            self._source = f"weights: '{self.weights}'"
            self._state = self._checked(read_checkpoint(self.weights), self._source)
            self._init_weights, self._init_state = self.weights, self._state

    def _checked(self, state: YOLOWeights, source: str) -> YOLOWeights:
        """``state`` if it is a model of this task whose YAML builds without running code, else ValueError."""
        if state.task != self._task:
            raise ValueError(f"{source}: expected a YOLO '{self._task}' model, got a '{state.task}' model")
        check_model_yaml(state.yaml, source)
        return state

    # -- description ---------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        """Whether there are weights to predict with (trained, loaded or given)."""
        return self._state is not None

    def __repr__(self) -> str:
        if self.train_info:
            state = f"trained {self.train_info.get('epochs')} epochs on {self.train_info.get('n_train')} images"
        elif self.fitted:
            state = f"weights={str(self.weights) if self.weights else '<in memory>'}"
        else:
            state = "not fitted"
        return f"{type(self).__name__}(model={self.model!r}, conf={self.conf}, imgsz={self.imgsz}, {state})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs and saving).

        ``weights`` is the ``.pt`` file the model predicts with, when there is one on
        disk: the file given to the constructor, or the ``best.pt`` of a ``fit`` with
        a ``work_dir``; ``None`` for weights held only in memory (save them with :meth:`save`).
        """
        return {
            "model": self.model,
            "weights": None if self.weights is None else str(self.weights),
            "conf": self.conf,
            "iou": self.iou,
            "max_boxes": self.max_boxes,
            "imgsz": self.imgsz,
            "device": self.device,
        }

    # -- model ---------------------------------------------------------------------

    def _check_fitted(self) -> YOLOWeights:
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__} has no weights: call fit(samples), load(path) or pass weights=PATH")
        return self._state

    def _yolo_for(self, yolo_cls: Any, state: YOLOWeights, source: str) -> Any:
        """An Ultralytics ``YOLO`` holding the model rebuilt from ``state`` (as if loaded from a checkpoint)."""
        built = build_model(state, source)
        yolo = yolo_cls(self._default_model, task=self._task)  # a bundled YAML: the wrapper, its model replaced
        built.args = yolo.model.args
        yolo.model = built
        yolo.ckpt = {"model": built}  # fit() then starts from these weights (Ultralytics' path for a loaded .pt)
        return yolo

    def _load_yolo(self) -> Any:
        """The Ultralytics model for prediction, rebuilt from the weights held in memory."""
        if self._yolo is None:
            state = self._check_fitted()
            yolo_cls = import_ultralytics()
            with offline_guard(verbose=False):
                self._yolo = self._yolo_for(yolo_cls, state, self._source)
        return self._yolo

    def fit(
        self,
        samples: Iterable[Any],
        *,
        val: Iterable[Any] | None = None,
        epochs: int = 100,
        imgsz: int | None = None,
        batch: int = 16,
        seed: int = 0,
        work_dir: str | os.PathLike[str] | None = None,
        min_area: int = 16,
        progress: bool = False,
        **train_args: Any,
    ) -> Any:
        """Train the detector on image/mask pairs, offline.

        The pairs are converted with :func:`masks_to_yolo_dataset`, then an
        Ultralytics model is trained from the model YAML with random initial weights
        (``pretrained=False``), or fine-tuned from the ``weights`` given to the
        constructor. Training is seeded and uses ``deterministic=True``; AMP and
        plots are off (both would download files); no integration (hub, MLflow,
        W&B, ...) runs. With ``val`` samples the checkpoint with the best
        validation fitness is kept, otherwise the last epoch's.

        Args:
            samples: :class:`~medsamkit.data.Sample` items (a
                :class:`~medsamkit.data.MaskFolder` split) or ``(image, mask)`` pairs.
            val: Validation items (recommended; used for checkpoint selection).
            epochs: Training epochs.
            imgsz: Training (and from then on prediction) image size; default ``self.imgsz``.
            batch: Batch size.
            seed: Random seed.
            work_dir: Folder for the dataset and the Ultralytics run (kept, with
                ``train/weights/best.pt``). Default: a temporary folder, deleted
                after training (the weights stay in memory; use :meth:`save`).
            min_area: Smallest mask component, in pixels, that becomes a training box.
            progress: Show Ultralytics' training log (default: quiet).
            **train_args: Further Ultralytics training arguments (``lr0``,
                ``patience``, ``workers``, augmentation settings such as ``fliplr``, ...).

        Returns:
            self.
        """
        epochs = check_positive_int(epochs, name="epochs")
        batch = check_positive_int(batch, name="batch")
        imgsz = self.imgsz if imgsz is None else check_positive_int(imgsz, name="imgsz", minimum=32)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed: expected an int, got {seed!r}")
        reserved = sorted(set(train_args) & _RESERVED_TRAIN_ARGS)
        if reserved:
            raise ValueError(f"train_args: {reserved} are set by fit() itself; use its own arguments instead")
        yolo_cls = import_ultralytics()
        temporary = work_dir is None
        root = Path(tempfile.mkdtemp(prefix="medsamkit-yolo-")) if work_dir is None else Path(work_dir).expanduser().absolute()
        try:
            data_yaml = masks_to_yolo_dataset(
                samples,
                root / "dataset",
                min_area=min_area,
                val_samples=val,
                polygons=self._task == "segment",
                progress=progress,
            )
            n_train = len(list((root / "dataset" / "labels" / "train").glob("*.txt")))
            n_val = len(list((root / "dataset" / "labels" / "val").glob("*.txt")))
            args: dict[str, Any] = {
                "workers": 0,
                "cache": False,
                "patience": max(epochs, 100),
                **train_args,
                "data": str(data_yaml),
                "epochs": epochs,
                "imgsz": imgsz,
                "batch": batch,
                "seed": int(seed),
                "deterministic": True,
                "device": self.device,
                "amp": False,  # the AMP check downloads yolo26n.pt
                "plots": False,  # plots need fonts (downloads) and time
                "val": n_val > 0,  # without a validation set: no per-epoch validation, keep the last epoch
                "project": str(root),
                "name": "train",
                "exist_ok": True,
                "verbose": progress,
            }
            start = time.perf_counter()
            with preserve_global_state(), offline_guard(verbose=progress):
                if self._init_state is not None:
                    yolo = self._yolo_for(yolo_cls, self._init_state, f"weights: '{self._init_weights}'")
                else:
                    yolo = yolo_cls(self.model, task=self._task)
                    args["pretrained"] = False
                yolo.train(**args)
                trainer = yolo.trainer
            seconds = time.perf_counter() - start
            best = trainer.best if Path(trainer.best).is_file() else trainer.last
            # Ultralytics reloaded the checkpoint it has just written (best, else last) into yolo.model.
            state = weights_of(yolo.model, self._task, source=f"the trained model ({best})")
        finally:
            if temporary:
                shutil.rmtree(root, ignore_errors=True)
        import ultralytics

        self._state = state
        self._source = "the trained weights"
        self.weights = None if temporary else Path(best).absolute()
        self.imgsz = imgsz
        self._yolo = None
        self.train_info = {
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": batch,
            "seed": int(seed),
            "n_train": n_train,
            "n_val": n_val,
            "seconds": round(seconds, 1),
            "ultralytics": ultralytics.__version__,
            "init_weights": None if self._init_weights is None else str(self._init_weights),
        }
        return self

    def _predict(self, image: np.ndarray) -> tuple[Any, tuple[int, int]]:
        image = as_image(image)
        yolo = self._load_yolo()
        with offline_guard(verbose=False):
            results = yolo.predict(
                to_bgr(image),
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_boxes,
                imgsz=self.imgsz,
                device=self.device,
                verbose=False,
                save=False,
                **({"retina_masks": True} if self._task == "segment" else {}),
            )
        return results[0], image.shape[:2]

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Detected boxes and their confidences, best first.

        Returns:
            ``(boxes (N, 4) float32 xyxy in input pixels, scores (N,) float32)``,
            ``N <= max_boxes``, every score ``>= conf``.
        """
        result, size_hw = self._predict(image)
        boxes, scores, _ = result_boxes(result, size_hw, conf=self.conf, max_boxes=self.max_boxes)
        return boxes, scores

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Save the weights and parameters to one file, atomically.

        The file is an ``.npz`` archive (no pickle) holding the model YAML, class names,
        :meth:`params` and ``train_info`` as JSON and each parameter as an array; any
        name works (``Pipeline.save`` uses ``prompter.npz``). Write an Ultralytics
        checkpoint with :meth:`export_weights`.
        """
        from ..data import atomic_write_bytes

        state = self._check_fitted()
        keys = sorted(state.state)
        meta = {
            "format": self._format,
            "version": STATE_VERSION,
            "params": {**self.params(), "weights": None},
            "train_info": self.train_info,
            "task": state.task,
            "yaml": state.yaml,
            "names": {str(k): v for k, v in state.names.items()},
            "keys": keys,
        }
        arrays: dict[str, Any] = {f"w{i}": state.state[key] for i, key in enumerate(keys)}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def export_weights(self, path: str | os.PathLike[str]) -> Path:
        """Write an Ultralytics checkpoint (``.pt``) of the weights, e.g. for ``yolo predict``."""
        import torch

        from ..data import atomic_write_bytes

        state = self._check_fitted()
        model = build_model(state, self._source)
        train_args = {"task": self._task, "imgsz": self.imgsz}
        buffer = io.BytesIO()
        torch.save(_ultralytics_checkpoint(model, train_args), buffer)
        path = Path(path)
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> Any:
        """Load a prompter saved with :meth:`save` (no pickle is read; older pickled states are refused).

        Args:
            path: The saved file.
            **overrides: Parameters to change (``conf``, ``max_boxes``, ``device``, ...).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"path: expected a saved {cls.__name__} file, got missing file {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(data["meta"].tobytes().decode())
                if not isinstance(meta, dict):
                    raise TypeError("its meta is not a JSON object")
                if meta.get("format") != cls._format:
                    raise ValueError(f"it holds a {meta.get('format')!r}, expected a saved {cls.__name__}")
                if meta.get("version") != STATE_VERSION:
                    raise ValueError(
                        "it was saved by an older medsamkit and embeds an Ultralytics pickle, which medsamkit no "
                        "longer loads (unpickling a file can run code). Retrain, or, if you trust the file, write "
                        "np.load(path)['checkpoint'] to a .pt file and pass it as weights= (read as plain layers)"
                    )
                keys = meta["keys"]
                state = {key: data[f"w{i}"] for i, key in enumerate(keys)}
                weights = YOLOWeights(
                    task=str(meta["task"]),
                    yaml=meta["yaml"],
                    names={int(k): str(v) for k, v in dict(meta["names"]).items()},
                    state=state,
                )
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise ValueError(f"path: {path} is not a saved {cls.__name__} ({exc})") from None
        params = {k: v for k, v in meta["params"].items() if k != "weights"}
        unknown = sorted(set(overrides) - set(params))
        if unknown:
            raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(params)}")
        prompter = cls(**{**params, **overrides})
        prompter._source = f"path: {path}"
        prompter._state = prompter._checked(weights, prompter._source)
        prompter.train_info = dict(meta.get("train_info") or {})
        return prompter

"""YOLO weights without unpickling code: the model's YAML and a plain state dict, rebuilt here.

medsamkit holds a YOLO model as :class:`YOLOWeights`: the task, the model YAML (a
dict), the class names and the parameters as numpy arrays. That is what a saved
prompter file (``.npz``, read with ``allow_pickle=False``) stores, and the model is
rebuilt from it: the YAML is checked first (every layer a known ``torch.nn`` /
Ultralytics layer class, literal arguments only, no activation expression, which
Ultralytics would ``eval``), then the state dict is loaded.

An Ultralytics ``.pt`` checkpoint (``weights=``) is a pickle. It is read with
``torch.load(weights_only=True)``, allowing only the layer classes of ``torch.nn``
and ``ultralytics.nn`` (found in the file before anything is unpickled; any other
global is refused), and with module construction blocked while it is read (a
checkpoint rebuilds its modules from their saved state, never by calling them).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["YOLOWeights", "build_model", "check_model_yaml", "read_checkpoint", "weights_of"]

#: The Ultralytics model class of each task medsamkit uses.
TASK_MODELS = {"detect": "DetectionModel", "segment": "SegmentationModel"}
# Where the classes a checkpoint may name live (modules of layers, and the task models).
_LAYER_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.modules.")
# Ultralytics layers that load other models (TorchVision may download weights).
_NOT_LAYERS = frozenset({"TorchVision"})
_YAML_KEYS = frozenset(
    {
        "nc",
        "scales",
        "scale",
        "backbone",
        "head",
        "yaml_file",
        "channels",
        "depth_multiple",
        "width_multiple",
        "max_channels",
        "kpt_shape",
        "end2end",
        "reg_max",
    }
)


@dataclass(frozen=True, eq=False)
class YOLOWeights:
    """A YOLO model as plain data: task, YAML, class names, parameters by name."""

    task: str
    yaml: dict[str, Any]
    names: dict[int, str]
    state: dict[str, np.ndarray]
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        h = hashlib.sha256(json.dumps([self.task, self.yaml, sorted(self.names.items())], sort_keys=True).encode())
        for key in sorted(self.state):
            value = np.ascontiguousarray(self.state[key])
            h.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
            h.update(value.tobytes())
        object.__setattr__(self, "digest", h.hexdigest())


def _tasks() -> Any:
    """``ultralytics.nn.tasks``, imported only after medsamkit has configured Ultralytics offline."""
    from ._offline import import_ultralytics

    import_ultralytics()
    from ultralytics.nn import tasks

    return tasks


def _refuse(source: Any, why: str) -> ValueError:
    return ValueError(
        f"{source}: {why}. medsamkit loads only what it can read without running code from the file "
        "(a YOLO state saved by medsamkit, or an Ultralytics .pt checkpoint of plain layers)"
    )


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def check_model_yaml(yaml: Any, source: Any) -> dict[str, Any]:
    """The model YAML if building it runs no code but layer constructors, else a ValueError naming ``source``.

    Ultralytics evaluates an ``act`` (activation) entry as Python and calls any name
    of its model-building module as a layer; so every layer must name a subclass of
    ``torch.nn.Module`` (``nn.X`` or an Ultralytics layer), arguments must be
    literals, and no ``act``/``activation`` entry is allowed.
    """
    import torch

    tasks = _tasks()
    if not isinstance(yaml, dict) or not _plain(yaml):
        raise _refuse(source, "the model YAML is not a plain mapping")
    unknown = sorted(set(yaml) - _YAML_KEYS)
    if unknown:
        raise _refuse(source, f"the model YAML has entries medsamkit does not build from: {unknown}")
    if not isinstance(yaml.get("nc"), int) or isinstance(yaml.get("nc"), bool):
        raise _refuse(source, f"the model YAML's 'nc' is not an int: {yaml.get('nc')!r}")
    backbone, head = yaml.get("backbone"), yaml.get("head")
    if not isinstance(backbone, list) or not isinstance(head, list):
        raise _refuse(source, "the model YAML has no 'backbone' and 'head' lists")
    for layer in [*backbone, *head]:
        if not (isinstance(layer, list) and len(layer) == 4 and isinstance(layer[2], str) and isinstance(layer[3], list)):
            raise _refuse(source, f"the model YAML has a malformed layer {layer!r}")
        name = layer[2]
        if name.startswith("nn."):
            cls = getattr(torch.nn, name[3:], None)
        else:
            cls = vars(tasks).get(name)
        if not _layer_class(cls):
            raise _refuse(source, f"the model YAML names {name!r}, which is not a layer class")
    return yaml


def _layer_class(cls: Any) -> bool:
    """A ``torch.nn`` or Ultralytics layer (not a whole model, nor one that loads or downloads weights)."""
    import torch

    return (
        isinstance(cls, type)
        and issubclass(cls, torch.nn.Module)
        and cls.__module__.startswith(("torch.nn.modules", "ultralytics.nn.modules"))
        and cls.__name__ not in _NOT_LAYERS
    )


@contextlib.contextmanager
def _no_module_construction() -> Iterator[None]:
    """While a checkpoint is read: calling any ``torch.nn.Module`` constructor raises."""
    import torch

    original = torch.nn.Module.__init__

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"the file calls the constructor of {type(self).__name__}")

    torch.nn.Module.__init__ = refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.__init__ = original  # type: ignore[method-assign]


def _allowed_class(name: str) -> Any:
    """The class a checkpoint names, if it is a torch.nn / Ultralytics layer or task model; else None."""
    import importlib

    import torch

    module, _, attr = name.rpartition(".")
    allowed = name.startswith(_LAYER_PREFIXES) or (module == "ultralytics.nn.tasks" and attr in TASK_MODELS.values())
    if not allowed:
        return None
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None


def read_checkpoint(path: str | Path, *, name: str = "weights") -> YOLOWeights:
    """The model of an Ultralytics ``.pt`` checkpoint, read without running code from the file.

    Raises:
        ValueError: The file names anything but layer classes, or is not a YOLO
            detection/segmentation checkpoint (the message names the file).
    """
    import pickle

    import torch

    source = f"{name}: '{path}'"
    _tasks()
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is refused with its reason
        raise _refuse(source, f"not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    classes = []
    for global_name in needed:
        cls = _allowed_class(global_name)
        if cls is None:
            raise _refuse(source, f"the checkpoint refers to {global_name!r}, which is not a layer class")
        classes.append(cls)
    try:
        with torch.serialization.safe_globals(classes), _no_module_construction():
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, TypeError, ValueError, AttributeError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise _refuse(source, f"it cannot be read as plain layers ({first})") from None
    model = (checkpoint.get("ema") or checkpoint.get("model")) if isinstance(checkpoint, dict) else None
    task = {v: k for k, v in TASK_MODELS.items()}.get(type(model).__name__)
    if task is None or not isinstance(getattr(model, "yaml", None), dict):
        raise _refuse(source, f"expected a YOLO detection or segmentation checkpoint, got {type(model).__name__}")
    return weights_of(model, task, source=source)


def weights_of(model: Any, task: str, *, source: Any = "model") -> YOLOWeights:
    """An Ultralytics model (``DetectionModel``/``SegmentationModel``) as :class:`YOLOWeights`."""
    yaml = check_model_yaml(json.loads(json.dumps(model.yaml)), source)
    names = getattr(model, "names", None) or {}
    names = dict(enumerate(names)) if isinstance(names, (list, tuple)) else names
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        state[key] = (value.float() if value.is_floating_point() else value).numpy().copy()
    return YOLOWeights(task=task, yaml=yaml, names={int(k): str(v) for k, v in names.items()}, state=state)


def build_model(weights: YOLOWeights, source: Any) -> Any:
    """The Ultralytics model rebuilt from the checked YAML, with the weights loaded (float32, eval mode)."""
    import torch

    tasks = _tasks()
    if weights.task not in TASK_MODELS:
        raise _refuse(source, f"unknown YOLO task {weights.task!r}")
    yaml = copy.deepcopy(check_model_yaml(weights.yaml, source))
    cls = getattr(tasks, TASK_MODELS[weights.task])
    model = cls(cfg=yaml, ch=int(yaml.get("channels", 3)), nc=int(yaml["nc"]), verbose=False)
    state = {k: torch.from_numpy(np.array(v)) for k, v in weights.state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{source}: the weights do not fit the model built from its YAML ({first})") from None
    model.names = dict(weights.names)
    model.task = weights.task
    return model.float().eval()

"""The one list of component names: prompt providers, segmenters and post-processing steps.

Components register themselves where they are defined, with their public name::

    @register_component("prompter", "oracle-box")
    class OracleBoxPrompter: ...

Pipeline configs (``pipeline.json``), the command line's choices and ``fit-prompter``
all read this registry; nothing else lists the names. Looking a name up imports the
packages that hold medsamkit's own components (:data:`_BUILTIN_PACKAGES`, by name:
they import this module, not the other way round); a component of your own is
registered when the module defining it is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "POSTPROCESSORS",
    "PREPROCESSORS",
    "PROMPTERS",
    "SEGMENTERS",
    "Component",
    "Kind",
    "build_postprocessor",
    "build_preprocessor",
    "build_prompter",
    "component_config",
    "components",
    "fittable_prompters",
    "load_segmenter",
    "register_component",
    "registered_name",
]

Kind = Literal["prompter", "segmenter", "postprocess", "preprocess"]
KINDS: tuple[Kind, ...] = ("prompter", "segmenter", "postprocess", "preprocess")

_BUILTIN_PACKAGES: dict[str, tuple[str, ...]] = {
    "prompter": ("medsamkit.prompters",),
    "segmenter": ("medsamkit.segmenters", "medsamkit.testing"),
    "postprocess": ("medsamkit._postprocess",),
    "preprocess": ("medsamkit._intensity",),
}
"""The packages whose import registers medsamkit's own components, per kind (all light to import)."""

T = TypeVar("T")


@dataclass(frozen=True)
class Component:
    """One registered component.

    Attributes:
        kind: ``"prompter"``, ``"segmenter"`` or ``"postprocess"``.
        name: The public name (configs, the command line).
        cls: The class.
        build: ``build(**params)`` makes an instance from a config's parameters.
        fitted: True for learned prompt providers (:class:`~medsamkit.FittablePrompter`):
            a config rebuilds them from the file ``state`` their ``save`` wrote.
    """

    kind: Kind
    name: str
    cls: type
    build: Callable[..., Any]
    fitted: bool = False


_TABLES: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
_NAMES_OF: dict[type, list[str]] = {}
_LOADED: set[str] = set()


def register_component(
    kind: Kind, name: str, *, build: Callable[..., Any] | None = None, fitted: bool = False
) -> Callable[[T], T]:
    """Class decorator: register the class as a ``kind`` component called ``name``.

    Args:
        kind: ``"prompter"``, ``"segmenter"`` or ``"postprocess"``.
        name: Public name, unique within its kind.
        build: ``build(**params) -> instance`` for a config's parameters; default:
            the class itself (``cls(**params)``), or for ``fitted`` providers
            ``cls.load(state, **params)``.
        fitted: The class is a learned prompt provider (``fit``, ``save``, ``load``).

    A class may be registered under several names (``SAM``: ``sam-vit-b``,
    ``sam-vit-l``, ...); its instances then say which one is theirs with a ``name``
    attribute.

    Raises:
        ValueError: If ``kind`` is unknown or ``name`` is taken by another class.
    """
    if kind not in _TABLES:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")

    def decorate(cls: T) -> T:
        if not isinstance(cls, type):
            raise TypeError(f"register: expected a class, got {type(cls).__name__}")
        table = _TABLES[kind]
        known = table.get(name)
        same = known is not None and (known.cls.__module__, known.cls.__qualname__) == (cls.__module__, cls.__qualname__)
        if known is not None and not same:  # (the same class again: its module was reloaded)
            raise ValueError(f"name: the {kind} name {name!r} is taken by {known.cls.__qualname__}")
        builder = build if build is not None else (_fitted_builder(cls, name) if fitted else cls)
        table[name] = Component(kind=kind, name=name, cls=cls, build=builder, fitted=fitted)
        names = _NAMES_OF.setdefault(cls, [])
        if name not in names:
            names.append(name)
        return cls

    return decorate


def _fitted_builder(cls: Any, name: str) -> Callable[..., Any]:
    def build(*, state: str | Path | None = None, **params: Any) -> Any:
        if state is None:
            suffix = getattr(cls, "state_suffix", ".npz")
            raise ValueError(
                f"state: the {name!r} prompter must be fitted; give the {suffix} saved by "
                f"{cls.__name__}.save() (CLI: --prompter-state PATH)"
            )
        return cls.load(state, **params)

    return build


def _table(kind: str) -> dict[str, Component]:
    for package in _BUILTIN_PACKAGES[kind]:
        if package not in _LOADED:
            importlib.import_module(package)
            _LOADED.add(package)
    return _TABLES[kind]


def components(kind: Kind) -> dict[str, Component]:
    """The registered components of ``kind`` by name (sorted by name)."""
    if kind not in _TABLES:
        raise ValueError(f"kind: expected one of {list(KINDS)}, got {kind!r}")
    table = _table(kind)
    return {name: table[name] for name in sorted(table)}


def fittable_prompters() -> dict[str, Component]:
    """The learned prompt providers by name (what ``medsamkit fit-prompter`` can fit)."""
    return {name: c for name, c in components("prompter").items() if c.fitted}


class _Builders(Mapping[str, Callable[..., Any]]):
    """Read-only ``name -> build(**params)`` view of one kind of the registry."""

    def __init__(self, kind: Kind) -> None:
        self._kind = kind

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return _table(self._kind)[name].build

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_table(self._kind)))

    def __len__(self) -> int:
        return len(_table(self._kind))

    def __repr__(self) -> str:
        return f"<{self._kind} builders: {', '.join(self)}>"


PROMPTERS: Mapping[str, Callable[..., Any]] = _Builders("prompter")
"""Prompt provider builders by name."""

SEGMENTERS: Mapping[str, Callable[..., Any]] = _Builders("segmenter")
"""Segmenter builders by name (``fake`` is the weight-free test double)."""

POSTPROCESSORS: Mapping[str, Callable[..., Any]] = _Builders("postprocess")
"""Post-processing step builders by name."""

PREPROCESSORS: Mapping[str, Callable[..., Any]] = _Builders("preprocess")
"""Intensity (pre-processing) step builders by name (``window``, ``percentile-clip``, ``clahe``)."""


def _build(kind: Kind, name: str, params: dict[str, Any]) -> Any:
    table = _table(kind)
    if name not in table:
        raise ValueError(f"{kind}: expected one of {sorted(table)}, got {name!r}")
    try:
        return table[name].build(**params)
    except TypeError as exc:
        raise ValueError(f"{kind} {name!r}: bad parameters {params}: {exc}") from exc


def build_prompter(name: str, **params: Any) -> Any:
    """Build a prompt provider by registered name (``oracle-box``, ``perturbed-box``, ...).

    Learned providers (``mean-mask-points``, ``embedding-head``, ``cam-box``,
    ``yolo-box``) need ``state=PATH``, the file their ``save`` wrote.
    """
    return _build("prompter", name, params)


def load_segmenter(name: str, **params: Any) -> Any:
    """Build a segmenter by name.

    Names: ``litemedsam`` (bundled weights), ``sam-vit-b``, ``sam-vit-l``, ``sam-vit-h``,
    ``hq-sam-vit-b``, ``hq-sam-vit-l``, ``hq-sam-vit-h`` (weights from ``checkpoint=`` or
    ``$MEDSAMKIT_SAM_CHECKPOINT_DIR``), ``fake`` (weight-free test double).

    Args:
        name: Registered segmenter name.
        **params: Keyword arguments of the segmenter (``checkpoint``, ``device``, ...).
    """
    return _build("segmenter", name, params)


def build_postprocessor(name: str, **params: Any) -> Any:
    """Build a post-processing step by name (``keep-largest``, ``remove-small``, ``fill-holes``)."""
    return _build("postprocess", name, params)


def build_preprocessor(name: str, **params: Any) -> Any:
    """Build an intensity step by name (``window``, ``percentile-clip``, ``clahe``)."""
    return _build("preprocess", name, params)


def registered_name(component: Any) -> str | None:
    """The registered name of ``component``'s class, or None when it is not registered.

    A class registered under several names picks the one its instance's ``name`` gives.
    """
    names = _NAMES_OF.get(type(component), [])
    if len(names) == 1:
        return names[0]
    own = getattr(component, "name", None)
    return own if own in names else None


def component_config(component: Any) -> dict[str, Any]:
    """``{"name", "params"}`` describing a component, for saving a pipeline config.

    Components that are not registered (of other libraries, your own, a lambda) get
    ``name = "python:<module>.<Class>"``: such a config documents the run but cannot
    rebuild it (:meth:`Pipeline.save` refuses them).
    """
    while callable(getattr(type(component), "config_component", None)):
        component = component.config_component()  # wrappers such as CachedSegmenter
    cls = type(component)
    name = registered_name(component)
    if name is None:
        name = f"python:{cls.__module__}.{cls.__qualname__}"
    params = component.params() if callable(getattr(component, "params", None)) else {}
    return {"name": name, "params": params}

"""Names for prompt providers, segmenters and post-processing steps (configs and the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "POSTPROCESSORS",
    "PREPROCESSORS",
    "PROMPTERS",
    "SEGMENTERS",
    "build_postprocessor",
    "build_preprocessor",
    "build_prompter",
    "component_config",
    "load_segmenter",
]


def _oracle(**params: Any) -> Any:
    from .prompters import OracleBoxPrompter

    return OracleBoxPrompter(**params)


def _perturbed(**params: Any) -> Any:
    from .prompters import PerturbedBoxPrompter

    return PerturbedBoxPrompter(**params)


def _mean_mask(*, state: str | Path | None = None, **params: Any) -> Any:
    from .prompters import MeanMaskPointPrompter

    if state is None:
        raise ValueError(
            "state: the 'mean-mask-points' prompter must be fitted; give the .npz saved by "
            "MeanMaskPointPrompter.save() (CLI: --prompter-state PATH)"
        )
    prompter = MeanMaskPointPrompter.load(state)
    unknown = sorted(set(params) - set(prompter.params()))
    if unknown:  # TypeError, like an unexpected keyword: _build reports it as bad parameters
        raise TypeError(f"unexpected parameters {unknown}; expected some of {sorted(prompter.params())} and state")
    for key, value in params.items():
        if getattr(prompter, key) != value:
            raise ValueError(f"{key}: the saved prompter {state} has {getattr(prompter, key)!r}, the config {value!r}")
    return prompter


def _embedding_head(*, state: str | Path | None = None, **params: Any) -> Any:
    from .prompters import EmbeddingHeadPrompter

    if state is None:
        raise ValueError(
            "state: the 'embedding-head' prompter must be fitted; give the .pt saved by "
            "EmbeddingHeadPrompter.save() (CLI: --prompter-state PATH)"
        )
    prompter = EmbeddingHeadPrompter.load(state)
    for key, value in params.items():
        if getattr(prompter, key, None) != value:
            raise ValueError(f"{key}: the saved prompter {state} has {getattr(prompter, key, None)!r}, the config {value!r}")
    return prompter


def _yolo_box(**params: Any) -> Any:
    from .prompters._yolo import build_yolo_box_prompter  # weights=PATH (.pt) or state=PATH (.npz)

    return build_yolo_box_prompter(**params)


def _cam_box(*, state: str | Path | None = None, **params: Any) -> Any:
    from .prompters import CAMBoxPrompter

    if state is None:
        raise ValueError(
            "state: the 'cam-box' prompter must be fitted; give the .pt saved by "
            "CAMBoxPrompter.save() (CLI: --prompter-state PATH)"
        )
    return CAMBoxPrompter.load(state, **params)


def _fixed(*, prompts: dict[str, Any]) -> Any:
    from ._types import Prompts
    from .prompters import FixedPrompter

    return FixedPrompter(Prompts.from_dict(prompts))


def _litemedsam(*, module: str | None = None, **params: Any) -> Any:
    if module is not None:
        raise ValueError(
            f"segmenter: this config describes a LiteMedSAM wrapping an in-memory module ({module}); "
            "it cannot be rebuilt from the config. Save the weights and pass checkpoint=PATH."
        )
    from .segmenters import LiteMedSAM

    return LiteMedSAM(**params)


def _sam_family(class_name: str, model_type: str) -> Callable[..., Any]:
    """Builder of ``SAM`` / ``HQSAM`` for one model type (names ``sam-vit-b``, ``hq-sam-vit-h``, ...)."""

    def build(*, checkpoint: str | Path | None = None, module: str | None = None, **params: Any) -> Any:
        if module is not None:
            raise ValueError(
                f"segmenter: this config describes a {class_name} wrapping an in-memory module ({module}); "
                "it cannot be rebuilt from the config. Save the weights and pass checkpoint=PATH."
            )
        given = params.pop("model_type", model_type)
        if given != model_type:
            raise ValueError(f"model_type: the segmenter name fixes {model_type!r}, got {given!r}")
        from . import segmenters

        return getattr(segmenters, class_name)(model_type, checkpoint=checkpoint, **params)

    return build


def _fake(**params: Any) -> Any:
    from .testing import FakeSegmenter

    return FakeSegmenter(**params)


PROMPTERS: dict[str, Callable[..., Any]] = {
    "oracle-box": _oracle,
    "perturbed-box": _perturbed,
    "mean-mask-points": _mean_mask,
    "embedding-head": _embedding_head,
    "yolo-box": _yolo_box,
    "cam-box": _cam_box,
    "fixed": _fixed,
}
"""Prompt provider builders by name."""

SEGMENTERS: dict[str, Callable[..., Any]] = {
    "litemedsam": _litemedsam,
    **{f"sam-{t.replace('_', '-')}": _sam_family("SAM", t) for t in ("vit_b", "vit_l", "vit_h")},
    **{f"hq-sam-{t.replace('_', '-')}": _sam_family("HQSAM", t) for t in ("vit_b", "vit_l", "vit_h")},
    "fake": _fake,
}
"""Segmenter builders by name (``fake`` is the weight-free test double)."""


def _postprocessors() -> dict[str, type]:
    from ._postprocess import FillHoles, KeepLargestComponents, RemoveSmallComponents

    return {cls.name: cls for cls in (KeepLargestComponents, RemoveSmallComponents, FillHoles)}


POSTPROCESSORS = ("keep-largest", "remove-small", "fill-holes")
"""Post-processing step names."""

def _preprocessors() -> dict[str, type]:
    from ._intensity import CLAHE, PercentileClip, Window

    return {cls.name: cls for cls in (Window, PercentileClip, CLAHE)}


PREPROCESSORS = ("window", "percentile-clip", "clahe")
"""Intensity (pre-processing) step names."""

_CLASS_NAMES = {
    "OracleBoxPrompter": "oracle-box",
    "PerturbedBoxPrompter": "perturbed-box",
    "MeanMaskPointPrompter": "mean-mask-points",
    "FixedPrompter": "fixed",
    "EmbeddingHeadPrompter": "embedding-head",
    "YOLOBoxPrompter": "yolo-box",
    "CAMBoxPrompter": "cam-box",
    "LiteMedSAM": "litemedsam",
    "FakeSegmenter": "fake",
}


def _build(table: dict[str, Callable[..., Any]], kind: str, name: str, params: dict[str, Any]) -> Any:
    if name not in table:
        raise ValueError(f"{kind}: expected one of {sorted(table)}, got {name!r}")
    try:
        return table[name](**params)
    except TypeError as exc:
        raise ValueError(f"{kind} {name!r}: bad parameters {params}: {exc}") from exc


def build_prompter(name: str, **params: Any) -> Any:
    """Build a prompt provider by name (``oracle-box``, ``perturbed-box``, ``mean-mask-points``, ``fixed``)."""
    return _build(PROMPTERS, "prompter", name, params)


def load_segmenter(name: str, **params: Any) -> Any:
    """Build a segmenter by name.

    Names: ``litemedsam`` (bundled weights), ``sam-vit-b``, ``sam-vit-l``, ``sam-vit-h``,
    ``hq-sam-vit-b``, ``hq-sam-vit-l``, ``hq-sam-vit-h`` (weights from ``checkpoint=`` or
    ``$MEDSAMKIT_SAM_CHECKPOINT_DIR``), ``fake`` (weight-free test double).

    Args:
        name: Registered segmenter name.
        **params: Keyword arguments of the segmenter (``checkpoint``, ``device``, ...).
    """
    return _build(SEGMENTERS, "segmenter", name, params)


def build_postprocessor(name: str, **params: Any) -> Any:
    """Build a post-processing step by name (``keep-largest``, ``remove-small``, ``fill-holes``)."""
    return _build(_postprocessors(), "postprocess", name, params)


def build_preprocessor(name: str, **params: Any) -> Any:
    """Build an intensity step by name (``window``, ``percentile-clip``, ``clahe``)."""
    return _build(_preprocessors(), "preprocess", name, params)


def component_config(component: Any) -> dict[str, Any]:
    """``{"name", "params"}`` describing a component, for saving a pipeline config.

    Components of other libraries or of your own get ``name = "python:<module>.<Class>"``;
    such a config documents the run but cannot rebuild it.
    """
    while callable(getattr(type(component), "config_component", None)):
        component = component.config_component()  # wrappers such as CachedSegmenter
    cls = type(component)
    name = getattr(component, "name", None) if cls.__name__ not in _CLASS_NAMES else _CLASS_NAMES[cls.__name__]
    if not isinstance(name, str) or cls.__module__.split(".")[0] != "medsamkit":
        name = f"python:{cls.__module__}.{cls.__qualname__}"
    params = component.params() if callable(getattr(component, "params", None)) else {}
    return {"name": name, "params": params}

"""``Pipeline``: prompt provider -> segmenter -> threshold -> combine -> post-processing."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ._protocols import PromptProvider, Segmenter, prompts_for
from ._registry import build_postprocessor, build_preprocessor, build_prompter, component_config, load_segmenter
from ._types import ImageEncoding, Prompts, SegmentationResult
from ._validation import as_image, as_mask, check_probability

__all__ = ["ComponentConfig", "Pipeline", "PipelineConfig"]

Combine = Literal["union", "best"]
CONFIG_FILE = "pipeline.json"
_log = logging.getLogger("medsamkit")


class ComponentConfig(BaseModel):
    """A registered component: its name and constructor parameters."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(BaseModel):
    """Everything needed to rebuild a :class:`Pipeline` (saved with every run)."""

    model_config = ConfigDict(extra="forbid")
    prompter: ComponentConfig
    segmenter: ComponentConfig
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    combine: Combine = "union"
    postprocess: list[ComponentConfig] = Field(default_factory=list)
    preprocess: list[ComponentConfig] = Field(default_factory=list)


def _check_rebuildable(config: PipelineConfig) -> None:
    """Raise ValueError naming the first component that a saved config could not rebuild."""
    parts = [("prompter", config.prompter), ("segmenter", config.segmenter)]
    parts += [(f"postprocess[{i}]", part) for i, part in enumerate(config.postprocess)]
    parts += [(f"preprocess[{i}]", part) for i, part in enumerate(config.preprocess)]
    for role, part in parts:
        if part.name.startswith("python:"):
            raise ValueError(
                f"{role}: {part.name} is not a registered medsamkit component, so the pipeline cannot be "
                "rebuilt from a saved config; register its class with medsamkit.register_component, or "
                "rebuild the pipeline in Python"
            )
        if "module" in part.params:  # a segmenter wrapping a module in memory (see its params())
            raise ValueError(
                f"{role}: {part.name} wraps an in-memory module ({part.params['module']}), so the pipeline "
                "cannot be rebuilt from a saved config; save the weights and build it with checkpoint=PATH"
            )


def _resolve(params: dict[str, Any], key: str, base_dir: str | Path | None) -> dict[str, Any]:
    """Copy of ``params`` with a relative file path under ``key`` made relative to ``base_dir``."""
    params = dict(params)
    value = params.get(key)
    if isinstance(value, str) and base_dir is not None and not Path(value).is_absolute():
        params[key] = str(Path(base_dir) / value)
    return params


def _check_steps(steps: Any, *, name: str, what: str) -> tuple[Callable[[np.ndarray], np.ndarray], ...]:
    """Validate a sequence of callables (pre- or post-processing steps)."""
    if callable(steps) or isinstance(steps, str) or not hasattr(steps, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of callables {what}, got {type(steps).__name__}")
    result = tuple(steps)
    for i, step in enumerate(result):
        if not callable(step):
            raise TypeError(f"{name}[{i}]: expected a callable {what}, got {type(step).__name__}")
    return result


THIN_SIDE = 8
"""A side shorter than this many pixels in the model input makes a result unreliable (noted)."""


def _thin_note(size_hw: tuple[int, int], input_size_hw: tuple[int, int]) -> str | None:
    """The note for an image squeezed to a few pixels across in the model input, else None."""
    if min(input_size_hw) >= THIN_SIDE or min(input_size_hw) >= min(size_hw):
        return None
    (h, w), (ih, iw) = size_hw, input_size_hw
    return f"thin image: {h}x{w} px becomes {ih}x{iw} px in the model input, too thin to segment reliably; crop or tile it first"


_warned_points: set[str] = set()


def _warn_points_on_box_model(segmenter: Any) -> None:
    """Say once per model that point-only prompts on box-trained zero-shot weights give poor masks."""
    model_id = str(getattr(segmenter, "model_id", type(segmenter).__name__))
    if model_id in _warned_points:
        return
    _warned_points.add(model_id)
    logging.getLogger("medsamkit").warning(
        "medsamkit: %s was trained with box prompts only; point prompts alone give poor (often near-empty) "
        "masks until the decoder is fine-tuned with points (medsamkit finetune --prompter mean-mask-points), "
        "or use a box prompter",
        type(getattr(segmenter, "segmenter", segmenter)).__name__,
    )


class Pipeline:
    """Fully automatic segmentation of one image: prompts, masks, one final mask.

    Steps: the prompt provider gives ``N`` prompts; the segmenter encodes the image
    once and decodes all prompts in one call; each prompt's probability map is
    thresholded; the prompt masks are combined (``union``: any prompt,
    ``best``: only the prompt with the highest predicted score); the
    post-processing steps run in order. An image for which the provider gives no
    prompt gets an empty mask and ``result.note == "no prompt"``; the segmenter is
    not called.

    Args:
        prompter: A :class:`PromptProvider`.
        segmenter: A :class:`Segmenter`.
        threshold: Probability above which a pixel is foreground, in ``[0, 1]``.
        combine: ``"union"`` or ``"best"``.
        postprocess: Callables ``mask -> mask`` applied in order (for example
            ``[KeepLargestComponents(2), FillHoles()]``).
        preprocess: Intensity steps ``image -> image`` applied in order before the
            prompter and the segmenter see the image (for example
            ``[Window.preset("abdomen")]`` for CT in HU, ``[PercentileClip()]`` for MR,
            ``[CLAHE()]``). Without one, a float or signed-integer (HU) image is
            min-max scaled by the segmenter as before, and the pipeline logs once
            (logger ``medsamkit``) that it was.

    Example:
        >>> pipe = Pipeline(OracleBoxPrompter(), LiteMedSAM())
        >>> result = pipe(image, target=mask)
        >>> result.mask.shape == image.shape[:2]
    """

    def __init__(
        self,
        prompter: PromptProvider,
        segmenter: Segmenter,
        *,
        threshold: float = 0.5,
        combine: Combine = "union",
        postprocess: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
        preprocess: Sequence[Callable[[np.ndarray], np.ndarray]] = (),
    ) -> None:
        for name, component in (("prompter", prompter), ("segmenter", segmenter)):
            if isinstance(component, type):
                raise TypeError(
                    f"{name}: expected an instance, got the class {component.__name__}; call it first: {component.__name__}()"
                )
        if not callable(prompter) or not hasattr(prompter, "requires_target"):
            raise TypeError(
                f"prompter: expected a PromptProvider (callable with a requires_target attribute), got {type(prompter).__name__}"
            )
        if not isinstance(segmenter, Segmenter):
            raise TypeError(
                f"segmenter: expected a Segmenter (with model_id, encode() and decode()), got {type(segmenter).__name__}"
            )
        if combine not in ("union", "best"):
            raise ValueError(f"combine: expected 'union' or 'best', got {combine!r}")
        # A single step (callable) or a non-iterable would otherwise fail without naming the parameter.
        if callable(postprocess) or isinstance(postprocess, str) or not hasattr(postprocess, "__iter__"):
            raise TypeError(
                "postprocess: expected a sequence of callables mask -> mask (e.g. [FillHoles()]), "
                f"got {type(postprocess).__name__}"
            )
        steps = list(postprocess)
        for i, step in enumerate(steps):
            if not callable(step):
                raise TypeError(f"postprocess[{i}]: expected a callable mask -> mask, got {type(step).__name__}")
        bind = getattr(prompter, "bind_segmenter", None)
        if callable(bind):  # e.g. a head fitted on an embedding checks it once, here, not per image
            bind(segmenter)
        self.prompter = prompter
        self.segmenter = segmenter
        self.threshold = check_probability(threshold, name="threshold")
        self.combine = combine
        self.postprocess = tuple(steps)
        self.preprocess = _check_steps(preprocess, name="preprocess", what="image -> image (e.g. [Window(40, 400)])")
        self._said: set[str] = set()  # the notes said once (shared with the copies replace() makes)

    def __repr__(self) -> str:
        return (
            f"Pipeline({self.prompter!r}, {self.segmenter!r}, threshold={self.threshold}, "
            f"combine={self.combine!r}, postprocess={list(self.postprocess)!r}"
            + (f", preprocess={list(self.preprocess)!r})" if self.preprocess else ")")
        )

    def replace(self, **changes: Any) -> Pipeline:
        """A copy with some arguments changed (``pipe.replace(threshold=0.6)``); models are shared, and so
        are the notes said once (a copy does not say again what its original said, nor the reverse)."""
        kwargs: dict[str, Any] = {
            "prompter": self.prompter,
            "segmenter": self.segmenter,
            "threshold": self.threshold,
            "combine": self.combine,
            "postprocess": self.postprocess,
            "preprocess": self.preprocess,
        }
        unknown = set(changes) - set(kwargs)
        if unknown:
            raise TypeError(f"replace: unknown arguments {sorted(unknown)}; expected some of {sorted(kwargs)}")
        kwargs.update(changes)
        copy = Pipeline(kwargs.pop("prompter"), kwargs.pop("segmenter"), **kwargs)
        copy._said = self._said
        return copy

    def prompts_for(
        self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None
    ) -> Prompts:
        """The prompt provider's prompts for ``image``.

        ``target`` goes to providers with ``requires_target``; ``encoding`` to providers
        with ``uses_encoding`` (they read the segmenter's embedding).
        """
        return prompts_for(self.prompter, image, target=target, encoding=encoding)

    def __call__(
        self,
        image: np.ndarray | str | Path,
        *,
        target: np.ndarray | str | Path | None = None,
        encoding: ImageEncoding | None = None,
        prompts: Any = None,
    ) -> SegmentationResult:
        """Segment one image.

        Args:
            image: ``(H, W)`` or ``(H, W, C)`` image (uint8, uint16, float, ...), or
                the path of an image file (read with :func:`medsamkit.read_image`).
            target: ``(H, W)`` reference mask, or a mask file's path; needed by oracle
                prompters only.
            encoding: A reusable encoding of ``image`` from ``segmenter.encode``
                (skips the encoder, e.g. when sweeping thresholds); with
                ``preprocess`` steps, an encoding of ``pipe.preprocess_image(image)``.
            prompts: Prompts to use instead of asking the prompt provider:
                :class:`Prompts`, one box ``(x0, y0, x1, y1)``, a list of boxes, or a
                dict ``{"boxes": ..., "points": ..., "labels": ...}``
                (:meth:`Prompts.coerce`).

        Returns:
            A :class:`SegmentationResult` at the input resolution. Its ``note`` says
            when the image is so thin that the model sees almost nothing across it.
        """
        if isinstance(image, (str, Path)):
            from .data import read_image

            image = read_image(image)
        image = self.preprocess_image(image)
        size_hw = image.shape[:2]
        if isinstance(target, (str, Path)):
            from .data import read_mask

            target = read_mask(target)
        if target is not None:
            target = as_mask(target, name="target", size_hw=size_hw)
        if prompts is not None:
            prompts = Prompts.coerce(prompts, name="prompts")
        if prompts is None and getattr(self.prompter, "uses_encoding", False):
            # A provider reading the segmenter's embedding: encode first, once, and share it.
            if encoding is None:
                encoding = self.segmenter.encode(image)
            prompts = self.prompts_for(image, target=target, encoding=encoding)
        elif prompts is None:
            prompts = self.prompts_for(image, target=target)
        if prompts.n == 0:
            empty = np.zeros(size_hw, dtype=bool)
            return SegmentationResult(
                mask=empty,
                probabilities=np.zeros(size_hw, dtype=np.float32),
                prompt_masks=np.zeros((0, *size_hw), dtype=bool),
                scores=np.zeros(0, dtype=np.float32),
                prompts=prompts,
                note="no prompt",
            )
        prompts = prompts.clipped_to(size_hw)
        if encoding is None:
            encoding = self.segmenter.encode(image)
        elif tuple(encoding.size_hw) != tuple(size_hw):
            raise ValueError(f"encoding: expected an encoding of a {size_hw} image, got one of {encoding.size_hw}")
        if prompts.box_xyxy is None and getattr(self.segmenter, "trained_on_boxes_only", False):
            _warn_points_on_box_model(self.segmenter)
        decoded = self.segmenter.decode(encoding, prompts)
        result = self.finish(decoded.probabilities, decoded.scores, prompts)
        thin = _thin_note(size_hw, getattr(encoding, "input_size_hw", size_hw))
        return result if thin is None else dataclasses.replace(result, note=thin)

    def preprocess_image(self, image: np.ndarray) -> np.ndarray:
        """``image`` after the ``preprocess`` steps: what the prompter and segmenter see."""
        image = as_image(image)
        for i, step in enumerate(self.preprocess):
            out = as_image(step(image), name=f"preprocess[{i}] output")
            if out.shape[:2] != image.shape[:2]:
                raise ValueError(f"preprocess[{i}] output: expected size {image.shape[:2]}, got {out.shape[:2]}")
            image = out
        if not self.preprocess and "normalisation" not in self._said and image.dtype.kind in "fi":
            self._said.add("normalisation")
            _log.warning(
                "medsamkit: a %s image (values %.4g..%.4g) reaches the segmenter without an intensity step; "
                "it is min-max scaled per image to [0, 1], as for any image. For CT in HU give "
                "preprocess=[Window.preset('abdomen')] (CLI: --window abdomen), for MR [PercentileClip()]. "
                "Said once per pipeline.",
                image.dtype,
                float(image.min()),
                float(image.max()),
            )
        return image

    def finish(self, probabilities: np.ndarray, scores: np.ndarray, prompts: Prompts) -> SegmentationResult:
        """Threshold, combine and post-process decoded ``(N, H, W)`` probabilities."""
        prompt_masks = probabilities > self.threshold
        if self.combine == "best":
            best = int(np.argmax(scores))
            combined_prob = probabilities[best]
            mask = prompt_masks[best].copy()
        else:
            combined_prob = probabilities.max(axis=0)
            mask = prompt_masks.any(axis=0)
        for step in self.postprocess:
            mask = as_mask(step(mask), name="postprocess output", size_hw=mask.shape)
        return SegmentationResult(
            mask=mask,
            probabilities=combined_prob.astype(np.float32, copy=False),
            prompt_masks=prompt_masks,
            scores=np.asarray(scores, dtype=np.float32),
            prompts=prompts,
        )

    # -- configuration -------------------------------------------------------------

    @property
    def config(self) -> PipelineConfig:
        """The pipeline's configuration (prompter, segmenter, threshold, combine, post-processing)."""
        return PipelineConfig(
            prompter=ComponentConfig(**component_config(self.prompter)),
            segmenter=ComponentConfig(**component_config(self.segmenter)),
            threshold=self.threshold,
            combine=self.combine,
            postprocess=[ComponentConfig(**component_config(step)) for step in self.postprocess],
            preprocess=[ComponentConfig(**component_config(step)) for step in self.preprocess],
        )

    @classmethod
    def from_config(cls, config: PipelineConfig | dict[str, Any], *, base_dir: str | Path | None = None) -> Pipeline:
        """Rebuild a pipeline from its config.

        Relative file paths (a fitted prompter's ``state``, a segmenter's
        ``checkpoint``) are taken relative to ``base_dir``.
        """
        if not isinstance(config, PipelineConfig):
            config = PipelineConfig.model_validate(config)
        for part in (config.prompter, config.segmenter, *config.postprocess, *config.preprocess):
            if part.name.startswith("python:"):
                raise ValueError(
                    f"config: component {part.name} is not registered in medsamkit, so the pipeline "
                    "cannot be rebuilt from its config; build it in Python instead"
                )
        prompter_params = _resolve(config.prompter.params, "state", base_dir)
        segmenter_params = _resolve(config.segmenter.params, "checkpoint", base_dir)
        return cls(
            build_prompter(config.prompter.name, **prompter_params),
            load_segmenter(config.segmenter.name, **segmenter_params),
            threshold=config.threshold,
            combine=config.combine,
            postprocess=[build_postprocessor(p.name, **p.params) for p in config.postprocess],
            preprocess=[build_preprocessor(p.name, **p.params) for p in config.preprocess],
        )

    def save(self, directory: str | Path) -> Path:
        """Write ``pipeline.json`` (and a fitted prompter's state) into ``directory``.

        Returns:
            The path of ``pipeline.json``.

        Raises:
            ValueError: Before anything is written, if a component could not be rebuilt
                from the saved config: one that is not registered (a lambda
                post-processing step, a prompter class of your own: see
                :func:`~medsamkit.register_component`) or a segmenter wrapping an
                in-memory module. ``config`` still describes such a pipeline.
        """
        from .data import atomic_write_text

        config = self.config
        _check_rebuildable(config)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_state = getattr(self.prompter, "save", None)
        if callable(save_state):
            state_file = "prompter" + getattr(self.prompter, "state_suffix", ".npz")
            save_state(directory / state_file)
            config.prompter.params["state"] = state_file
        path = directory / CONFIG_FILE
        atomic_write_text(path, json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Pipeline:
        """Rebuild a pipeline saved with :meth:`save` (or by ``evaluate``) from ``directory``."""
        directory = Path(directory)
        path = directory / CONFIG_FILE if directory.is_dir() else directory
        if not path.is_file():
            raise FileNotFoundError(f"directory: expected {CONFIG_FILE} in {directory}, found none")
        return cls.from_config(json.loads(path.read_text()), base_dir=path.parent)

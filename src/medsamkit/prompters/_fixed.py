"""Prompts given by the user (the same for every image)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._registry import register_component
from .._types import ImageEncoding, Prompts

__all__ = ["FixedPrompter"]


def _from_config(*, prompts: dict[str, Any]) -> FixedPrompter:
    """Registry builder: the prompts of a config (``Prompts.to_dict()``)."""
    return FixedPrompter(Prompts.from_dict(prompts))


@register_component("prompter", "fixed", build=_from_config)
class FixedPrompter:
    """Returns the same prompts for every image (a box drawn once, a known landmark).

    Args:
        prompts: The prompts, in input-image pixels.
    """

    requires_target = False
    uses_encoding = False

    def __init__(self, prompts: Prompts) -> None:
        if not isinstance(prompts, Prompts):
            raise TypeError(f"prompts: expected Prompts, got {type(prompts).__name__}")
        self.prompts = prompts

    def __repr__(self) -> str:
        return f"FixedPrompter({self.prompts!r})"

    def params(self) -> dict[str, Any]:
        """Constructor arguments (for configs)."""
        return {"prompts": self.prompts.to_dict()}

    def __call__(self, image: np.ndarray, *, target: np.ndarray | None = None, encoding: ImageEncoding | None = None) -> Prompts:
        """The fixed prompts (``image``, ``target`` and ``encoding`` are not read)."""
        return self.prompts

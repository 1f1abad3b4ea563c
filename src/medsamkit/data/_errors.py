"""The error raised for files that cannot be read (shared by the 2D and the medical readers)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

__all__ = ["ImageReadError"]

PathLike = Union[str, "os.PathLike[str]"]


class ImageReadError(OSError):
    """An image or mask file could not be read (missing, empty, corrupt or unsupported).

    Attributes:
        path: The file that could not be read.
        reason: Why it could not be read.
    """

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image file '{self.path}': {reason}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep picklable (e.g. for multiprocessing)
        return (type(self), (self.path, self.reason))

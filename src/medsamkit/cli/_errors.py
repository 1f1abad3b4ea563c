"""Which exceptions are the user's (exit status 2, one line) and which are bugs (traceback, exit 1).

A *user error* is something the person running the command can fix without touching
medsamkit's code:

* :class:`UsageError`: a bad combination of command-line options or inputs, found by the CLI;
* :class:`ValueError` (including pydantic's ``ValidationError``): a bad value, found by the
  library's validators (they name the parameter or file, expected vs got);
* :class:`OSError` (``FileNotFoundError``, ``PermissionError``, ``ImageReadError``, a full
  disk, ...): a missing, unreadable or unwritable file or folder;
* :class:`ImportError` whose message says ``pip install``: a missing optional package
  (the library raises ``ImportError("... pip install medsamkit[x]") from None``), and a
  ``ModuleNotFoundError`` for one of the packages of an extra (:data:`OPTIONAL_PACKAGES`),
  reported with the extra to install.

Everything else (``TypeError``, ``KeyError``, ``AttributeError``, ``RuntimeError``, an
``ImportError`` without an install hint, ...) is a bug in medsamkit: the CLI prints the
traceback and exits with status 1.
"""

from __future__ import annotations

__all__ = ["OPTIONAL_PACKAGES", "UsageError", "is_user_error", "user_message"]

#: Top-level modules of the optional dependencies -> the extra that installs them.
OPTIONAL_PACKAGES = {
    "segment_anything": "sam",
    "segment_anything_hq": "sam",
    "torchvision": "sam",
    "monai": "finetune",
    "ultralytics": "yolo",
    "pytorch_grad_cam": "cam",
    "peft": "lora",
    "openvino": "openvino",
    "SimpleITK": "medical",
    "pydicom": "medical",
    "highdicom": "medical",
    "nibabel": "medical",
    "ray": "ray",
}


class UsageError(Exception):
    """A problem with the command's arguments or inputs (exit status 2)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (exit 2, one line) rather than a bug (traceback, exit 1)."""
    if isinstance(exc, (UsageError, ValueError, OSError)):
        return True
    return isinstance(exc, ImportError) and ("pip install" in str(exc) or _missing_extra(exc) is not None)


def _missing_extra(exc: ImportError) -> str | None:
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    return OPTIONAL_PACKAGES.get(exc.name.partition(".")[0])


def user_message(exc: BaseException) -> str:
    """The one line printed for a user error (a missing optional package names its extra)."""
    extra = _missing_extra(exc) if isinstance(exc, ImportError) and "pip install" not in str(exc) else None
    if extra is not None:
        return f"{exc}: pip install 'medsamkit[{extra}]'"
    return str(exc)

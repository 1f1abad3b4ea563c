"""Which exceptions are the user's (exit status 2, one line) and which are bugs (traceback, exit 1).

A *user error* is something the person running the command can fix without touching
medsamkit's code:

* :class:`UsageError`: a bad combination of command-line options or inputs, found by the CLI;
* :class:`ValueError` (including pydantic's ``ValidationError``): a bad value, found by the
  library's validators (they name the parameter or file, expected vs got);
* :class:`OSError` (``FileNotFoundError``, ``PermissionError``, ``ImageReadError``, a full
  disk, ...): a missing, unreadable or unwritable file or folder;
* :class:`ImportError` whose message says ``pip install``: a missing optional package
  (the library raises ``ImportError("... pip install medsamkit[x]") from None``).

Everything else (``TypeError``, ``KeyError``, ``AttributeError``, ``RuntimeError``, an
``ImportError`` without an install hint, ...) is a bug in medsamkit: the CLI prints the
traceback and exits with status 1.
"""

from __future__ import annotations

__all__ = ["UsageError", "is_user_error"]


class UsageError(Exception):
    """A problem with the command's arguments or inputs (exit status 2)."""


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix (exit 2, one line) rather than a bug (traceback, exit 1)."""
    if isinstance(exc, (UsageError, ValueError, OSError)):
        return True
    return isinstance(exc, ImportError) and "pip install" in str(exc)

"""The ``medsamkit`` command line: ``evaluate``, ``segment`` and ``demo``."""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]

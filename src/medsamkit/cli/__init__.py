"""The ``medsamkit`` command line: one module per command (``evaluate``, ``segment``, ``demo``, ...)."""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]

"""Where medsamkit keeps files of its own (caches), and content digests of files.

The bottom floor for paths: nothing here imports another medsamkit module, so the
embedding cache (:mod:`medsamkit._cache`), the accelerated encoders
(:mod:`medsamkit.segmenters`) and training all read the same folders from one place.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["default_cache_dir", "file_digest"]


def default_cache_dir() -> Path:
    """``$MEDSAMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsamkit/embeddings`` (``~/.cache/...``)."""
    env = os.environ.get("MEDSAMKIT_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medsamkit" / "embeddings"


def file_digest(path: str | os.PathLike[str]) -> str:
    """First 16 hex digits of the file's SHA-256 (read in 1 MiB blocks): identifies weights in model ids."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]

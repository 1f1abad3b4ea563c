"""medsamkit._paths: the cache folder and file digests, in one place."""

from __future__ import annotations

import hashlib

from medsamkit._cache import EmbeddingCache
from medsamkit._paths import default_cache_dir, file_digest
from medsamkit.segmenters._fast import openvino_cache_dir


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAMKIT_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MEDSAMKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "medsamkit" / "embeddings"


def test_embedding_cache_and_openvino_cache_read_the_same_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSAMKIT_CACHE_DIR", str(tmp_path / "emb"))
    monkeypatch.delenv("MEDSAMKIT_OPENVINO_CACHE", raising=False)
    assert EmbeddingCache().directory == tmp_path / "emb"
    assert openvino_cache_dir() == tmp_path / "openvino"


def test_file_digest_is_the_sha256_prefix_of_the_content(tmp_path):
    path = tmp_path / "w.bin"
    data = bytes(range(256)) * 5000  # more than one 1 MiB block
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()[:16]
    assert file_digest(str(path)) == file_digest(path)

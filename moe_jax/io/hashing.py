"""The one set of sha256 helpers: of bytes, of text, of a file or object (read in chunks), of many files.

Every size-and-sha256 a moe_jax artifact records (``moe_jax.io.integrity``) and every content key
(staged tokenizers, evaluation data) is computed here. Paths may be local or ``gs://`` URLs
(``moe_jax.io.storage``).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from moe_jax.io import storage

CHUNK = 1 << 20  # bytes read at a time: objects can be GBs; per thread of digest_files at most THREADS MiB in memory
THREADS = 8  # hashlib releases the GIL (and object reads wait on the network): files hash in parallel


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """sha256 of ``text`` encoded as UTF-8."""
    return sha256_bytes(text.encode("utf-8"))


def file_digest(path: str | os.PathLike) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file or object, read in chunks."""
    h, n = hashlib.sha256(), 0
    with storage.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
            n += len(chunk)
    return n, h.hexdigest()


def digest_files(paths: Sequence[str]) -> list[tuple[int, str]]:
    """``file_digest`` of each of ``paths`` (in order), ``THREADS`` files at a time."""
    if not paths:
        return []
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda p: file_digest(p), paths))

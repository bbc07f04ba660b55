"""Atomic writes: a reader sees either the old file or the complete new one, never a partial write,
so an interrupted run can always tell finished outputs from unfinished ones.

Local paths: temp file in the same directory + fsync + ``os.replace``. ``gs://`` paths: one upload
(an object is visible only complete). The implementation lives in ``moe_jax.storage``, which also
holds the manifest-based ``publish`` for directories of files.
"""

from __future__ import annotations

from moe_jax.storage import atomic_write, atomic_write_bytes, atomic_write_json, read_json

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "read_json"]

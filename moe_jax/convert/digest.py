"""Size and sha256 of every file of a converted checkpoint, recorded at conversion and checked later.

The record (``moe_jax.json`` under ``"files"``) maps each path under the converted dir (``params/...``,
copied config and tokenizer files; not ``moe_jax.json`` itself) to ``{"size", "sha256"}``. A byte
flipped in a compressed parameter chunk otherwise loads silently as NaN or wrong weights, so:

* ``damage(dir, record, content=False)``: missing and resized files (a directory listing, cheap):
  every load checks this;
* ``damage(dir, record, content=True)``: also the sha256 of every file (reads the whole checkpoint
  once): the convert stage checks this before it declares a checkpoint up to date, and reconverts
  a damaged one.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

_CHUNK = 1 << 20  # per thread: hashing adds at most _THREADS MiB of host memory
_THREADS = 8  # hashlib releases the GIL: files hash in parallel


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str, skip: tuple[str, ...]) -> list[str]:
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(d, n), root) for n in names]
    return sorted(p for p in out if p not in skip)


def record_files(root: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``root`` except ``skip``."""
    paths = _files(root, skip)
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(lambda p: sha256_file(os.path.join(root, p)), paths))
    return {p: {"size": os.path.getsize(os.path.join(root, p)), "sha256": h} for p, h in zip(paths, digests)}


def damage(root: str, record: Mapping[str, Mapping[str, Any]], *, content: bool = True) -> list[str]:
    """How the files under ``root`` differ from ``record``: one line per missing, resized or (with
    ``content``) changed file; ``[]`` when intact. Files not in the record are ignored."""
    problems, to_hash = [], []
    for rel, want in sorted(record.items()):
        path = os.path.join(root, rel)
        try:
            size = os.path.getsize(path)
        except OSError:
            problems.append(f"{rel} is missing")
            continue
        if size != want["size"]:
            problems.append(f"{rel} has {size} bytes, {want['size']} were written")
        elif content:
            to_hash.append(rel)
    with ThreadPoolExecutor(_THREADS) as pool:
        got = list(pool.map(lambda p: sha256_file(os.path.join(root, p)), to_hash))
    problems += [f"{rel} changed after it was written (sha256 {h[:12]}..., {record[rel]['sha256'][:12]}... "
                 "was written)" for rel, h in zip(to_hash, got) if h != record[rel]["sha256"]]
    return problems

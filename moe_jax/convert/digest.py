"""Size and sha256 of every file of a converted checkpoint, recorded at conversion and checked later.

The record (``moe_jax.json`` under ``"files"``) maps each path under the converted dir (``params/...``,
copied config and tokenizer files; not ``moe_jax.json`` itself) to ``{"size", "sha256"}``. A byte
flipped in a compressed parameter chunk otherwise loads silently as NaN or wrong weights, so:

* ``damage(dir, record, content=False)``: missing and resized files (a directory listing, cheap):
  every load checks this;
* ``damage(dir, record, content=True)``: also the sha256 of every file (reads the whole checkpoint
  once): the convert stage checks this before it declares a checkpoint up to date, and reconverts
  a damaged one.

Local directories and ``gs://`` prefixes alike (``moe_jax.storage``); on object storage the sizes
come from one listing.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from moe_jax import storage

_CHUNK = 1 << 20  # per thread: hashing adds at most _THREADS MiB of host memory
_THREADS = 8  # hashlib releases the GIL (and object reads wait on the network): files hash in parallel


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sizes(root: str) -> dict[str, int]:
    """``{relative path ("/"-joined): size}`` of every file under ``root``, local or ``gs://`` ({} if
    none). On object storage one listing gives every size (not a request per object)."""
    root = os.fspath(root)
    if storage.is_remote(root):
        import fsspec

        fs, base = fsspec.core.url_to_fs(root)
        base = base.rstrip("/")
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: int(info["size"]) for p, info in found.items() if p.startswith(base + "/")}
    return {rel: os.path.getsize(os.path.join(root, rel)) for rel in storage.walk_files(root)}


def record_files(root: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``root`` except ``skip``."""
    sizes = file_sizes(root)
    paths = sorted(p for p in sizes if p not in skip)
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(lambda p: sha256_file(storage.join(root, p)), paths))
    return {p: {"size": sizes[p], "sha256": h} for p, h in zip(paths, digests)}


def damage(root: str, record: Mapping[str, Mapping[str, Any]], *, content: bool = True) -> list[str]:
    """How the files under ``root`` differ from ``record``: one line per missing, resized or (with
    ``content``) changed file; ``[]`` when intact. Files not in the record are ignored."""
    problems, to_hash = [], []
    sizes = file_sizes(root)
    for rel, want in sorted(record.items()):
        size = sizes.get(rel)
        if size is None:
            problems.append(f"{rel} is missing")
            continue
        if size != want["size"]:
            problems.append(f"{rel} has {size} bytes, {want['size']} were written")
        elif content:
            to_hash.append(rel)
    with ThreadPoolExecutor(_THREADS) as pool:
        got = list(pool.map(lambda p: sha256_file(storage.join(root, p)), to_hash))
    problems += [f"{rel} changed after it was written (sha256 {h[:12]}..., {record[rel]['sha256'][:12]}... "
                 "was written)" for rel, h in zip(to_hash, got) if h != record[rel]["sha256"]]
    return problems

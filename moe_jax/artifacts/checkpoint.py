"""Size and sha256 of every file of a converted checkpoint, recorded at conversion and checked later.

The record (``moe_jax.json`` under ``"files"``) maps each path under the converted dir (``params/...``,
copied config and tokenizer files; not ``moe_jax.json`` itself) to ``{"size", "sha256"}``. A byte
flipped in a compressed parameter chunk otherwise loads silently as NaN or wrong weights, so:

* ``damage(dir, record, content=False)``: missing and resized files (a directory listing, cheap):
  every load checks this;
* ``damage(dir, record, content=True)``: also the sha256 of every file (reads the whole checkpoint
  once): the convert stage checks this before it declares a checkpoint up to date, and reconverts
  a damaged one.

Local directories and ``gs://`` prefixes alike (``moe_jax.io.storage``). On object storage the sizes
come from one listing, and the record also keeps each object's md5 as GCS computed it on upload:
the content check compares those (a listing) instead of downloading the checkpoint again.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Mapping

from moe_jax.io import storage

_CHUNK = 1 << 20  # per thread: hashing adds at most _THREADS MiB of host memory
_THREADS = 8  # hashlib releases the GIL (and object reads wait on the network): files hash in parallel


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with storage.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def listing(root: str) -> dict[str, dict[str, Any]]:
    """``{relative path ("/"-joined): {"size"[, "md5"]}}`` of every file under ``root`` ({} if none).
    On ``gs://`` one listing gives every size and the md5 GCS computed on upload (``md5Hash``; absent
    for composed objects), not a request per object."""
    root = os.fspath(root)
    if storage.is_remote(root):
        import fsspec

        fs, base = fsspec.core.url_to_fs(root)
        base = base.rstrip("/")
        try:
            found = fs.find(base, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(base) + 1:]: {"size": int(info["size"]), **({"md5": info["md5Hash"]} if info.get("md5Hash") else {})}
                for p, info in found.items() if p.startswith(base + "/")}
    return {rel: {"size": os.path.getsize(os.path.join(root, rel))} for rel in storage.walk_files(root)}


def record_files(root: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"[, "md5"]}}`` of every file under ``root`` except ``skip``
    (``md5``: GCS's, on ``gs://``: lets ``damage`` check the content without reading it)."""
    found = listing(root)
    paths = sorted(p for p in found if p not in skip)
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(lambda p: sha256_file(storage.join(root, p)), paths))
    return {p: {**found[p], "sha256": h} for p, h in zip(paths, digests)}


def damage(root: str, record: Mapping[str, Mapping[str, Any]], *, content: bool = True) -> list[str]:
    """How the files under ``root`` differ from ``record``: one line per missing, resized or (with
    ``content``) changed file; ``[]`` when intact. Files not in the record are ignored. An object
    whose record and listing both carry GCS's md5 is compared by it (no bytes read); others are hashed."""
    problems, to_hash = [], []
    found = listing(root)
    for rel, want in sorted(record.items()):
        got = found.get(rel)
        if got is None:
            problems.append(f"{rel} is missing")
            continue
        if got["size"] != want["size"]:
            problems.append(f"{rel} has {got['size']} bytes, {want['size']} were written")
        elif content and want.get("md5") and got.get("md5"):
            if got["md5"] != want["md5"]:
                problems.append(f"{rel} changed after it was written (md5 {got['md5']}, {want['md5']} was written)")
        elif content:
            to_hash.append(rel)
    with ThreadPoolExecutor(_THREADS) as pool:
        got = list(pool.map(lambda p: sha256_file(storage.join(root, p)), to_hash))
    problems += [f"{rel} changed after it was written (sha256 {h[:12]}..., {record[rel]['sha256'][:12]}... "
                 "was written)" for rel, h in zip(to_hash, got) if h != record[rel]["sha256"]]
    return problems

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
the content check compares those (a listing) instead of downloading the checkpoint again. The checks
are ``moe_jax.io.integrity``'s (``LAYOUT``: this record's layout).
"""

from __future__ import annotations

from typing import Any, Mapping

from moe_jax.io import hashing, integrity, storage

# the record: moe_jax.json's "files" ({"size", "sha256"[, "md5"]} per path); its damage lines as loads print them
LAYOUT = integrity.RecordLayout(
    "moe_jax.json", nested=True, md5=True,
    wording=integrity.Wording(item_missing="{rel} is missing", item_resized="{rel} has {size} bytes, {want_size} were written",
                              item_changed="{rel} changed after it was written ({algo} {got}, {want} was written)"))


def record_files(root: str, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"[, "md5"]}}`` of every file under ``root`` except ``skip``
    (``md5``: GCS's, on ``gs://``: lets ``damage`` check the content without reading it)."""
    found = storage.file_listing(root)
    paths = sorted(p for p in found if p not in skip)
    digests = hashing.digest_files([storage.join(root, p) for p in paths])
    return {p: {**found[p], "sha256": sha} for p, (_, sha) in zip(paths, digests)}


def damage(root: str, record: Mapping[str, Mapping[str, Any]], *, content: bool = True) -> list[str]:
    """How the files under ``root`` differ from ``record``: one line per missing, resized or (with
    ``content``) changed file; ``[]`` when intact. Files not in the record are ignored. An object
    whose record and listing both carry GCS's md5 is compared by it (no bytes read); others are hashed."""
    return integrity.damage(root, LAYOUT, {LAYOUT.files_key: dict(record)}, sorted(record), content=content)

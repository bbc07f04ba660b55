"""Provenance chain: each stage output records the digests of the inputs it was computed from.

An output directory holds ``provenance.json``::

    {"format": "moe_jax.provenance/1",
     "inputs": {name: {"path": path (relative to the workdir when inside it), "digest": digest}},
     "config": fingerprint of the settings that shaped the output}

A reader compares the recorded digests with those of the inputs now (``stale``: from the recorded
paths alone; ``changed``: against the inputs a config names now) and recomputes the output or refuses
it, so that e.g. a report never shows the analysis of a previous model's routing store.

Digests (``path_digest``) are cheap: a file's sha256; for a directory with a manifest (a routing store's
``meta.json``, an evaluation's ``manifest.json``) the fingerprint of the manifest's own fingerprint and
the sha256 recorded per data file, which the readers verify on read. No file in the directory is
rehashed here, and volatile manifest fields (code version, timings) do not count.

An output directory is published with ``moe_jax.io.integrity`` (``PROVENANCE``: this record's layout):
its data files first, then ``provenance.json`` LAST, which also records each data file's size and sha256
(``"files"``); a rerun first removes the old ``provenance.json``. So on a local path and on ``gs://``
(no rename, no directories) alike, a reader trusts only a directory whose ``provenance.json`` exists,
and only the files it names with their recorded digest (``read_output``: ``integrity.verify``).

Paths may be local or ``gs://`` URLs (``moe_jax.io.storage``).

Below the stages: imports ``moe_jax.io`` (storage, hashing, integrity), the workdir layout, the records'
layouts (routing store, eval records) and the fingerprint helper.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from moe_jax.io import hashing, integrity, storage
from moe_jax.artifacts import eval_records, layout as wd, routing_store
from moe_jax.artifacts.fingerprint import fingerprint

STAMP = "provenance.json"
FORMAT = "moe_jax.provenance/1"
PROVENANCE = integrity.RecordLayout(STAMP, format=FORMAT, wording=integrity.Wording(
    no_record="{path}: {record_path} is missing (the run writing {dir} did not finish){tail}",
    unlisted="{path} is not among the files {record_path} records", missing="{path} is recorded in {record} but missing{tail}",
    changed="{path} has {size} bytes with sha256 {sha}, but {want_size} bytes with sha256 {want_sha} were written{tail}"))
# the records of directory inputs: a routing store's meta.json, an evaluation's manifest.json
MANIFESTS = (routing_store.LAYOUT, eval_records.LAYOUT)
# the stage that writes each output directory of a workdir, named in "run it again" messages
STAGE_OF_DIR = {wd.ANALYSIS: "analyze", wd.EVAL: "eval", wd.STEER: "steer", wd.REPORT: "report"}


def rerun_hint(out_dir: str) -> str:
    """"run the <stage> stage again: <command>" for an output directory of a workdir (``STAGE_OF_DIR``)."""
    out_dir = storage.absolute(out_dir).rstrip("/")
    stage = STAGE_OF_DIR.get(os.path.basename(out_dir))
    if stage is None:
        return "run the stage that wrote it again"
    return integrity.repair(stage, os.path.dirname(out_dir))


def file_sha256(path: str) -> str:
    return hashing.file_digest(path)[1]


def path_digest(path: str) -> str | None:
    """Digest of an input: a file's sha256, a manifest directory's content fingerprint (module
    docstring); None when the path does not exist (or is a directory without a manifest)."""
    if storage.isfile(path):
        return file_sha256(path)
    for layout in MANIFESTS:
        manifest = integrity.read_record(path, layout, invalid_ok=True)
        if manifest is not None:
            return fingerprint({"fingerprint": manifest.get("fingerprint"), "files": {
                k: (v or {}).get(layout.sha_key) for k, v in integrity.listed(manifest, layout).items()}})
    return None


def _stored_path(path: str, root: str) -> str:
    """``path`` relative to ``root`` when inside it (local or ``gs://``), else as given."""
    if storage.is_remote(path) or storage.is_remote(root):
        base = storage.absolute(root) + "/"
        return path[len(base):] if storage.absolute(path).startswith(base) else path
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return path if rel.startswith(os.pardir) else rel


def _real_path(stored: str, root: str) -> str:
    return stored if os.path.isabs(stored) or storage.is_remote(stored) else storage.join(root, stored)


def describe(paths: Mapping[str, str], root: str) -> dict[str, dict[str, Any]]:
    """``{name: {"path", "digest"}}`` of the inputs ``{name: path}`` (paths under ``root`` kept relative)."""
    return {name: {"path": _stored_path(p, root), "digest": path_digest(p)} for name, p in paths.items()}


def unpublish(out_dir: str) -> None:
    """Removes ``out_dir``'s ``provenance.json`` (if any) before its files are rewritten: until the new
    one is written last, no reader trusts the directory (module docstring)."""
    integrity.unpublish(out_dir, PROVENANCE)


def write_stamp(out_dir: str, inputs: Mapping[str, Mapping[str, Any]], config: str | None = None,
                files: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Records ``inputs`` (from ``describe``), the config fingerprint and, when given, the output's
    files (``{name relative to out_dir: integrity.entry_of(bytes)}``) beside an output; call it last."""
    stamp = {"format": FORMAT, "inputs": dict(inputs), "config": config}
    if files is not None:
        stamp["files"] = {name: dict(files[name]) for name in sorted(files)}
    integrity.write_record(out_dir, stamp, PROVENANCE)


def read_stamp(out_dir: str) -> dict[str, Any] | None:
    """The output's record; None when absent, unreadable or of another format (the output predates it)."""
    stamp = integrity.read_record(out_dir, PROVENANCE, invalid_ok=True)
    return stamp if stamp is not None and stamp.get("format") == FORMAT else None


def damaged(stamp: Mapping[str, Any], out_dir: str, names: list[str] | None = None) -> list[str]:
    """Of the files ``stamp`` records (or of ``names`` among them), those missing or whose size or
    sha256 differs now, as ``"name (why)"``; [] for a stamp that records no files (older outputs)."""
    return integrity.damage(out_dir, PROVENANCE, stamp, names)


def read_output(out_dir: str, name: str, fix: str | None = None) -> bytes:
    """The bytes of ``out_dir/name`` if the directory's ``provenance.json`` names it and they match its
    record. ``UnpublishedError``: no ``provenance.json`` (an unfinished write) or a file it does not
    name; ``DigestMismatchError``: damaged since. A stamp that records no files (written before files
    were recorded) vouches for every file, as it did then. Messages end with ``fix`` (default: the
    stage that writes ``out_dir`` and its command, ``rerun_hint``)."""
    stamp = read_stamp(out_dir)
    if stamp is not None and "files" not in stamp:
        return storage.read_bytes(storage.join(out_dir, name))
    return integrity.verify(out_dir, name, PROVENANCE, hint=fix or rerun_hint(out_dir), record=stamp or {})


def input_paths(stamp: Mapping[str, Any], root: str) -> dict[str, str]:
    """``{name: path}`` of the inputs ``stamp`` records (relative ones under ``root``)."""
    return {name: _real_path(rec["path"], root) for name, rec in stamp["inputs"].items()}


def stale(stamp: Mapping[str, Any], root: str) -> list[str]:
    """Names of the recorded inputs whose digest differs now (or that are gone)."""
    return [name for name, rec in stamp["inputs"].items()
            if path_digest(_real_path(rec["path"], root)) != rec["digest"]]


def changed(stamp: Mapping[str, Any], inputs: Mapping[str, Mapping[str, Any]], config: str | None = None) -> list[str]:
    """What differs between the recorded inputs and the current ``inputs`` (``describe``) and config
    fingerprint: input names (added, removed, other path or digest) and ``"config"``."""
    recorded = stamp["inputs"]
    out = [n for n in dict.fromkeys([*recorded, *inputs]) if recorded.get(n) != inputs.get(n)]
    return out + (["config"] if stamp.get("config") != config else [])


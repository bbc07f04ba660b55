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

An output directory is published like ``moe_jax.io.storage.publish``: its data files first, then
``provenance.json`` LAST, which also records each data file's size and sha256 (``"files"``); a rerun
first removes the old ``provenance.json``. So on a local path and on ``gs://`` (no rename, no
directories) alike, a reader trusts only a directory whose ``provenance.json`` exists, and only the
files it names with their recorded digest (``read_output``).

Paths may be local or ``gs://`` URLs (``moe_jax.io.storage``).

Below the stages: imports ``moe_jax.io.storage``, ``moe_jax.pipeline``, the workdir layout, the stage
order (``moe_jax.pipeline.registry.STAGES``, a table) and the fingerprint helper.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline.registry import STAGES
from moe_jax.io.storage import DigestMismatchError, UnpublishedError, atomic_write_json, read_json
from moe_jax.pipeline.common import source_identity
from moe_jax.artifacts.fingerprint import fingerprint

STAMP = "provenance.json"
FORMAT = "moe_jax.provenance/1"
# manifest file of a directory input -> its key of per-file records (each with "file_sha256")
MANIFESTS = (("meta.json", "languages"), ("manifest.json", "files"))
# the stage that writes each output directory of a workdir, named in "run it again" messages
STAGE_OF_DIR = {wd.ANALYSIS: "analyze", wd.EVAL: "eval", wd.STEER: "steer", wd.REPORT: "report"}


def command(workdir: str, stages: list[str] | tuple[str, ...], overwrite: tuple[str, ...] = ()) -> str:
    """The launch command running ``stages`` (put in pipeline order) on ``workdir``, with
    ``--config.<stage>.overwrite=True`` for each stage of ``overwrite``."""
    names = ",".join(s for s in STAGES if s in stages)
    flags = "".join(f" --config.{s}.overwrite=True" for s in STAGES if s in overwrite)
    return f"python -m moe_jax.launch --config=<your config> --workdir={workdir} --stages={names}{flags}"


def rerun_hint(out_dir: str) -> str:
    """"run the <stage> stage again: <command>" for an output directory of a workdir (``STAGE_OF_DIR``)."""
    out_dir = storage.absolute(out_dir).rstrip("/")
    stage = STAGE_OF_DIR.get(os.path.basename(out_dir))
    if stage is None:
        return "run the stage that wrote it again"
    return f"run the {stage} stage again: {command(os.path.dirname(out_dir), [stage])}"


def file_sha256(path: str) -> str:
    return storage.digest(path)[1]


def path_digest(path: str) -> str | None:
    """Digest of an input: a file's sha256, a manifest directory's content fingerprint (module
    docstring); None when the path does not exist (or is a directory without a manifest)."""
    if storage.isfile(path):
        return file_sha256(path)
    for name, files_key in MANIFESTS:
        manifest = read_json(storage.join(path, name), invalid_ok=True)
        if isinstance(manifest, dict):
            files = manifest.get(files_key) or {}
            return fingerprint({"fingerprint": manifest.get("fingerprint"),
                                "files": {k: (v or {}).get("file_sha256") for k, v in files.items()}})
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
    stamp = storage.join(out_dir, STAMP)
    if storage.exists(stamp):
        storage.remove(stamp)


def write_stamp(out_dir: str, inputs: Mapping[str, Mapping[str, Any]], config: str | None = None,
                files: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Records ``inputs`` (from ``describe``), the config fingerprint and, when given, the output's
    files (``{name relative to out_dir: storage.record(bytes)}``) beside an output; call it last."""
    stamp = {"format": FORMAT, "inputs": dict(inputs), "config": config}
    if files is not None:
        stamp["files"] = {name: dict(files[name]) for name in sorted(files)}
    atomic_write_json(storage.join(out_dir, STAMP), stamp)


def read_stamp(out_dir: str) -> dict[str, Any] | None:
    """The output's record; None when absent, unreadable or of another format (the output predates it)."""
    stamp = read_json(storage.join(out_dir, STAMP), invalid_ok=True)
    return stamp if isinstance(stamp, dict) and stamp.get("format") == FORMAT else None


def damaged(stamp: Mapping[str, Any], out_dir: str, names: list[str] | None = None) -> list[str]:
    """Of the files ``stamp`` records (or of ``names`` among them), those missing or whose size or
    sha256 differs now, as ``"name (why)"``; [] for a stamp that records no files (older outputs)."""
    files = stamp.get("files") or {}
    out = []
    for name in (files if names is None else [n for n in names if n in files]):
        path = storage.join(out_dir, name)
        if not storage.exists(path):
            out.append(f"{name} (missing)")
        elif list(storage.digest(path)) != [files[name]["size"], files[name]["sha256"]]:
            out.append(f"{name} (changed after it was written)")
    return out


def read_output(out_dir: str, name: str, fix: str | None = None) -> bytes:
    """The bytes of ``out_dir/name`` if the directory's ``provenance.json`` names it and they match its
    record. ``UnpublishedError``: no ``provenance.json`` (an unfinished write) or a file it does not
    name; ``DigestMismatchError``: damaged since. A stamp that records no files (written before files
    were recorded) vouches for every file, as it did then. Messages end with ``fix`` (default: the
    stage that writes ``out_dir`` and its command, ``rerun_hint``)."""
    path = storage.join(out_dir, name)
    fix = fix or rerun_hint(out_dir)
    stamp = read_stamp(out_dir)
    if stamp is None:
        raise UnpublishedError(f"{path}: {storage.join(out_dir, STAMP)} is missing (the run writing "
                               f"{out_dir} did not finish); {fix}")
    if "files" not in stamp:
        return storage.read_bytes(path)
    rec = stamp["files"].get(name)
    if rec is None:
        raise UnpublishedError(f"{path} is not among the files {storage.join(out_dir, STAMP)} records")
    try:
        data = storage.read_bytes(path)
    except FileNotFoundError as e:
        raise DigestMismatchError(f"{path} is recorded in {STAMP} but missing; {fix}") from e
    got = storage.record(data)
    if got != {"size": rec["size"], "sha256": rec["sha256"]}:
        raise DigestMismatchError(f"{path} has {got['size']} bytes with sha256 {got['sha256']}, but {rec['size']} "
                                  f"bytes with sha256 {rec['sha256']} were written; {fix}")
    return data


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


# the fields of a routing store's meta and an evaluation's identity that name the model's weights
MODEL_FIELDS = ("model_source", "dtype")


def differences(recorded: Any, now: Any, name: str) -> list[str]:
    """``"name.key: recorded != now"`` for each differing leaf of two JSON-like values (dicts descended)."""
    if isinstance(recorded, Mapping) and isinstance(now, Mapping):
        return [d for k in dict.fromkeys([*recorded, *now])
                for d in differences(recorded.get(k), now.get(k), f"{name}.{k}")]
    return [] if fingerprint(recorded) == fingerprint(now) else [f"{name}: {recorded!r} (recorded) != {now!r} (now)"]


def model_differences(recorded: Mapping[str, Any], config: Any) -> list[str]:
    """How the model an output records (``model_source``, ``dtype``) differs from ``config.model``'s;
    fields the record lacks are not compared. [] = the same model."""
    now = {"model_source": source_identity(config), "dtype": config.model.dtype}
    return [d for k in MODEL_FIELDS if recorded.get(k) is not None for d in differences(recorded[k], now[k], k)]


# outputs a later stage reads that record their model: (stage that writes it, its directory in a workdir,
# manifest file, key of the model's identity in it or None for the manifest itself)
MODEL_OUTPUTS = (("collect", wd.routing_dir, "meta.json", None), ("eval", wd.eval_dir, "manifest.json", "identity"),
                 ("steer", lambda w: storage.join(wd.steer_dir(w), "baseline"), "manifest.json", "identity"))


def model_problems(config: Any, workdir: str, consumer: str, outputs: list[tuple[str, str, str, str | None]]) -> list[str]:
    """Of ``outputs`` (stage, directory, manifest, identity key, like ``MODEL_OUTPUTS``), those recording
    another model than ``config.model``, as ``"<dir> holds outputs of another model (<field>: ...)"``,
    then one line with the command that redoes them all for the ``consumer`` stage: the stages that wrote
    them with ``overwrite`` (their preflight refuses outputs of another model otherwise), convert first
    when ``workdir/checkpoint`` is of another model too (collect, eval and steer refuse it), analyze after
    a new routing store. [] without a model section or when every output is of ``config.model``."""
    if config is None or not hasattr(config, "get") or "model" not in config:
        return []
    found = []
    for stage, path, manifest, key in outputs:
        recorded = read_json(storage.join(path, manifest), invalid_ok=True)
        recorded = (recorded or {}).get(key) if key and isinstance(recorded, dict) else recorded
        diffs = model_differences(recorded, config) if isinstance(recorded, dict) else []
        if diffs:
            found.append((stage, path, diffs))
    if not found:
        return []
    redo = {stage for stage, _, _ in found}
    converted = read_json(wd.convert_stamp(workdir), invalid_ok=True)
    if not isinstance(converted, dict) or model_differences(
            {"model_source": converted.get("source"), "dtype": converted.get("dtype")}, config):
        redo.add("convert")
    if "collect" in redo:
        redo.add("analyze")
    return [f"{path} holds outputs of another model ({'; '.join(diffs)})" for _, path, diffs in found] + [
        "to compute them again with config.model (their files are replaced), run: "
        + command(workdir, [*redo, consumer], overwrite=tuple(stage for stage, _, _ in found))]

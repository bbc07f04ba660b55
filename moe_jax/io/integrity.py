"""The one integrity primitive: data objects first, then ONE record of their sizes and sha256, written
LAST; readers trust an object only through that record.

A directory is not atomic anywhere (object stores have no rename and no directories), so every
artifact of moe_jax is published the same way:

* ``publish``: each data object is written atomically (``moe_jax.io.storage.atomic_write``), then the
  record listing it with its size and sha256. An entry being rewritten is first dropped from the
  record, so no reader ever pairs an old entry with new bytes; a crash between data and record leaves
  an object no record names: invisible, and redone by the next run.
* ``verify``: the one verifying reader: the object is listed, present, and of the recorded size and
  sha256, else an error naming it and ending with the repair hint (``repair``: the command that
  redoes the artifact). ``damage``: the same check over many objects, as ``"name (why)"`` lines.
* ``unpublish``: removes the record before a directory is rewritten wholesale.
* Resumable units (``Units``: open, done, write, read): a store whose record is opened for one
  fingerprint; a unit counts as done only when listed and intact, a damaged one is logged and redone.

The differences between artifacts are data (``RecordLayout``): the record file's name, the key of its
entries, the names of the size and sha256 fields, the data objects' suffix and the wording of their
errors. Each artifact module declares its layout:

    manifest.json    ``MANIFEST`` here (a plain directory of objects)
    provenance.json  ``moe_jax.artifacts.lineage.PROVENANCE`` (analysis/, report/, eval and steer summaries)
    meta.json        ``moe_jax.artifacts.routing_store.LAYOUT`` (one ``<language>.npz`` per unit)
    manifest.json    ``moe_jax.artifacts.eval_records.LAYOUT`` (one ``<task>/<language>.jsonl`` per unit)
    moe_jax.json     ``moe_jax.artifacts.checkpoint.LAYOUT`` (a converted checkpoint, GCS md5 fast path)

Local paths and ``gs://`` URLs alike (``moe_jax.io.storage``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Sequence

from moe_jax.io import hashing, storage
from moe_jax.io.storage import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)


class UnpublishedError(FileNotFoundError):
    """No record, or the name is not (or not yet) listed in its directory's record."""


class DigestMismatchError(ValueError):
    """An object's bytes differ from what its record lists (damaged or replaced after writing), or it is gone."""


class CorruptStoreError(ValueError):
    """A record or data object cannot be read or does not hold what its format requires."""


class StoreMismatchError(ValueError):
    """The directory holds units written for another model or configuration (another fingerprint)."""


@dataclasses.dataclass(frozen=True)
class Wording:
    """The messages of one artifact's readers (users and tests know them). Fields of the templates:
    ``path`` (the object), ``rel`` (its path under the directory), ``name`` (its entry), ``parts`` (the
    entry split at "/"), ``label`` (``label`` formatted), ``record`` (the record's file name),
    ``record_path``, ``dir``, ``tail`` ("; <repair hint>" or ""), ``size``/``sha``/``want_size``/``want_sha``
    (now/recorded); for ``damage`` lines also ``algo``/``got``/``want`` (the compared digest, shortened)."""
    no_record: str = "{path} is not published (not in {record_path}): a write that did not finish, or never started{tail}"
    unlisted: str = "{path} is not published (not in {record_path}): a write that did not finish, or never started{tail}"
    missing: str = "{path} is listed in {record} but missing{tail}"
    changed: str = ("{path} has {size} bytes with sha256 {sha}, but {want_size} bytes with sha256 {want_sha} "
                    "were published{tail}")
    resized: str | None = None  # when the sizes differ (None: ``changed``)
    unreadable: str = "{error}"  # the record is not valid JSON (``error`` names it)
    label: str = "{name}"
    item_missing: str = "{rel} (missing)"
    item_changed: str = "{rel} (changed after it was written)"
    item_resized: str | None = None


@dataclasses.dataclass(frozen=True)
class RecordLayout:
    """Where a directory's record is and how it lists the data objects: ``record[files_key][name] =
    {..., size_key: bytes, sha_key: sha256 hex}`` for the object ``<dir>/<name><suffix>``."""
    file: str
    files_key: str = "files"
    size_key: str = "size"
    sha_key: str = "sha256"
    format: str | None = None  # the record's "format" (written by ``publish`` into a new record)
    suffix: str = ""
    nested: bool = False  # names may hold "/" (objects in subdirectories)
    md5: bool = False  # entries may keep GCS's md5: ``damage`` compares it from a listing, reading nothing
    wording: Wording = Wording()


MANIFEST = RecordLayout("manifest.json", format="moe_jax.manifest/1")


def launch_command(workdir: str, stages: Sequence[str], overwrite: Sequence[str] = ()) -> str:
    """The launch command running ``stages`` (in the order given) on ``workdir``, with
    ``--config.<stage>.overwrite=True`` for each stage of ``overwrite``."""
    flags = "".join(f" --config.{s}.overwrite=True" for s in overwrite)
    return f"python -m moe_jax.launch --config=<your config> --workdir={workdir} --stages={','.join(stages)}{flags}"


def repair(stage: str, workdir: str, purpose: str = "") -> str:
    """The one repair-hint format: "run the <stage> stage again[ <purpose>]: <launch command>"."""
    return f"run the {stage} stage again{' ' + purpose if purpose else ''}: {launch_command(workdir, [stage])}"


def path_of(directory: str, layout: RecordLayout, name: str) -> str:
    return storage.join(directory, name + layout.suffix)


def entry_of(data: bytes, layout: RecordLayout = MANIFEST) -> dict[str, Any]:
    """The record entry of bytes about to be written: ``{size_key, sha_key}``."""
    return {layout.size_key: len(data), layout.sha_key: hashing.sha256_bytes(data)}


def read_record(directory: str, layout: RecordLayout, *, invalid_ok: bool = False) -> dict[str, Any] | None:
    """The record of ``directory``; None when absent (or, with ``invalid_ok``, unreadable).
    ``CorruptStoreError`` for invalid JSON (``wording.unreadable``) or a value that is not an object."""
    p = storage.join(directory, layout.file)
    try:
        record = storage.read_json(p, invalid_ok=invalid_ok)
    except ValueError as e:
        raise CorruptStoreError(layout.wording.unreadable.format(error=e, record_path=p, dir=directory)) from None
    if record is not None and not isinstance(record, dict):
        if invalid_ok:
            return None
        raise CorruptStoreError(f"{p} holds a {type(record).__name__}, not a JSON object")
    return record


def listed(record: Mapping[str, Any] | None, layout: RecordLayout) -> dict[str, dict[str, Any]]:
    """``{name: entry}`` of the objects ``record`` lists ({} without a record)."""
    return dict((record or {}).get(layout.files_key) or {})


def write_record(directory: str, record: Mapping[str, Any], layout: RecordLayout) -> None:
    atomic_write_json(storage.join(directory, layout.file), record)


def unpublish(directory: str, layout: RecordLayout) -> None:
    """Removes ``directory``'s record (if any) before its objects are rewritten: until the new one is
    written last, no reader trusts the directory."""
    p = storage.join(directory, layout.file)
    if storage.exists(p):
        storage.remove(p)


def publish(directory: str, layout: RecordLayout, objects: Mapping[str, bytes],
            summaries: Mapping[str, Mapping[str, Any]] | None = None,
            record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``objects`` (name -> bytes) into ``directory``, then the record listing them (with
    ``summaries[name]``'s fields, and what it listed before), written last. ``record``: the record to
    extend (default: the one on disk, else a new one of ``layout.format``). Returns the record written.
    One writer per directory."""
    bad = [n for n in objects if not n or n == layout.file or any(p.startswith(".") or not p for p in n.split("/"))
           or ("/" in n and not layout.nested)]
    if bad:
        raise ValueError(f"cannot publish {bad} in {os.fspath(directory)}: names must be plain file names, "
                         f"not {layout.file!r} or hidden")
    if record is None:
        record = read_record(directory, layout)
    record = dict(record) if record is not None else ({"format": layout.format} if layout.format else {})
    entries = listed(record, layout)
    if any(n in entries for n in objects):  # never let a reader pair an old entry with new bytes
        entries = {n: e for n, e in entries.items() if n not in objects}
        write_record(directory, {**record, layout.files_key: entries}, layout)
    storage.makedirs(directory)
    for name, data in objects.items():
        atomic_write_bytes(path_of(directory, layout, name), data)
    entries.update({name: {**(summaries or {}).get(name, {}), **entry_of(data, layout)} for name, data in objects.items()})
    record[layout.files_key] = entries
    write_record(directory, record, layout)
    return record


def _fields(directory: str, layout: RecordLayout, name: str, hint: str, **more: Any) -> dict[str, Any]:
    path = path_of(directory, layout, name)
    fields = dict(path=path, rel=name + layout.suffix, name=name, parts=name.split("/"), record=layout.file,
                  record_path=storage.join(directory, layout.file), dir=directory, tail=f"; {hint}" if hint else "")
    fields.update(more)
    return dict(fields, label=layout.wording.label.format(**fields))


def _difference(got: tuple[int, str], entry: Mapping[str, Any], layout: RecordLayout) -> str | None:
    """"resized" / "changed" when ``got`` (size, sha256) differs from the entry (each field only if recorded)."""
    if layout.size_key in entry and got[0] != entry[layout.size_key]:
        return "resized"
    if layout.sha_key in entry and got[1] != entry[layout.sha_key]:
        return "changed"
    return None


def _problem(kind: str, directory: str, layout: RecordLayout, name: str, entry: Mapping[str, Any],
             got: tuple[int, str] | None, hint: str) -> str:
    w = layout.wording
    template = {"missing": w.missing, "changed": w.changed, "resized": w.resized or w.changed}[kind]
    return template.format(**_fields(directory, layout, name, hint, size=got and got[0], sha=got and got[1],
                                     want_size=entry.get(layout.size_key), want_sha=entry.get(layout.sha_key)))


def verify(directory: str, name: str, layout: RecordLayout = MANIFEST, *, hint: str = "",
           record: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of ``name`` if the record of ``directory`` (``record``: already read) lists it and they
    match its entry: the one verifying reader. ``UnpublishedError``: no record (``record`` {}: none
    readable), or not listed; ``DigestMismatchError``: missing or changed since. Messages name the object
    and end with ``hint``."""
    if record is None:
        record = read_record(directory, layout)
    if not record:
        raise UnpublishedError(layout.wording.no_record.format(**_fields(directory, layout, name, hint)))
    if layout.format and record.get("format") != layout.format:
        raise CorruptStoreError(f"{storage.join(directory, layout.file)} is not a {layout.format} record")
    entry = listed(record, layout).get(name)
    if entry is None:
        raise UnpublishedError(layout.wording.unlisted.format(**_fields(directory, layout, name, hint)))
    try:
        data = storage.read_bytes(path_of(directory, layout, name))  # read once: the bytes checked are the bytes used
    except FileNotFoundError:
        raise DigestMismatchError(_problem("missing", directory, layout, name, entry, None, hint)) from None
    got = (len(data), hashing.sha256_bytes(data))
    kind = _difference(got, entry, layout)
    if kind:
        raise DigestMismatchError(_problem(kind, directory, layout, name, entry, got, hint))
    return data


def problem(directory: str, name: str, layout: RecordLayout, entry: Mapping[str, Any], hint: str = "") -> str | None:
    """Why the listed object ``name`` cannot be trusted now (missing, resized, changed: ``wording``),
    or None when intact. Hashes the file in chunks (objects can be GBs)."""
    path = path_of(directory, layout, name)
    if not storage.exists(path):
        return _problem("missing", directory, layout, name, entry, None, hint)
    size = storage.size(path)
    got = (size, entry.get(layout.sha_key)) if size != entry.get(layout.size_key, size) else None
    if got is None and layout.sha_key in entry:
        got = hashing.file_digest(path)
    kind = _difference(got, entry, layout) if got else None
    return _problem(kind, directory, layout, name, entry, got, hint) if kind else None


def damage(directory: str, layout: RecordLayout, record: Mapping[str, Any] | None = None,
           names: list[str] | None = None, *, content: bool = True) -> list[str]:
    """Of the objects ``record`` (default: the one on disk) lists, or of ``names`` among them, those
    missing, resized or (with ``content``) changed now, as ``wording.item_*`` lines (default
    ``"name (why)"``); [] when all are intact. One listing gives the sizes (and on ``gs://`` GCS's md5,
    compared instead of reading an object whose entry keeps one, ``layout.md5``); the rest are hashed
    in parallel."""
    entries = listed(read_record(directory, layout) if record is None else record, layout)
    names = list(entries) if names is None else [n for n in names if n in entries]
    if not names:
        return []
    found = storage.file_listing(directory)
    w, problems, to_hash = layout.wording, [], []

    def line(template: str, name: str, **more: Any) -> str:
        want = entries[name]
        return template.format(**_fields(directory, layout, name, "", want_size=want.get(layout.size_key), **more))

    for name in names:
        want, got = entries[name], found.get(name + layout.suffix)
        if got is None:
            problems.append(line(w.item_missing, name))
        elif layout.size_key in want and got["size"] != want[layout.size_key]:
            problems.append(line(w.item_resized or w.item_changed, name, size=got["size"]))
        elif content and layout.md5 and want.get("md5") and got.get("md5"):
            if got["md5"] != want["md5"]:
                problems.append(line(w.item_changed, name, algo="md5", got=got["md5"], want=want["md5"]))
        elif content and layout.sha_key in want:
            to_hash.append(name)
    digests = hashing.digest_files([path_of(directory, layout, n) for n in to_hash])
    problems += [line(w.item_changed, n, algo="sha256", got=sha[:12] + "...", want=entries[n][layout.sha_key][:12] + "...")
                 for n, (_, sha) in zip(to_hash, digests) if sha != entries[n][layout.sha_key]]
    return problems


# -- resumable units -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Units:
    """A store of units (one data object each) under one record that also holds the fingerprint of the
    model, data and options that produced them. The differences between the routing store and the
    evaluation records are these fields."""
    layout: RecordLayout
    mismatch: str  # StoreMismatchError message; fields: dir, old, new (fingerprints)
    redo: str = "it will be written again"  # the end of the warning for a damaged unit; field: name
    volatile_keys: tuple[str, ...] = ()  # record fields a rerun does not rewrite it for (code_version)
    delete_on_overwrite: bool = False  # overwrite deletes the old units at open (else: kept, replaced as rewritten)
    refuse_unfinished: bool = True  # another fingerprint is refused even when it lists no unit
    replace_unreadable: bool = False  # overwrite replaces an unreadable record


def _same(a: Mapping[str, Any] | None, b: Mapping[str, Any], keys: tuple[str, ...]) -> bool:
    return a is not None and all(a.get(k) == b.get(k) for k in keys)


def remove_temp_files(directory: str) -> None:
    """Creates ``directory`` and removes the temp files (``.<name>.tmp``) a process killed mid-write
    left in it or its subdirectories."""
    storage.makedirs(directory)
    for rel in storage.walk_files(directory):
        if os.path.basename(rel).startswith(".") and rel.endswith(".tmp"):
            storage.remove(storage.join(directory, rel))


def check_units(directory: str, units: Units, head: Mapping[str, Any], *, overwrite: bool = False,
                keys: tuple[str, ...] = ("fingerprint",)) -> dict[str, Any] | None:
    """The existing record of ``directory`` (None when there is none), after checking that a run of
    ``head`` (its ``keys``) may write there: another fingerprint is refused (``StoreMismatchError``)
    unless ``overwrite``. Reads only: a caller checks every directory it will write before writing any."""
    try:
        old = read_record(directory, units.layout)
    except CorruptStoreError:
        if not (overwrite and units.replace_unreadable):
            raise
        log.warning("%s: replacing an unreadable %s (overwrite=True)", directory, units.layout.file)
        return None
    if old is not None and not _same(old, head, keys) and not overwrite and (
            units.refuse_unfinished or listed(old, units.layout)):
        raise StoreMismatchError(units.mismatch.format(dir=directory, old=old.get("fingerprint"),
                                                       new=head.get("fingerprint")))
    return old


def open_units(directory: str, units: Units, head: Mapping[str, Any], *, overwrite: bool = False,
               keys: tuple[str, ...] = ("fingerprint",)) -> dict[str, Any]:
    """The record a run of ``head`` writes its units into: the existing one when ``keys`` match (its
    finished units kept; not rewritten when nothing but ``volatile_keys`` would change), else a new one
    (another fingerprint: refused unless ``overwrite``, ``check_units``; then the old units are deleted
    now with ``delete_on_overwrite``, else kept until ``write_unit`` writes the first replacement)."""
    lay = units.layout
    old = check_units(directory, units, head, overwrite=overwrite, keys=keys)
    record = {**head, **({"format": lay.format} if lay.format else {}), lay.files_key: dict(head.get(lay.files_key) or {})}
    remove_temp_files(directory)
    if _same(old, record, keys):
        record[lay.files_key] = listed(old, lay)
        strip = lambda r: {k: v for k, v in r.items() if k not in units.volatile_keys}  # noqa: E731
        if strip(record) == strip(old):
            return old  # nothing to record: a finished store is not rewritten by a rerun
    elif old is not None and units.delete_on_overwrite:
        for name in listed(old, lay):
            if storage.exists(path_of(directory, lay, name)):
                storage.remove(path_of(directory, lay, name))
    elif old is not None and listed(old, lay):
        log.info("%s: units of another fingerprint are replaced as the new ones are written", directory)
        return record
    write_record(directory, record, lay)
    return record


def done_units(directory: str, units: Units, record: Mapping[str, Any] | None = None,
               names: list[str] | None = None) -> set[str]:
    """Of the units ``record`` (default: on disk) lists (or of ``names``), those present and of the
    recorded size and sha256; a missing or damaged one is logged and left out (so that it is redone)."""
    entries = listed(read_record(directory, units.layout) if record is None else record, units.layout)
    done = set()
    for name in (entries if names is None else [n for n in names if n in entries]):
        why = problem(directory, name, units.layout, entries[name], units.redo.format(name=name))
        if why:
            log.warning("%s", why)
        else:
            done.add(name)
    return done


def write_unit(directory: str, units: Units, name: str, data: bytes, summary: Mapping[str, Any],
               opened: Mapping[str, Any] | None = None, keys: tuple[str, ...] = ("fingerprint",)) -> dict[str, Any]:
    """Writes one unit's data, then its entry (``summary`` + size + sha256) in the record, written last
    (``publish``). ``opened``: the record ``open_units`` returned; when it replaces one of another
    fingerprint (not yet written), it is written first, empty, with this first replacement."""
    record = read_record(directory, units.layout)
    if opened is not None and not _same(record, opened, keys):
        record = {**opened, units.layout.files_key: {}}
        write_record(directory, record, units.layout)
    if record is None:
        raise FileNotFoundError(f"{directory} has no {units.layout.file}; open it first")
    return publish(directory, units.layout, {name: data}, {name: summary}, record)

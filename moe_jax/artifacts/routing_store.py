"""The routing-statistics store: one directory, one ``.npz`` per language, one ``meta.json``.

Layout::

    <store>/meta.json          run metadata (model, checkpoint hash, dataset, tokenizer, template
                               options, moe layer ids, code version, config fingerprint) and a
                               per-language summary under "languages": {code: {...}}
    <store>/<lang>.npz         arrays of one language (keys below)

Arrays of ``<lang>.npz`` (N sequences, L MoE layers, E experts, k top-k):

    seq_ids            [N]        str      aligned sentence ids (same order in every language)
    seq_lengths        [N]        int32    tokens counted (padding and, optionally, template excluded)
    seq_mean_probs     [N, L, E]  float32  mean over counted tokens of the FULL softmax (docs/methods.md)
    seq_topk_freq      [N, L, E]  float32  fraction of counted tokens whose top-k holds e (rows sum to k)
    seq_topk_weight    [N, L, E]  float32  mean over counted tokens of softmax(z) restricted to the token's
                                           top-k and renormalised over it (rows sum to 1); absent in
                                           stores written before it existed
    seq_gate_weight    [N, L, E]  float32  mean over counted tokens of the routing weight the model gives e
                                           (0 off the top-k); with seq_lengths, the per-sequence weight sums
                                           (moe_jax.routing.statistic_table); absent in older stores
    seq_token_entropy  [N, L]     float32  mean over counted tokens of the entropy of softmax(z) (nats)
    topk_counts        [L, E]     int64    language total of top-k activations
    gate_weight_sums   [L, E]     float64  language total of the routing weights given to e
    token_totals       [L]        int64    counted tokens (same for every layer)
    token_topk         [T, L, k]  int16    optional: per-token top-k experts of all counted tokens,
                                           concatenated over sequences (T = sum seq_lengths)

Writes are atomic (``moe_jax.io.storage``: local temp file + ``os.replace``, one upload per object on
``gs://``): a language file either exists complete or not at
all, and it counts as done only once ``meta.json`` lists it (written after the file), so an
interrupted run resumes at the first missing language. Temp files left by a killed process are
removed when the store is opened again. Each language's summary records its file's ``file_size``
and ``file_sha256``, checked on resume and on read: a file damaged later (truncated, replaced, a
byte changed in place, deleted) no longer counts as done, so the next collect run recomputes it, and
reading it fails with an error naming the file, the language and that command.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from moe_jax.artifacts import layout as wd
from moe_jax.io import storage
from moe_jax.io.storage import atomic_write, atomic_write_json, read_json

log = logging.getLogger(__name__)

FORMAT = "moe_jax.routing_store/1"
META = "meta.json"
REQUIRED_KEYS = ("seq_ids", "seq_lengths", "seq_mean_probs", "seq_topk_freq", "seq_token_entropy",
                 "topk_counts", "gate_weight_sums", "token_totals")


class StoreMismatchError(ValueError):
    """The directory holds a store written for another model or configuration."""


class CorruptStoreError(ValueError):
    """A store file cannot be read or does not hold what the format requires."""


def lang_path(store: str, lang: str) -> str:
    return os.path.join(store, f"{lang}.npz")


def read_meta(store: str) -> dict[str, Any] | None:
    """The store's metadata; None when it has no ``meta.json``."""
    p = os.path.join(store, META)
    try:
        meta = read_json(p)
    except ValueError as e:
        raise CorruptStoreError(f"{e}; delete {p} (or the whole store) to collect it afresh") from e
    if meta is not None and not isinstance(meta, dict):
        raise CorruptStoreError(f"{p} holds a {type(meta).__name__}, not a JSON object")
    return meta


def open_store(store: str, meta: Mapping[str, Any], *, fingerprint_keys: tuple[str, ...] = ("fingerprint",),
               overwrite: bool = False) -> dict[str, Any]:
    """Creates the store or checks that an existing one was written with the same fingerprint.

    ``meta["fingerprint"]`` identifies model + data + options; a store with another fingerprint is
    refused (``StoreMismatchError``) unless ``overwrite``, which deletes its language files first.
    Returns the metadata now on disk.
    """
    try:
        old = read_meta(store)
    except CorruptStoreError:
        if not overwrite:
            raise
        log.warning("%s: replacing an unreadable %s (overwrite=True)", store, META)
        old = None
    meta = dict(meta, format=FORMAT)
    meta.setdefault("languages", {})
    if old is not None:
        same = all(old.get(k) == meta.get(k) for k in fingerprint_keys)
        if not same and not overwrite:
            raise StoreMismatchError(
                f"{store} holds routing statistics of another model or configuration "
                f"(fingerprint {old.get('fingerprint')!r} != {meta.get('fingerprint')!r}); "
                "use another directory, or overwrite=True (--config.collect.overwrite=True) to replace it")
        if same:
            meta["languages"] = old.get("languages", {})
            if {k: v for k, v in meta.items() if k != "code_version"} == \
                    {k: v for k, v in old.items() if k != "code_version"}:
                remove_temp_files(store)
                return old  # nothing to record: a finished store is not rewritten by a rerun
        else:
            for lang in old.get("languages", {}):
                if storage.exists(lang_path(store, lang)):
                    storage.remove(lang_path(store, lang))
    remove_temp_files(store)
    atomic_write_json(os.path.join(store, META), meta)
    return meta


def done_languages(store: str) -> set[str]:
    """Languages whose file is complete: listed in meta, present on disk, and of the recorded size
    and sha256 (a damaged file is logged and left out, so that it is collected again)."""
    meta = read_meta(store) or {}
    done = set()
    for lang, summary in meta.get("languages", {}).items():
        p = lang_path(store, lang)
        if not storage.exists(p):
            continue
        damage = file_damage(p, summary)
        if damage:
            log.warning("%s %s; language %s will be collected again", p, damage, lang)
            continue
        done.add(lang)
    return done


def file_damage(path: str, record: Mapping[str, Any]) -> str | None:
    """How the existing file differs from its record (``file_size``, then ``file_sha256``, each only if
    recorded), or None. Hashes in chunks: store files can be large."""
    size = storage.size(path)
    if "file_size" in record and size != record["file_size"]:
        return f"has {size} bytes but {record['file_size']} were written"
    if "file_sha256" in record:
        h = hashlib.sha256()
        with storage.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        if h.hexdigest() != record["file_sha256"]:
            return f"has sha256 {h.hexdigest()} but {record['file_sha256']} was written (changed after writing)"
    return None


def repair_hint(store: str) -> str:
    """The command that recomputes a damaged language of ``store``."""
    store = store if storage.is_remote(store) else os.path.abspath(store)
    parent = os.path.dirname(store)
    if os.path.basename(parent) == wd.TASKS:
        workdir = os.path.dirname(parent)
    elif os.path.basename(store) == wd.ROUTING:
        workdir = parent
    else:
        return "run the collect stage that wrote this store again to recompute it"
    return ("run the collect stage again to recompute it: python -m moe_jax.launch --config=<your config> "
            f"--workdir={workdir} --stages=collect")


def file_record(data: bytes) -> dict[str, Any]:
    """``file_size`` and ``file_sha256`` of bytes about to be written, recorded beside the file."""
    return {"file_size": len(data), "file_sha256": hashlib.sha256(data).hexdigest()}


def file_intact(path: str, record: Mapping[str, Any]) -> bool:
    """The file exists with the recorded size and sha256 (a record without the sha256: never intact)."""
    return storage.exists(path) and "file_sha256" in record and file_damage(path, record) is None


def remove_temp_files(directory: str) -> None:
    """Creates ``directory`` and removes the temp files a process killed mid-write left in it."""
    storage.makedirs(directory)
    for name in storage.listdir(directory):
        if name.startswith(".") and name.endswith(".tmp"):
            storage.remove(os.path.join(directory, name))


# key -> (dims, kind): dims name the axes (N sequences, L layers, E experts, T tokens, k top-k)
SHAPES = {"seq_ids": ("N", "U"), "seq_lengths": ("N", "i"), "seq_mean_probs": ("NLE", "f"),
          "seq_topk_freq": ("NLE", "f"), "seq_topk_weight": ("NLE", "f"), "seq_gate_weight": ("NLE", "f"),
          "seq_token_entropy": ("NL", "f"), "topk_counts": ("LE", "i"),
          "gate_weight_sums": ("LE", "f"), "token_totals": ("L", "i"), "token_topk": ("TLk", "i")}


def check_arrays(lang: str, arrays: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Checks keys, dtype kinds and that shared axes agree; returns the axis sizes."""
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"language {lang}: missing arrays {missing}")
    unknown = sorted(set(arrays) - set(SHAPES))
    if unknown:
        raise ValueError(f"language {lang}: unknown arrays {unknown}; known: {sorted(SHAPES)}")
    sizes: dict[str, tuple[int, str]] = {}
    for key, x in arrays.items():
        x = np.asarray(x)
        dims, kind = SHAPES[key]
        if x.ndim != len(dims) or x.dtype.kind not in (kind + ("u" if kind == "i" else "")):
            raise ValueError(f"language {lang}: {key} has shape {x.shape} dtype {x.dtype}, "
                             f"expected [{', '.join(dims)}] of kind {kind!r}")
        for d, n in zip(dims, x.shape):
            if d in sizes and sizes[d][0] != n:
                raise ValueError(f"language {lang}: {key} has {d}={n} but {sizes[d][1]} has {d}={sizes[d][0]}")
            sizes.setdefault(d, (n, key))
    if "token_topk" in arrays and sizes["T"][0] != int(np.sum(arrays["seq_lengths"])):
        raise ValueError(f"language {lang}: token_topk has {sizes['T'][0]} tokens, seq_lengths sum to "
                         f"{int(np.sum(arrays['seq_lengths']))}")
    return {d: n for d, (n, _) in sizes.items()}


def write_language(store: str, lang: str, arrays: Mapping[str, np.ndarray], summary: Mapping[str, Any]) -> None:
    """Writes one language atomically, then records it in meta.json (also atomically), with the
    file's ``file_size`` and ``file_sha256`` added to its summary."""
    check_arrays(lang, arrays)
    buf = io.BytesIO()  # in memory first: the summary records the exact bytes' size and hash
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    data = buf.getvalue()
    atomic_write(lang_path(store, lang), lambda f: f.write(data))
    meta = read_meta(store)
    if meta is None:
        raise FileNotFoundError(f"{store} has no {META}; call open_store first")
    meta["languages"][lang] = dict(summary, **file_record(data))
    atomic_write_json(os.path.join(store, META), meta)


def read_language(store: str, lang: str) -> dict[str, np.ndarray]:
    """The checked arrays of one language (``CorruptStoreError`` naming the file and language if
    it cannot be read or lacks arrays)."""
    p = lang_path(store, lang)
    if not storage.exists(p):
        raise FileNotFoundError(f"store {store} has no statistics for language {lang!r}")
    try:
        # an object is read whole: np.load's seeks would each be a ranged request (~50 per language)
        src = io.BytesIO(storage.read_bytes(p)) if storage.is_remote(p) else storage.open(p, "rb")
        with src as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        check_arrays(lang, arrays)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise CorruptStoreError(f"{p}: the routing statistics of language {lang!r} cannot be read "
                                f"({type(e).__name__}: {e}); {repair_hint(store)}") from e
    return arrays


def read_store(store: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Returns ``(meta, {lang: arrays})`` for every language of ``meta.json``, sorted by code; a listed
    file that is missing or damaged raises ``CorruptStoreError`` naming it and the repairing command."""
    meta = read_meta(store)
    if meta is None:
        raise FileNotFoundError(f"no routing store at {store} (missing {META})")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{store}: unknown store format {meta.get('format')!r}, expected {FORMAT}")
    langs = sorted(meta.get("languages", {}))
    for lang in langs:
        p = lang_path(store, lang)
        if not storage.exists(p):
            raise CorruptStoreError(f"{p}: language {lang!r} is listed in {META} but its file is missing; "
                                    f"{repair_hint(store)}")
        damage = file_damage(p, meta["languages"][lang])
        if damage:
            raise CorruptStoreError(f"{p}: language {lang!r} {damage}; {repair_hint(store)}")
    return meta, {l: read_language(store, l) for l in langs}

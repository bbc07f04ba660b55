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
    seq_hidden         [N, D, P]  float16  optional (collect.hidden_states): mean hidden state over counted
                                           tokens of each of the D = decoder layers + 1 states (embeddings
                                           first, the last after the final norm), projected to P dims
    seq_lens_mass      [N, D, 2]  float32  optional: the logit lens's mean probability mass on the pivot's
                                           tokens and on the language's own tokens, per state

Writes are atomic (``moe_jax.io.storage``: local temp file + ``os.replace``, one upload per object on
``gs://``): a language file either exists complete or not at
all, and it counts as done only once ``meta.json`` lists it (written after the file), so an
interrupted run resumes at the first missing language. Temp files left by a killed process are
removed when the store is opened again. Each language's summary records its file's ``file_size``
and ``file_sha256``, checked on resume and on read: a file damaged later (truncated, replaced, a
byte changed in place, deleted) no longer counts as done, so the next collect run recomputes it, and
reading it fails with an error naming the file, the language and that command. The protocol is
``moe_jax.io.integrity``'s resumable units (``LAYOUT`` and ``UNITS``: how this store differs).
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from moe_jax.artifacts import layout as wd
from moe_jax.io import integrity, storage
from moe_jax.io.integrity import CorruptStoreError, StoreMismatchError  # noqa: F401  (this store's errors)
from moe_jax.io.storage import atomic_write_json  # noqa: F401  (tests edit a meta.json with it)

log = logging.getLogger(__name__)

FORMAT = "moe_jax.routing_store/1"
META = "meta.json"
REQUIRED_KEYS = ("seq_ids", "seq_lengths", "seq_mean_probs", "seq_topk_freq", "seq_token_entropy",
                 "topk_counts", "gate_weight_sums", "token_totals")
# meta.json lists each language's <lang>.npz under "languages" with its file_size and file_sha256
LAYOUT = integrity.RecordLayout(META, "languages", "file_size", "file_sha256", format=FORMAT, suffix=".npz",
                                wording=integrity.Wording(
    label="language {name!r}", unreadable="{error}; delete {record_path} (or the whole store) to collect it afresh",
    missing="{path}: {label} is listed in {record} but its file is missing{tail}",
    resized="{path}: {label} has {size} bytes but {want_size} were written{tail}",
    changed="{path}: {label} has sha256 {sha} but {want_sha} was written (changed after writing){tail}"))
# another fingerprint: refused, or with overwrite its language files are deleted at once; code_version alone
# does not rewrite a finished store
UNITS = integrity.Units(LAYOUT, volatile_keys=("code_version",), delete_on_overwrite=True, replace_unreadable=True,
                        redo="language {name} will be collected again", mismatch=(
    "{dir} holds routing statistics of another model or configuration (fingerprint {old!r} != {new!r}); "
    "use another directory, or overwrite=True (--config.collect.overwrite=True) to replace it"))


def lang_path(store: str, lang: str) -> str:
    return integrity.path_of(store, LAYOUT, lang)


def read_meta(store: str) -> dict[str, Any] | None:
    """The store's metadata; None when it has no ``meta.json`` (``CorruptStoreError`` when unreadable)."""
    return integrity.read_record(store, LAYOUT)


def open_store(store: str, meta: Mapping[str, Any], *, fingerprint_keys: tuple[str, ...] = ("fingerprint",),
               overwrite: bool = False) -> dict[str, Any]:
    """Creates the store or checks that an existing one was written with the same fingerprint.

    ``meta["fingerprint"]`` identifies model + data + options; a store with another fingerprint is
    refused (``StoreMismatchError``) unless ``overwrite``, which deletes its language files first.
    Returns the metadata now on disk.
    """
    return integrity.open_units(store, UNITS, meta, overwrite=overwrite, keys=fingerprint_keys)


def done_languages(store: str) -> set[str]:
    """Languages whose file is complete: listed in meta, present on disk, and of the recorded size
    and sha256 (a damaged file is logged and left out, so that it is collected again)."""
    return integrity.done_units(store, UNITS)


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
    return integrity.repair("collect", workdir, "to recompute it")


# key -> (dims, kind): dims name the axes (N sequences, L layers, E experts, T tokens, k top-k, D hidden
# states, P projected dims, M token sets)
SHAPES = {"seq_ids": ("N", "U"), "seq_lengths": ("N", "i"), "seq_mean_probs": ("NLE", "f"),
          "seq_topk_freq": ("NLE", "f"), "seq_topk_weight": ("NLE", "f"), "seq_gate_weight": ("NLE", "f"),
          "seq_token_entropy": ("NL", "f"), "topk_counts": ("LE", "i"),
          "gate_weight_sums": ("LE", "f"), "token_totals": ("L", "i"), "token_topk": ("TLk", "i"),
          "seq_hidden": ("NDP", "f"), "seq_lens_mass": ("NDM", "f")}


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
    file's ``file_size`` and ``file_sha256`` added to its summary (``integrity.write_unit``)."""
    check_arrays(lang, arrays)
    buf = io.BytesIO()  # in memory first: the summary records the exact bytes' size and hash
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    integrity.write_unit(store, UNITS, lang, buf.getvalue(), summary)


def read_language(store: str, lang: str) -> dict[str, np.ndarray]:
    """The checked arrays of one language file as it is now, NOT verified against ``meta.json``
    (``read_store`` verifies). ``CorruptStoreError`` naming the file and language if it cannot be read
    or lacks arrays."""
    p = lang_path(store, lang)
    if not storage.exists(p):
        raise FileNotFoundError(f"store {store} has no statistics for language {lang!r}")
    return _arrays(store, lang, storage.read_bytes(p))  # read whole: on gs:// np.load's seeks would be requests


def _arrays(store: str, lang: str, data: bytes) -> dict[str, np.ndarray]:
    """The checked arrays of ``data``, the bytes of ``lang``'s file."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        check_arrays(lang, arrays)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise CorruptStoreError(f"{lang_path(store, lang)}: the routing statistics of language {lang!r} cannot be "
                                f"read ({type(e).__name__}: {e}); {repair_hint(store)}") from e
    return arrays


def read_store(store: str) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Returns ``(meta, {lang: arrays})`` for every language of ``meta.json``, sorted by code; a listed
    file that is missing or damaged raises ``CorruptStoreError`` naming it and the repairing command."""
    meta = read_meta(store)
    if meta is None:
        raise FileNotFoundError(f"no routing store at {store} (missing {META})")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{store}: unknown store format {meta.get('format')!r}, expected {FORMAT}")
    out = {}
    for lang in sorted(meta.get("languages", {})):  # verified through meta.json, parsed from the bytes verified
        try:
            data = integrity.verify(store, lang, LAYOUT, hint=repair_hint(store), record=meta)
        except integrity.DigestMismatchError as e:
            raise CorruptStoreError(str(e)) from None
        out[lang] = _arrays(store, lang, data)
    return meta, out

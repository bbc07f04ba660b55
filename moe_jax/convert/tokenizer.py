"""A checkpoint's tokenizer, from a local directory or a ``gs://`` prefix.

HF tokenizers read only local directories. ``load_tokenizer`` loads a local one in place; a remote
one is staged first (``storage.local_dir``) into a local cache keyed by its content: for a
conversion, the sha256s its ``moe_jax.json`` records for the tokenizer files (nothing is read to
find the key, and the staged copy is checked against the record); for an HF directory on ``gs://``,
a digest of the files' bytes. Every host of a pod stages its own copy once per content.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from transformers import AutoTokenizer

from moe_jax.io import hashing, storage

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)
# What transformers' AutoTokenizer loads a tokenizer from (any one of these sets is enough).
TOKENIZER_SETS = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("vocab.txt",),
                  ("tiktoken.model",))
# Staged with the tokenizer: AutoTokenizer reads config.json when tokenizer_config.json names no class.
STAGED_FILES = ("config.json",) + TOKENIZER_FILES + ("vocab.txt", "tiktoken.model")
META_FILE = "moe_jax.json"  # the conversion's record (``orbax_io.META_FILE``; not imported: no orbax here)


def missing_tokenizer(path: str) -> str | None:
    """None when ``path`` (local or ``gs://``) holds the files of a tokenizer, else a message naming what
    transformers looks for (without them it substitutes another tokenizer or fails with an unrelated error)."""
    path = os.fspath(path)
    if any(all(storage.isfile(storage.join(path, f)) for f in files) for files in TOKENIZER_SETS):
        return None
    wanted = ", ".join(" + ".join(files) for files in TOKENIZER_SETS)
    return (f"{path} has no tokenizer files: transformers loads a tokenizer from one of {wanted} (with "
            "tokenizer_config.json and special_tokens_map.json beside them). Copy the tokenizer files of "
            f"the model's repository into {path}")


def _recorded(ckpt_dir: str) -> dict[str, dict[str, Any]] | None:
    """``{name: {"size", "sha256"}}`` of the staged files a conversion recorded; None without a record."""
    meta = storage.read_json(storage.join(ckpt_dir, META_FILE))
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return None
    return {n: r for n, r in meta["files"].items() if n in STAGED_FILES}


def tokenizer_key(ckpt_dir: str) -> str:
    """The content key of a remote checkpoint's tokenizer files: sha256 over their names and sha256s
    (recorded in ``moe_jax.json`` for a conversion, else hashed from the bytes)."""
    rec = _recorded(ckpt_dir)
    if rec is None:
        rec = {n: {"sha256": hashing.file_digest(storage.join(ckpt_dir, n))[1]} for n in STAGED_FILES
               if storage.isfile(storage.join(ckpt_dir, n))}
    return "tokenizer-" + hashing.sha256_text("".join(f"{name}\0{rec[name]['sha256']}\n" for name in sorted(rec)))


def stage_tokenizer(ckpt_dir: str, *, cache: str | None = None) -> str:
    """A local directory holding the tokenizer files of ``ckpt_dir``: itself when local, else a copy
    staged once per content (``storage.local_dir``). A conversion's staged files are checked against
    its record; a copy that differs (the remote files were damaged) is removed and refused."""
    ckpt_dir = os.fspath(ckpt_dir)
    if not storage.is_remote(ckpt_dir):
        return ckpt_dir
    rec = _recorded(ckpt_dir)
    local = storage.local_dir(ckpt_dir, STAGED_FILES, tokenizer_key(ckpt_dir), cache=cache)
    bad = [n for n, r in sorted((rec or {}).items())
           if not os.path.isfile(os.path.join(local, n)) or hashing.file_digest(os.path.join(local, n))[1] != r["sha256"]]
    if bad:
        shutil.rmtree(local, ignore_errors=True)
        raise ValueError(f"the tokenizer files {bad} of {ckpt_dir} differ from what its {META_FILE} records "
                         "(damaged after the conversion); convert it again (--overwrite)")
    return local


def load_tokenizer(ckpt_dir: str | os.PathLike, *, cache: str | None = None) -> Any:
    """``AutoTokenizer`` of a checkpoint directory (an HF one or a conversion), local or ``gs://``.
    FileNotFoundError (``missing_tokenizer``'s message) when it holds no tokenizer."""
    ckpt_dir = os.fspath(ckpt_dir)
    missing = missing_tokenizer(ckpt_dir)
    if missing:
        raise FileNotFoundError(missing)
    return AutoTokenizer.from_pretrained(stage_tokenizer(ckpt_dir, cache=cache))

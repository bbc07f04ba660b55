"""Provenance of a routing store: code version, tokenizer hash, config fingerprint."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import moe_jax
from moe_jax.io.hashing import sha256_text


def fingerprint(obj: Any) -> str:
    """sha256 (16 hex digits) of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return sha256_text(text)[:16]


def code_version() -> str:
    """``moe_jax.__version__`` plus the git commit of the source tree when there is one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(moe_jax.__file__)))
    try:
        sha = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{moe_jax.__version__}+{sha}" if sha else moe_jax.__version__


def tokenizer_hash(tokenizer: Any) -> str:
    """Hash of a tokenizer's full serialisation (fast tokenizers) or of its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = json.dumps({"chat_template": getattr(tokenizer, "chat_template", None),
                        "special": getattr(tokenizer, "all_special_tokens", None)}, sort_keys=True, default=str)
    return sha256_text(text + extra)[:16]

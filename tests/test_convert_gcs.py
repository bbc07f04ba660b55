"""Conversion, checkpoint loading and tokenizers on gs:// (a local GCS emulator): a conversion
written straight into its prefix (partial marker first, moe_jax.json last), loaded back equal to a
local one; crashes, foreign prefixes, sharded restores, and tokenizers staged once per content."""

from __future__ import annotations

import os

import numpy as np
import pytest

from moe_jax import storage
from moe_jax.convert import tokenizer as tok_lib


@pytest.fixture(scope="module")
def hf_local(tmp_path_factory):
    """A tiny random qwen3_moe HF checkpoint with the tiny tokenizer (local)."""
    from moe_jax import tiny
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer

    d = str(tmp_path_factory.mktemp("hf"))
    tok = build_tiny_tokenizer(d, vocab_size=300)
    tiny.write_random_hf_checkpoint(d, tiny.tiny_hf_config("qwen3_moe", vocab_size=len(tok)))
    return d


def test_load_tokenizer_stages_a_remote_hf_dir_once(hf_local, gcs_dir, tmp_path, monkeypatch):
    """An HF dir on gs:// (no moe_jax.json): staged into the cache keyed by a digest of its files,
    downloaded once, and it encodes like the local one; a changed file gives a new key."""
    remote = storage.join(gcs_dir, "hf")
    storage.upload_tree(hf_local, remote)
    cache = str(tmp_path / "cache")
    copies = []
    real_copy = storage.copy_file
    monkeypatch.setattr(storage, "copy_file", lambda s, d: (copies.append(s), real_copy(s, d)))
    text = "The quick brown fox, 12 times."
    want = tok_lib.load_tokenizer(hf_local)(text)["input_ids"]
    assert copies == []  # local: loaded in place
    assert tok_lib.load_tokenizer(remote, cache=cache)(text)["input_ids"] == want
    staged = sorted(os.listdir(cache))
    assert len(staged) == 1 and staged[0].startswith("tokenizer-")
    assert "tokenizer.json" in os.listdir(os.path.join(cache, staged[0]))
    assert not any(s.endswith(".safetensors") for s in copies)  # only tokenizer (and config) files
    n = len(copies)
    assert tok_lib.load_tokenizer(remote, cache=cache)(text)["input_ids"] == want
    assert len(copies) == n  # staged once
    storage.atomic_write_bytes(storage.join(remote, "special_tokens_map.json"), b"{}")
    assert tok_lib.tokenizer_key(remote) != staged[0]
    with pytest.raises(FileNotFoundError, match="has no tokenizer files"):
        tok_lib.load_tokenizer(storage.join(gcs_dir, "nothing"), cache=cache)

"""The routing store: round trip, atomicity under a failing write, fingerprint refusal, validation,
integrity records (size + sha256) and clear errors on damaged files."""

import hashlib
import json
import os
import zipfile

import numpy as np
import pytest

from moe_jax.artifacts import routing_store as store


def arrays(n=3, L=2, E=4, k=2, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 6, n).astype(np.int32)
    return {"seq_ids": np.array([f"s{i}" for i in range(n)]), "seq_lengths": lengths,
            "seq_mean_probs": rng.random((n, L, E), dtype=np.float32),
            "seq_topk_freq": rng.random((n, L, E), dtype=np.float32),
            "seq_token_entropy": rng.random((n, L), dtype=np.float32),
            "topk_counts": rng.integers(0, 9, (L, E)), "gate_weight_sums": rng.random((L, E)),
            "token_totals": np.full(L, lengths.sum(), np.int64),
            "token_topk": rng.integers(0, E, (lengths.sum(), L, k)).astype(np.int16)}


def test_round_trip(tmp_path):
    meta = store.open_store(str(tmp_path), {"fingerprint": "x", "model": "m"})
    assert meta["format"] == store.FORMAT and meta["languages"] == {}
    a, b = arrays(seed=1), arrays(seed=2)
    store.write_language(str(tmp_path), "fra_Latn", a, {"sequences": 3})
    store.write_language(str(tmp_path), "eng_Latn", b, {"sequences": 3})
    meta, data = store.read_store(str(tmp_path))
    raw = (tmp_path / "fra_Latn.npz").read_bytes()
    assert list(data) == ["eng_Latn", "fra_Latn"]
    assert meta["languages"]["fra_Latn"] == {"sequences": 3, "file_size": len(raw),
                                             "file_sha256": hashlib.sha256(raw).hexdigest()}
    for k, v in a.items():
        np.testing.assert_array_equal(data["fra_Latn"][k], v)
        assert data["fra_Latn"][k].dtype == v.dtype


def test_reopening_a_store_rewrites_its_meta_only_when_something_changes(tmp_path):
    """A rerun (same fingerprint, newer code) does not rewrite a finished store; a new field does."""
    store.open_store(str(tmp_path), {"fingerprint": "x", "code_version": "0.1+aaa"})
    store.write_language(str(tmp_path), "fra_Latn", arrays(), {"sequences": 3})
    before = (tmp_path / "meta.json").read_bytes()
    meta = store.open_store(str(tmp_path), {"fingerprint": "x", "code_version": "0.1+bbb"})
    assert (tmp_path / "meta.json").read_bytes() == before and meta["code_version"] == "0.1+aaa"
    meta = store.open_store(str(tmp_path), {"fingerprint": "x", "code_version": "0.1+bbb", "note": "n"})
    assert json.loads((tmp_path / "meta.json").read_text())["note"] == "n" and list(meta["languages"]) == ["fra_Latn"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    store.open_store(str(tmp_path), {"fingerprint": "x"})
    real = np.savez

    def broken(f, **kw):
        real(f, **kw)  # the bytes are written into the temp file ...
        raise OSError("disk full")  # ... then the process fails before the rename

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write_language(str(tmp_path), "fra_Latn", arrays(), {})
    assert sorted(os.listdir(tmp_path)) == ["meta.json"] and store.done_languages(str(tmp_path)) == set()


def test_file_without_meta_entry_is_not_done_and_killed_temp_files_are_cleaned(tmp_path):
    store.open_store(str(tmp_path), {"fingerprint": "x"})
    np.savez(tmp_path / "fra_Latn.npz", **arrays())  # a crash between the file and the meta update
    (tmp_path / ".fra_Latn.npz.abc.tmp").write_bytes(b"partial")  # a process killed mid-write
    assert store.done_languages(str(tmp_path)) == set()
    store.open_store(str(tmp_path), {"fingerprint": "x"})
    assert not (tmp_path / ".fra_Latn.npz.abc.tmp").exists()


def test_other_fingerprint_refused_or_replaced(tmp_path):
    store.open_store(str(tmp_path), {"fingerprint": "a"})
    store.write_language(str(tmp_path), "fra_Latn", arrays(), {})
    with pytest.raises(store.StoreMismatchError, match="'a' != 'b'"):
        store.open_store(str(tmp_path), {"fingerprint": "b"})
    meta = store.open_store(str(tmp_path), {"fingerprint": "a", "note": "resumed"})
    assert list(meta["languages"]) == ["fra_Latn"]  # same fingerprint keeps finished languages
    store.open_store(str(tmp_path), {"fingerprint": "b"}, overwrite=True)
    assert store.done_languages(str(tmp_path)) == set() and not (tmp_path / "fra_Latn.npz").exists()


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("seq_mean_probs"), "missing arrays \\['seq_mean_probs'\\]"),
    (lambda a: a.update(seq_topk_freq=a["seq_topk_freq"][:2]), "seq_topk_freq has N=2 but seq_ids has N=3"),
    (lambda a: a.update(topk_counts=a["topk_counts"].astype(np.float32)), "topk_counts .* kind 'i'"),
    (lambda a: a.update(token_topk=a["token_topk"][:-1]), "token_topk has .* tokens, seq_lengths sum to"),
    (lambda a: a.update(extra=np.zeros(3)), "unknown arrays \\['extra'\\]"),
])
def test_bad_arrays_name_the_culprit(tmp_path, change, match):
    store.open_store(str(tmp_path), {"fingerprint": "x"})
    a = arrays()
    change(a)
    with pytest.raises(ValueError, match=f"language fra_Latn: {match}"):
        store.write_language(str(tmp_path), "fra_Latn", a, {})


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no routing store"):
        store.read_store(str(tmp_path))
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="unknown store format 'other/9'"):
        store.read_store(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no statistics for language 'xxx'"):
        store.read_language(str(tmp_path), "xxx")


def two_languages(path):
    store.open_store(str(path), {"fingerprint": "x"})
    store.write_language(str(path), "fra_Latn", arrays(seed=1), {})
    store.write_language(str(path), "eng_Latn", arrays(seed=2), {})
    return path / "fra_Latn.npz"


def test_truncated_file_is_not_done_and_read_names_file_and_language(tmp_path, caplog):
    p = two_languages(tmp_path)
    p.write_bytes(p.read_bytes()[:-100])  # e.g. a copy cut short, a full disk outside our writes
    with caplog.at_level("WARNING"):
        assert store.done_languages(str(tmp_path)) == {"eng_Latn"}
    assert str(p) in caplog.text and "fra_Latn will be collected again" in caplog.text
    with pytest.raises(store.CorruptStoreError, match=f"{p}: language 'fra_Latn' has .* bytes but .* were written"):
        store.read_store(str(tmp_path))
    with pytest.raises(store.CorruptStoreError, match=f"{p}: .* of language 'fra_Latn' cannot be read \\(BadZipFile"):
        store.read_language(str(tmp_path), "fra_Latn")


@pytest.mark.parametrize("where", ["central directory", "zip timestamp"])
def test_damage_of_the_recorded_size_is_seen_by_its_sha256(tmp_path, caplog, where):
    """Same size, other content: not done on resume, and reading names the file, the language and the
    command that recomputes it. A zip timestamp is covered by no CRC: only the sha256 sees it."""
    workdir = tmp_path / "wd"
    p = two_languages(workdir / "routing")
    raw = bytearray(p.read_bytes())
    if where == "central directory":
        raw[-30:] = b"\0" * 30
    else:
        raw[10] ^= 0xFF  # modification time of the first local file header
    p.write_bytes(bytes(raw))
    with caplog.at_level("WARNING"):
        assert store.done_languages(str(workdir / "routing")) == {"eng_Latn"}
    assert "has sha256" in caplog.text and "fra_Latn will be collected again" in caplog.text
    command = f"python -m moe_jax.launch --config=<your config> --workdir={workdir} --stages=collect"
    with pytest.raises(store.CorruptStoreError, match=f"{p}: language 'fra_Latn' has sha256 .* was written") as e:
        store.read_store(str(workdir / "routing"))
    assert command in str(e.value)


def test_repair_hint_names_the_workdir_of_a_task_store(tmp_path):
    assert f"--workdir={tmp_path} --stages=collect" in store.repair_hint(str(tmp_path / "tasks" / "math"))
    assert "--workdir" not in store.repair_hint(str(tmp_path / "elsewhere"))


def test_file_missing_an_array_names_file_and_language(tmp_path):
    p = two_languages(tmp_path)
    a = arrays(seed=1)
    del a["seq_ids"]
    with zipfile.ZipFile(p, "w") as z:  # an npz written by something else, without seq_ids
        for k, v in a.items():
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, v)
    with pytest.raises(store.CorruptStoreError, match=f"{p}: .*'fra_Latn'.*missing arrays \\['seq_ids'\\]"):
        store.read_language(str(tmp_path), "fra_Latn")


def test_corrupt_meta_names_the_file(tmp_path):
    two_languages(tmp_path)
    (tmp_path / "meta.json").write_text('{"format": ')
    for call in (lambda: store.read_store(str(tmp_path)), lambda: store.done_languages(str(tmp_path)),
                 lambda: store.open_store(str(tmp_path), {"fingerprint": "x"})):
        with pytest.raises(store.CorruptStoreError, match=f"{tmp_path / 'meta.json'} is not valid JSON"):
            call()
    store.open_store(str(tmp_path), {"fingerprint": "x"}, overwrite=True)  # overwrite replaces it
    assert store.read_meta(str(tmp_path))["languages"] == {}

"""moe_jax.io.storage on a local directory and on gs:// (a local GCS emulator): round trips, atomic
writes that fail, publish by manifest (moe_jax.io.integrity: a crash before the manifest leaves nothing visible, damage is
caught by the digest), orbax checkpoints restored onto two devices, and the routing store."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from moe_jax.io import hashing, integrity, storage
from moe_jax.artifacts import routing_store as store_lib
from tests.helpers.simulated_devices import run_on_devices


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    """A fresh directory: local, or a prefix in the emulator's bucket."""
    return str(tmp_path / "d") if request.param == "local" else request.getfixturevalue("gcs_dir")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_round_trip(root):
    assert storage.is_remote(root) == root.startswith("gs://")
    assert storage.listdir(root) == [] and not storage.exists(storage.join(root, "a.bin"))
    storage.atomic_write_bytes(storage.join(root, "a.bin"), b"\x00\x01payload")
    storage.atomic_write_json(storage.join(root, "sub", "m.json"), {"k": [1, 2]})
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\x01payload"
    assert storage.read_json(storage.join(root, "sub", "m.json")) == {"k": [1, 2]}
    assert storage.read_json(storage.join(root, "none.json")) is None
    assert storage.listdir(root) == ["a.bin", "sub"]
    assert storage.size(storage.join(root, "a.bin")) == 9
    assert hashing.file_digest(storage.join(root, "a.bin")) == (9, _sha(b"\x00\x01payload"))
    storage.atomic_write_bytes(storage.join(root, "a.bin"), b"new")  # replaces
    assert storage.read_bytes(storage.join(root, "a.bin")) == b"new"
    storage.remove(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "a.bin")) and storage.listdir(root) == ["sub"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(root, "a.bin"))
    with pytest.raises(ValueError, match="write .* with atomic_write or publish"):
        storage.open(storage.join(root, "a.bin"), "wb")


def test_failed_write_leaves_the_old_object(root):
    p = storage.join(root, "x.json")
    storage.atomic_write_bytes(p, b"old")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise RuntimeError("killed mid-write")

    for target in (p, storage.join(root, "never.json")):
        with pytest.raises(RuntimeError, match="killed mid-write"):
            storage.atomic_write(target, half_then_fail)
    assert storage.read_bytes(p) == b"old"
    assert storage.listdir(root) == ["x.json"]  # no partial object, no temp file


def test_publish_then_read_checks_digests(root):
    files = {"en.npz": b"english bytes", "de.npz": b"german"}
    integrity.publish(root, integrity.MANIFEST, files)
    manifest = json.loads(storage.read_bytes(storage.join(root, integrity.MANIFEST.file)))
    assert manifest["files"] == {n: {"size": len(b), "sha256": _sha(b)} for n, b in files.items()}
    assert {n: integrity.verify(root, n) for n in files} == files
    integrity.publish(root, integrity.MANIFEST, {"fr.npz": b"french"})  # adds; keeps what was published
    assert sorted(integrity.listed(integrity.read_record(root, integrity.MANIFEST), integrity.MANIFEST)) == [
        "de.npz", "en.npz", "fr.npz"]
    with pytest.raises(ValueError, match="plain file names"):
        integrity.publish(root, integrity.MANIFEST, {"a/b": b""})


@pytest.mark.parametrize("rewrite", [False, True])
def test_crash_before_the_manifest_leaves_nothing_visible(root, monkeypatch, rewrite):
    integrity.publish(root, integrity.MANIFEST, {"en.npz": b"v1", "de.npz": b"kept"})
    name, data = ("en.npz", b"version 2") if rewrite else ("fr.npz", b"french")
    real = integrity.write_record

    def crash_on_final_manifest(directory, record, layout):
        if name in record["files"]:  # the manifest that would name the new data
            raise KeyboardInterrupt("killed before the manifest")
        real(directory, record, layout)

    monkeypatch.setattr(integrity, "write_record", crash_on_final_manifest)
    new = {name: data}
    with pytest.raises(KeyboardInterrupt):
        integrity.publish(root, integrity.MANIFEST, new)
    monkeypatch.undo()
    assert storage.read_bytes(storage.join(root, name)) == new[name]  # the data object was written ...
    with pytest.raises(integrity.UnpublishedError, match=name):  # ... but no reader trusts it
        integrity.verify(root, name)
    assert integrity.verify(root, "de.npz") == b"kept"
    integrity.publish(root, integrity.MANIFEST, new)  # the next run publishes it
    assert integrity.verify(root, name) == new[name]


def test_damaged_or_missing_object_is_caught_by_its_digest(root):
    integrity.publish(root, integrity.MANIFEST, {"en.npz": b"english bytes"})
    storage.atomic_write_bytes(storage.join(root, "en.npz"), b"english bytez")  # same size, other bytes
    with pytest.raises(integrity.DigestMismatchError, match="en.npz has 13 bytes with sha256"):
        integrity.verify(root, "en.npz")
    storage.remove(storage.join(root, "en.npz"))
    with pytest.raises(integrity.DigestMismatchError, match="en.npz is listed in manifest.json but missing"):
        integrity.verify(root, "en.npz")


def test_gs_path_without_gcsfs_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(ImportError, match=r"gs://bkt/x: gs:// paths need gcsfs: pip install 'moe_jax\[gcs\]'"):
        storage.path("gs://bkt/x")


ORBAX_ON_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from moe_jax.io import hashing, integrity, storage
    root = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rows = NamedSharding(mesh, P("x"))
    w = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    e = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)  # [experts, ...] from host memory
    tree = {"w": jax.device_put(w, rows), "b": np.ones(3, np.float32), "e": e, "e_whole": e}
    # the converted-checkpoint layout (moe_jax.convert.orbax_io): one zarr array per leaf, no OCDBT;
    # a NumPy leaf is one chunk unless chunk_byte_size / shard_axes split it (here: one expert each)
    split = ocp.SaveArgs(chunk_byte_size=e.nbytes // 4, shard_axes=(0,))
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False)
    with ocp.Checkpointer(handler) as c:
        c.save(root + "/params", args=ocp.args.PyTreeSave(tree, save_args={
            "w": ocp.SaveArgs(), "b": ocp.SaveArgs(), "e": split, "e_whole": ocp.SaveArgs()}))
    target = {"w": jax.ShapeDtypeStruct((8, 6), np.float32, sharding=rows),
              "b": jax.ShapeDtypeStruct((3,), np.float32, sharding=NamedSharding(mesh, P())),
              "e": jax.ShapeDtypeStruct((4, 2, 3), np.float32, sharding=rows),
              "e_whole": jax.ShapeDtypeStruct((4, 2, 3), np.float32, sharding=rows)}
    with ocp.StandardCheckpointer() as c:
        out = c.restore(root + "/params", target)
    ref = {"w": w, "e": e, "e_whole": e}
    shards = {k: sorted([s.device.id, [s.index[0].start, s.index[0].stop], list(s.data.shape),
                         bool((np.asarray(s.data) == ref[k][s.index]).all())] for s in out[k].addressable_shards)
              for k in ref}
    print(json.dumps({"shards": shards, "b": np.asarray(out["b"]).tolist(),
                      "objects": {k: storage.listdir(root + "/params/" + k) for k in ref},
                      "top": storage.listdir(root + "/params")}))
""")


@pytest.mark.slow  # 2 simulated devices in a subprocess
def test_orbax_checkpoint_on_gcs_restores_each_device_its_rows(gcs_dir):
    """Saved and restored on gs:// onto 2 simulated devices: each device holds only its half of the
    rows. A leaf saved sharded, or from host memory with ``chunk_byte_size``/``shard_axes``, has one
    object per device's rows, so a host of a pod reads only its shards' objects; a NumPy leaf saved
    with orbax's defaults (``e_whole``) is one object that every host reads whole."""
    proc = run_on_devices(["-c", ORBAX_ON_TWO_DEVICES, gcs_dir], devices=2)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["shards"]["w"] == [[0, [0, 4], [4, 6], True], [1, [4, 8], [4, 6], True]]
    for k in ("e", "e_whole"):
        assert out["shards"][k] == [[0, [0, 2], [2, 2, 3], True], [1, [2, 4], [2, 2, 3], True]]
    assert out["b"] == [1.0, 1.0, 1.0]
    assert "commit_success.txt" in out["top"]  # orbax's own marker, written last on object storage
    chunks = {k: [n for n in names if not n.startswith(".")] for k, names in out["objects"].items()}
    assert chunks == {"w": ["0.0", "1.0"], "e": ["0.0.0", "1.0.0", "2.0.0", "3.0.0"], "e_whole": ["0.0.0"]}


def _arrays(n_seq=3, layers=2, experts=4, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.random((n_seq, layers, experts)).astype(np.float32)
    return {"seq_ids": np.array([f"s{i}" for i in range(n_seq)]), "seq_lengths": np.full(n_seq, 5, np.int32),
            "seq_mean_probs": p / p.sum(-1, keepdims=True), "seq_topk_freq": np.full((n_seq, layers, experts), .5, np.float32),
            "seq_token_entropy": np.ones((n_seq, layers), np.float32), "topk_counts": np.full((layers, experts), 7, np.int64),
            "gate_weight_sums": np.ones((layers, experts)), "token_totals": np.full(layers, 15, np.int64)}


def test_routing_store_on_gcs(gcs_dir, caplog):
    store = gcs_dir + "/routing"
    store_lib.open_store(store, {"fingerprint": "f1"})
    en = _arrays(seed=1)
    store_lib.write_language(store, "en", en, {"n": 3})
    assert store_lib.done_languages(store) == {"en"}
    meta, langs = store_lib.read_store(store)
    assert meta["languages"]["en"]["file_sha256"] == _sha(storage.read_bytes(store + "/en.npz"))
    assert all(np.array_equal(langs["en"][k], en[k]) for k in en)
    # a language file without its meta entry (killed before meta.json) is not done
    storage.atomic_write_bytes(store + "/de.npz", b"half")
    assert store_lib.done_languages(store) == {"en"}
    # damage is seen by the sha256 and the language collected again
    data = storage.read_bytes(store + "/en.npz")
    storage.atomic_write_bytes(store + "/en.npz", data[:100] + bytes([data[100] ^ 1]) + data[101:])
    assert store_lib.done_languages(store) == set()
    with pytest.raises(store_lib.CorruptStoreError, match="en.npz: language 'en' has sha256"):
        store_lib.read_store(store)
    with pytest.raises(store_lib.StoreMismatchError):
        store_lib.open_store(store, {"fingerprint": "f2"})
    store_lib.open_store(store, {"fingerprint": "f2"}, overwrite=True)  # deletes what it wrote
    assert not storage.exists(store + "/en.npz") and store_lib.done_languages(store) == set()


def test_objects_written_by_another_process_are_seen(gcs_dir):
    """A pod's hosts are separate processes: what one publishes, another sees at once (no cached
    listings or stale manifest in the reader)."""
    integrity.publish(gcs_dir, integrity.MANIFEST, {"en.npz": b"from this host"})
    assert storage.listdir(gcs_dir) == ["en.npz", integrity.MANIFEST.file]
    other_host = ("from moe_jax.io import integrity; import sys; "
                  "integrity.publish(sys.argv[1], integrity.MANIFEST, {'de.npz': b'from the other host'})")
    subprocess.run([sys.executable, "-c", other_host, gcs_dir], check=True, timeout=120)
    assert storage.listdir(gcs_dir) == ["de.npz", "en.npz", integrity.MANIFEST.file]
    assert integrity.verify(gcs_dir, "de.npz") == b"from the other host"


def test_tree_helpers(root, tmp_path):
    """walk_files / isdir / isfile / copy_file / upload_tree / remove_tree on both kinds of path."""
    assert storage.walk_files(root) == [] and not storage.isdir(root)
    src = tmp_path / "src"
    (src / "params" / "x").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"A")
    (src / "params" / "x" / "b.bin").write_bytes(b"B" * 1000)
    assert storage.upload_tree(str(src), root) == ["a.txt", "params/x/b.bin"]
    assert storage.walk_files(root) == ["a.txt", "params/x/b.bin"]
    assert storage.isdir(root) and storage.isdir(storage.join(root, "params")) and not storage.isfile(root)
    assert storage.isfile(storage.join(root, "a.txt")) and not storage.isdir(storage.join(root, "a.txt"))
    storage.copy_file(storage.join(root, "params/x/b.bin"), storage.join(root, "c.bin"))
    assert storage.read_bytes(storage.join(root, "c.bin")) == b"B" * 1000
    assert storage.absolute(root + "/") == (root if storage.is_remote(root) else os.path.abspath(root))
    storage.remove_tree(storage.join(root, "params"))
    assert storage.walk_files(root) == ["a.txt", "c.bin"]


def test_local_dir_stages_a_remote_dir_once(gcs_dir, tmp_path):
    """A remote directory is downloaded into a local cache keyed by content, once; a local one is
    returned as it is."""
    storage.atomic_write_bytes(storage.join(gcs_dir, "tokenizer.json"), b"{}")
    storage.atomic_write_bytes(storage.join(gcs_dir, "vocab.txt"), b"a\nb\n")
    cache = str(tmp_path / "cache")
    out = storage.local_dir(gcs_dir, ["tokenizer.json", "vocab.txt", "merges.txt"], "k1", cache=cache)
    assert out == os.path.join(cache, "k1") and sorted(os.listdir(out)) == ["tokenizer.json", "vocab.txt"]
    assert open(os.path.join(out, "vocab.txt"), "rb").read() == b"a\nb\n"
    storage.atomic_write_bytes(storage.join(gcs_dir, "vocab.txt"), b"changed")
    assert storage.local_dir(gcs_dir, ["vocab.txt"], "k1", cache=cache) == out  # same key: not downloaded again
    assert open(os.path.join(out, "vocab.txt"), "rb").read() == b"a\nb\n"
    assert sorted(os.listdir(cache)) == ["k1"]  # no temp directory left
    assert storage.local_dir(str(tmp_path), ["x"], "k2", cache=cache) == str(tmp_path)
    with pytest.raises(ValueError, match="plain name"):
        storage.local_dir(gcs_dir, ["x"], "../up", cache=cache)


@pytest.mark.parametrize("url, message", [("gs://b/x", "'b' is not a valid GCS bucket name"),
                                          ("gs://My_Bucket/x", "'My_Bucket' is not a valid GCS bucket name"),
                                          ("gs:///x", "'' is not a valid GCS bucket name"),
                                          ("s3://bucket/x", "the only URLs moe_jax reads and writes are gs://")])
def test_bad_urls_are_named(url, message):
    for call in (storage.path, storage.exists, storage.walk_files):
        with pytest.raises(ValueError, match=message):
            call(url)
    storage.path("gs://moe-jax_test.v2/x")  # valid: no error

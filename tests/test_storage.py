"""moe_jax.storage on a local directory and on gs:// (a local GCS emulator): round trips, atomic
writes that fail, publish by manifest (a crash before the manifest leaves nothing visible, damage is
caught by the digest), orbax checkpoints restored onto two devices, and the routing store."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import textwrap

import numpy as np
import pytest

from moe_jax import storage
from moe_jax.routing import store as store_lib
from simulated_devices import run_on_devices


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
    assert storage.digest(storage.join(root, "a.bin")) == (9, _sha(b"\x00\x01payload"))
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
    storage.publish(root, files)
    manifest = json.loads(storage.read_bytes(storage.join(root, storage.MANIFEST)))
    assert manifest["files"] == {n: {"size": len(b), "sha256": _sha(b)} for n, b in files.items()}
    assert {n: storage.read_published(root, n) for n in files} == files
    storage.publish(root, {"fr.npz": b"french"})  # adds; keeps what was published
    assert sorted(storage.read_manifest(root)) == ["de.npz", "en.npz", "fr.npz"]
    with pytest.raises(ValueError, match="plain file names"):
        storage.publish(root, {"a/b": b""})


@pytest.mark.parametrize("rewrite", [False, True])
def test_crash_before_the_manifest_leaves_nothing_visible(root, monkeypatch, rewrite):
    storage.publish(root, {"en.npz": b"v1", "de.npz": b"kept"})
    name, data = ("en.npz", b"version 2") if rewrite else ("fr.npz", b"french")
    real = storage._write_manifest

    def crash_on_final_manifest(directory, files):
        if name in files:  # the manifest that would name the new data
            raise KeyboardInterrupt("killed before the manifest")
        real(directory, files)

    monkeypatch.setattr(storage, "_write_manifest", crash_on_final_manifest)
    new = {name: data}
    with pytest.raises(KeyboardInterrupt):
        storage.publish(root, new)
    monkeypatch.undo()
    assert storage.read_bytes(storage.join(root, name)) == new[name]  # the data object was written ...
    with pytest.raises(storage.UnpublishedError, match=name):  # ... but no reader trusts it
        storage.read_published(root, name)
    assert storage.read_published(root, "de.npz") == b"kept"
    storage.publish(root, new)  # the next run publishes it
    assert storage.read_published(root, name) == new[name]


def test_damaged_or_missing_object_is_caught_by_its_digest(root):
    storage.publish(root, {"en.npz": b"english bytes"})
    storage.atomic_write_bytes(storage.join(root, "en.npz"), b"english bytez")  # same size, other bytes
    with pytest.raises(storage.DigestMismatchError, match="en.npz has 13 bytes with sha256"):
        storage.read_published(root, "en.npz")
    storage.remove(storage.join(root, "en.npz"))
    with pytest.raises(storage.DigestMismatchError, match="en.npz is listed in manifest.json but missing"):
        storage.read_published(root, "en.npz")


def test_gs_without_the_emulator_settings_is_refused_early_without_gcsfs(monkeypatch):
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
    with pytest.raises(ImportError, match=r"gs://b/x: gs:// paths need gcsfs: pip install 'moe_jax\[gcs\]'"):
        storage.path("gs://b/x")


ORBAX_ON_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, orbax.checkpoint as ocp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from moe_jax import storage
    root = sys.argv[1]
    mesh = Mesh(np.array(jax.devices()), ("x",))
    rows = NamedSharding(mesh, P("x"))
    w = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    tree = {"w": jax.device_put(w, rows), "b": np.ones(3, np.float32)}
    # the converted-checkpoint layout (moe_jax.convert.orbax_io): one zarr array per leaf, no OCDBT
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False)
    with ocp.Checkpointer(handler) as c:
        c.save(root + "/params", args=ocp.args.PyTreeSave(tree))
    target = {"w": jax.ShapeDtypeStruct((8, 6), np.float32, sharding=rows),
              "b": jax.ShapeDtypeStruct((3,), np.float32, sharding=NamedSharding(mesh, P()))}
    with ocp.StandardCheckpointer() as c:
        out = c.restore(root + "/params", target)
    shards = [{"device": s.device.id, "index": [[i.start, i.stop] for i in s.index[:1]],
               "shape": list(s.data.shape), "equal": bool((np.asarray(s.data) == w[s.index]).all())}
              for s in out["w"].addressable_shards]
    print(json.dumps({"shards": shards, "b": np.asarray(out["b"]).tolist(),
                      "w_objects": storage.listdir(root + "/params/w"),
                      "top": storage.listdir(root + "/params")}))
""")


def test_orbax_checkpoint_on_gcs_restores_each_device_its_rows(gcs_dir):
    """Saved and restored on gs:// onto 2 simulated devices: each device holds (and its chunk object
    holds) only its half of the rows, so a host of a pod reads only the objects of its shards."""
    proc = run_on_devices(["-c", ORBAX_ON_TWO_DEVICES, gcs_dir], devices=2)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [(s["index"], s["shape"], s["equal"]) for s in sorted(out["shards"], key=lambda s: s["device"])] == \
        [([[0, 4]], [4, 6], True), ([[4, 8]], [4, 6], True)]
    assert out["b"] == [1.0, 1.0, 1.0]
    assert "commit_success.txt" in out["top"]  # orbax's own marker, written last on object storage
    chunks = [n for n in out["w_objects"] if not n.startswith(".")]
    assert sorted(chunks) == ["0.0", "1.0"], out["w_objects"]  # one object per device's rows


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

"""Conversion, checkpoint loading and tokenizers on gs:// (a local GCS emulator): a conversion
written straight into its prefix (partial marker first, moe_jax.json last), loaded back equal to a
local one; crashes, foreign prefixes, sharded restores, and tokenizers staged once per content."""

from __future__ import annotations

import os

import numpy as np
import pytest

from moe_jax.io import hashing, storage
from moe_jax.convert import tokenizer as tok_lib


@pytest.fixture(scope="module")
def hf_local(tmp_path_factory):
    """A tiny random qwen3_moe HF checkpoint with the tiny tokenizer (local)."""
    from moe_jax.convert import tiny
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


# -- conversions on gs:// ----------------------------------------------------------------------------

def _flat(params):
    from tests.helpers.hf_reference import flatten
    return {k: np.asarray(v) for k, v in flatten(params).items()}


@pytest.fixture(scope="module")
def converted(hf_local, gcs_bucket, tmp_path_factory):
    """The same HF checkpoint converted locally, and from gs:// to gs:// (the HF dir uploaded first)."""
    from moe_jax.convert.checkpoint import convert_checkpoint

    root = f"{gcs_bucket}/convert-{os.getpid()}"
    hf_remote = storage.join(root, "hf")
    storage.upload_tree(hf_local, hf_remote)
    local = convert_checkpoint(hf_local, str(tmp_path_factory.mktemp("conv") / "ckpt"))
    remote = convert_checkpoint(hf_remote, storage.join(root, "ckpt"))
    return {"hf_local": hf_local, "hf_remote": hf_remote, "local": local, "remote": remote, "root": root}


def test_gcs_conversion_loads_like_the_local_one(converted, tmp_path):
    from moe_jax import load
    from moe_jax.convert import loader, orbax_io
    from moe_jax.convert.checkpoint import is_intact
    from moe_jax.convert.safetensors_io import scan_checkpoint

    remote, local = converted["remote"], converted["local"]
    names = storage.listdir(remote)
    assert orbax_io.META_FILE in names and orbax_io.PARTIAL_FILE not in names and orbax_io.PARAMS_DIR in names
    meta = orbax_io.read_meta(remote)
    assert meta["source"] == converted["hf_remote"]
    assert meta["checkpoint_sha256"] == scan_checkpoint(converted["hf_local"]).sha256  # same bytes sampled
    # the record names every object but itself, with the sizes listed on the bucket
    assert sorted(meta["files"]) == [n for n in storage.walk_files(remote) if n != orbax_io.META_FILE]
    assert is_intact(remote)  # every object's sha256 as recorded
    _, want = loader.load_params(local)
    for path in (remote, converted["hf_remote"]):  # the conversion, and the HF dir read from gs://
        assert loader.checkpoint_kind(path) == ("converted" if path == remote else "hf")
        cfg, got = loader.load_params(path)
        got, ref = _flat(got), _flat(want)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{path} {k}")
    os.environ["MOE_JAX_CACHE"] = str(tmp_path / "cache")  # the staged tokenizer goes here
    try:
        model = load(remote)
    finally:
        del os.environ["MOE_JAX_CACHE"]
    text = "Expert routing, 3 languages."
    assert model.tokenizer(text)["input_ids"] == tok_lib.load_tokenizer(local)(text)["input_ids"]


def test_tokenizer_key_of_a_conversion_reads_only_its_record(converted, tmp_path, monkeypatch):
    """The key comes from moe_jax.json's sha256s (no object's bytes hashed); the staged copy is checked
    against them: a tokenizer object damaged after the conversion is refused, naming it."""
    remote = converted["remote"]
    real = hashing.file_digest
    monkeypatch.setattr(hashing, "file_digest", lambda p: pytest.fail(f"hashed {p}") if storage.is_remote(p) else real(p))
    key = tok_lib.tokenizer_key(remote)
    assert tok_lib.load_tokenizer(remote, cache=str(tmp_path / "a")) is not None
    assert os.listdir(tmp_path / "a") == [key]
    storage.atomic_write_bytes(storage.join(converted["root"], "bad", "moe_jax.json"),
                               storage.read_bytes(storage.join(remote, "moe_jax.json")))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        data = storage.read_bytes(storage.join(remote, name))
        storage.atomic_write_bytes(storage.join(converted["root"], "bad", name),
                                   data.replace(b"<|im_end|>", b"<|im_END|>") if name == "tokenizer.json" else data)
    with pytest.raises(ValueError, match=r"tokenizer files \['tokenizer.json'\] of .*bad differ from what its "
                                         r"moe_jax.json records"):
        tok_lib.load_tokenizer(storage.join(converted["root"], "bad"), cache=str(tmp_path / "b"))
    assert os.listdir(tmp_path / "b") == []  # the damaged copy is not kept


KILL_AFTER_PARAMS = """
import os, sys
from moe_jax.artifacts import checkpoint as digest
from moe_jax.convert import checkpoint
digest.record_files = lambda *a, **k: os._exit(3)  # killed after the params, before moe_jax.json
checkpoint.convert_checkpoint(sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow  # a conversion SIGKILLed in its own process
def test_killed_or_failed_conversion_on_gcs(converted, gcs_dir, monkeypatch):
    """Killed after the params: the prefix keeps the partial marker, load refuses it naming the command,
    and a rerun (no --overwrite needed) replaces it. Raising after the params: nothing is left."""
    import subprocess
    import sys

    from moe_jax.artifacts import checkpoint as digest
    from moe_jax.convert import loader, orbax_io
    from moe_jax.convert.checkpoint import convert_checkpoint, is_intact
    from moe_jax.convert.safetensors_io import CheckpointError

    hf, out = converted["hf_remote"], storage.join(gcs_dir, "ckpt")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_PARAMS, hf, out], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=root, JAX_PLATFORMS="cpu"), timeout=300)
    assert proc.returncode == 3, proc.stderr[-2000:]
    names = storage.listdir(out)
    assert {orbax_io.PARTIAL_FILE, orbax_io.PARAMS_DIR, "tokenizer.json"} <= set(names), names
    assert orbax_io.META_FILE not in names
    with pytest.raises(CheckpointError, match=rf"{out} is an incomplete moe_jax conversion \(moe_jax.partial.json.*"
                                              rf"python -m moe_jax.convert --hf_dir={hf} --out={out}"):
        loader.load_params(out)
    assert not is_intact(out)
    convert_checkpoint(hf, out)  # replaces the interrupted one
    assert orbax_io.PARTIAL_FILE not in storage.listdir(out) and is_intact(out)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        convert_checkpoint(hf, out)

    def fail(*a, **k):
        raise RuntimeError("storage went away")

    monkeypatch.setattr(digest, "record_files", fail)
    with pytest.raises(RuntimeError, match="storage went away"):
        convert_checkpoint(hf, out, overwrite=True)
    assert storage.walk_files(out) == []  # the replaced conversion and the failed one: gone, marker last
    with pytest.raises(FileNotFoundError, match="does not exist"):
        loader.load_params(out)
    monkeypatch.setattr(storage, "remove_tree", fail)  # the clean-up failing too: the first error, marker kept
    with pytest.raises(RuntimeError, match="storage went away"):
        convert_checkpoint(hf, out)
    assert orbax_io.PARTIAL_FILE in storage.listdir(out)
    with pytest.raises(CheckpointError, match="incomplete moe_jax conversion"):
        loader.load_params(out)


def test_gcs_content_check_compares_md5s_without_reading(converted, gcs_dir, monkeypatch):
    """On gs:// the record keeps GCS's md5 of each object: the convert stage's content check reads a
    listing, not the checkpoint; an object replaced by other bytes of the same size is named."""
    from moe_jax.artifacts import checkpoint as digest
    from moe_jax.convert import orbax_io
    from moe_jax.convert.checkpoint import convert_checkpoint, is_intact

    out = convert_checkpoint(converted["hf_remote"], storage.join(gcs_dir, "ckpt"))
    record = orbax_io.read_meta(out)["files"]
    assert record and all(set(r) == {"size", "sha256", "md5"} for r in record.values())
    real = hashing.file_digest
    monkeypatch.setattr(hashing, "file_digest", lambda p: pytest.fail(f"read {p}") if storage.is_remote(p) else real(p))
    assert is_intact(out)
    chunk = next(n for n in sorted(record) if n.startswith("params/layers.0.moe.gate/"))
    data = storage.read_bytes(storage.join(out, chunk))
    storage.atomic_write_bytes(storage.join(out, chunk), bytes(b ^ 1 for b in data))
    assert digest.damage(out, record) == [f"{chunk} changed after it was written (md5 "
                                          f"{storage.file_listing(out)[chunk]['md5']}, {record[chunk]['md5']} was written)"]
    assert not is_intact(out)


def test_prefix_with_foreign_objects_is_refused_and_untouched(converted, gcs_dir):
    from moe_jax.convert.checkpoint import convert_checkpoint

    out = storage.join(gcs_dir, "mine")
    storage.atomic_write_bytes(storage.join(out, "notes.txt"), b"the user's")
    storage.atomic_write_bytes(storage.join(out, "params", "x"), b"not ours")
    before = {n: storage.read_bytes(storage.join(out, n)) for n in storage.walk_files(out)}
    for overwrite in (False, True):
        with pytest.raises(ValueError, match=rf"{out} exists and is not a moe_jax conversion .*it holds notes.txt, "
                                             "params"):
            convert_checkpoint(converted["hf_remote"], out, overwrite=overwrite)
    assert {n: storage.read_bytes(storage.join(out, n)) for n in storage.walk_files(out)} == before
    with pytest.raises(ValueError, match="is inside the input dir"):
        convert_checkpoint(converted["hf_remote"], storage.join(converted["hf_remote"], "out"))


RESTORE_ON_TWO_DEVICES = """
import json, sys
import jax
from moe_jax import sharding as shd
from moe_jax.convert import loader, orbax_io
from moe_jax.models.config import ModelConfig
ckpt = sys.argv[1]
cfg = ModelConfig.from_dict(orbax_io.read_meta(ckpt)["config"])
mesh = shd.make_mesh({"data": 1, "model": 2})
_, params = loader.load_params(ckpt, shardings=shd.param_shardings(cfg, mesh))
out = {}
for k, x in jax.tree_util.tree_leaves_with_path(params):
    out["/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in k)] = {
        "spec": [a for a in x.sharding.spec] + [None] * (x.ndim - len(x.sharding.spec)),
        "shards": sorted([s.device.id, [[i.start or 0, x.shape[d] if i.stop is None else i.stop]
                                        for d, i in enumerate(s.index)], np.asarray(s.data).tolist()]
                         for s in x.addressable_shards)}
print(json.dumps(out))
""".replace("import jax\n", "import jax\nimport numpy as np\n")


@pytest.mark.slow  # 2 simulated devices in a subprocess
def test_restore_from_gcs_onto_two_devices_reads_expert_chunks(converted):
    """Saved layout: each routed-expert stack has one chunk object per expert (all layers of that
    expert), so a host holding experts [a, b) reads only their objects. Restored on 2 simulated devices
    with the parameter shardings: each leaf's sharding, and each device's shard equal to the local rows."""
    import json

    from moe_jax import sharding as shd
    from moe_jax.convert import loader, orbax_io
    from moe_jax.models.params import logical_axes
    from tests.helpers.simulated_devices import run_on_devices

    remote = converted["remote"]
    cfg, want = loader.load_params(converted["local"])
    E = cfg.num_experts
    params = storage.join(remote, orbax_io.PARAMS_DIR)
    for name in ("gate", "up", "down"):
        leaf = storage.join(params, f"layers.0.moe.{name}")
        zarray = storage.read_json(storage.join(leaf, ".zarray"))
        shape = want["layers"][0]["moe"][name].shape  # [layers, E, ...]
        assert zarray["shape"] == list(shape) and zarray["chunks"] == [shape[0], 1, *shape[2:]], zarray
        assert [n for n in storage.listdir(leaf) if not n.startswith(".")] == [f"0.{e}.0.0" for e in range(E)]
    emb = storage.read_json(storage.join(params, "embed", ".zarray"))
    assert emb["chunks"] == emb["shape"]  # small: one chunk (chunks are at least 1 MiB)

    proc = run_on_devices(["-c", RESTORE_ON_TWO_DEVICES, remote], devices=2)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    axes, ref = _flat(logical_axes(cfg)), _flat(want)
    assert sorted(got) == sorted("/".join(map(str, k)) for k in ref)
    for k, x in ref.items():
        g = got["/".join(map(str, k))]
        spec = list(shd.partition_axes(x.shape, tuple(axes[k]), {"data": 1, "model": 2}))
        assert g["spec"] == spec, k
        for device, index, data in g["shards"]:
            np.testing.assert_array_equal(np.asarray(data, x.dtype), x[tuple(slice(a, b) for a, b in index)])
        if "model" in spec:  # split: each device holds its half
            d = spec.index("model")
            assert [s[1][d] for s in g["shards"]] == [[0, x.shape[d] // 2], [x.shape[d] // 2, x.shape[d]]], k
    assert got["layers/0/moe/gate"]["spec"] == [None, "model", None, None]  # experts split across devices


@pytest.mark.slow  # the convert stage; gs:// conversion itself stays in the fast lane (loads_like_the_local_one)
def test_convert_stage_on_a_gcs_workdir(gcs_dir, monkeypatch, tmp_path):
    """The convert stage with a gs:// workdir: preflight passes, the tiny source is written to
    <workdir>/hf_tiny, the checkpoint and its source stamp to the bucket; a rerun finds it up to date,
    and later stages' check (checkpoint_problems) accepts it."""
    from moe_jax.artifacts import layout as wd
    from moe_jax.pipeline import convert as stage, loading
    from tests.helpers.configs import demo_config

    monkeypatch.setenv("MOE_JAX_CACHE", str(tmp_path / "cache"))
    config = demo_config()
    assert stage.preflight(config, gcs_dir) == []
    assert stage.run(config, gcs_dir) == wd.checkpoint_dir(gcs_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "moe_jax_tiny.json"} <= set(
        storage.listdir(wd.tiny_dir(gcs_dir)))
    stamp = storage.read_json(wd.convert_stamp(gcs_dir))
    assert stamp["hf_dir"] == wd.tiny_dir(gcs_dir) and stamp == loading.converted_identity(config, gcs_dir)
    meta = storage.read_bytes(storage.join(wd.checkpoint_dir(gcs_dir), "moe_jax.json"))
    stage.run(config, gcs_dir)  # up to date: not converted again
    assert storage.read_bytes(storage.join(wd.checkpoint_dir(gcs_dir), "moe_jax.json")) == meta
    assert loading.checkpoint_problems(config, gcs_dir) == [] and stage.preflight(config, gcs_dir) == []
    assert tok_lib.load_tokenizer(wd.checkpoint_dir(gcs_dir)).eos_token == "<|im_end|>"


@pytest.mark.parametrize("model_type", ["qwen2_moe", "qwen3_moe", "olmoe", "phimoe", "gpt_oss"])
def test_expert_chunking_follows_the_param_spec(model_type):
    """The leaves save_tree stores one chunk per expert are exactly those whose logical axes (the spec
    the shardings come from) name "expert", on that axis."""
    import jax

    from moe_jax.convert import orbax_io
    from moe_jax.models.config import ModelConfig
    from moe_jax.models.params import logical_axes, param_shapes
    from moe_jax.convert.tiny import tiny_hf_config

    cfg = ModelConfig.from_hf(tiny_hf_config(model_type))
    paths, treedef = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))
    axes = treedef.flatten_up_to(logical_axes(cfg))
    got = {jax.tree_util.keystr(p): orbax_io.expert_axes(p) for p, _ in paths}
    want = {jax.tree_util.keystr(p): tuple(i for i, a in enumerate(ax) if a == "expert") for (p, _), ax in zip(paths, axes)}
    assert got == want
    assert sum(map(bool, got.values())) >= 3  # gate, up, down of each MoE run

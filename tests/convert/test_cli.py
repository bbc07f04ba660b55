"""The conversion CLI / convert_checkpoint: multi-shard conversion, atomicity, and bad input rejected
before anything is written (each error naming the file and tensor)."""

import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from safetensors.numpy import load_file, save_file

from moe_jax.convert import __main__ as convert_main
from moe_jax.convert import checkpoint, loader, orbax_io
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.loader import load_params
from moe_jax.convert.safetensors_io import CheckpointError, write_safetensors
from moe_jax.models.config import UnsupportedModelError
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF = tiny_hf_config("qwen2_moe")
TOKENIZER = {"tokenizer.json": '{"version": "1.0"}', "tokenizer_config.json": '{"model_max_length": 256}',
             "chat_template.jinja": "{{ messages }}"}


def run_cli(*args):
    """``python -m moe_jax.convert *args`` as a process: its own flag parsing (app.run) and exit status.
    Only where the process is the point (test_killed_conversion_leaves_no_loadable_dir): each start
    costs seconds of imports."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "moe_jax.convert", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def main_cli(*args):
    """The CLI's ``main`` in this process, its flags (``--name=value`` or ``--name``) set as app.run
    parses them and restored after: a ``CompletedProcess`` whose returncode and stderr are those of
    ``python -m moe_jax.convert *args`` (a ``SystemExit`` message goes to stderr with status 1)."""
    fv = flags.FLAGS
    was_parsed, code = fv.is_parsed(), 0
    out, err = io.StringIO(), io.StringIO()
    with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        handler = logging.StreamHandler(err)  # the conversion's warnings, as absl logs them to stderr
        logging.getLogger().addHandler(handler)
        try:
            for arg in args:
                name, _, value = arg[2:].partition("=")
                fv[name].parse(value or "true")
            fv.mark_as_parsed()
            convert_main.main(["moe_jax.convert"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        finally:
            logging.getLogger().removeHandler(handler)
            if not was_parsed:
                fv.unparse_flags()
    return subprocess.CompletedProcess(["moe_jax.convert", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = write_random_hf_checkpoint(tmp_path_factory.mktemp("hf") / "ckpt", HF, seed=1, num_shards=3)
    for name, text in TOKENIZER.items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return path


@pytest.fixture(scope="module")
def reference(hf_dir):
    return load_params(hf_dir)[1]


def leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def assert_same(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_cli_converts_multishard_checkpoint(hf_dir, reference, tmp_path):
    assert len([f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]) == 3
    out = tmp_path / "out"
    r = main_cli(f"--hf_dir={hf_dir}", f"--out={out}", "--dtype=float32")
    assert r.returncode == 0, r.stderr
    assert "converting" in r.stderr  # tqdm bar
    assert sorted(os.listdir(out)) == sorted(["params", "config.json", "moe_jax.json", *TOKENIZER])
    for name, text in TOKENIZER.items():
        assert (out / name).read_text() == text
    with open(os.path.join(hf_dir, "config.json")) as f:
        assert json.loads((out / "config.json").read_text()) == json.load(f)
    meta = json.loads((out / "moe_jax.json").read_text())
    assert meta["dtype"] == "float32" and meta["source"] == os.path.abspath(hf_dir)
    assert meta["config"]["model_type"] == "qwen2_moe" and meta["config"]["moe_layers"] == [True, False, True]
    assert len(meta["checkpoint_sha256"]) == 64
    assert meta["num_params"] == sum(x.size for x in leaves(reference))
    cfg, params = load_params(out)
    assert cfg.moe_layers == (True, False, True)
    assert_same(params, reference)
    # existing --out is refused without --overwrite, replaced with it
    r = main_cli(f"--hf_dir={hf_dir}", f"--out={out}")
    assert r.returncode != 0 and "exists" in r.stderr and "--overwrite" in r.stderr
    r = main_cli(f"--hf_dir={hf_dir}", f"--out={out}", "--overwrite", "--dtype=bfloat16")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "moe_jax.json").read_text())["dtype"] == "bfloat16"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or old dirs left


def test_cli_converts_to_float16(hf_dir, reference, tmp_path):
    """--dtype=float16: every stored leaf is the float32 weight rounded to float16 (NumPy's rounding)."""
    out = tmp_path / "f16"
    r = main_cli(f"--hf_dir={hf_dir}", f"--out={out}", "--dtype=float16")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "moe_jax.json").read_text())["dtype"] == "float16"
    _, f16 = load_params(out, dtype="float16")
    _, up = load_params(out, dtype="float32")
    for g, u, w in zip(leaves(f16), leaves(up), leaves(reference), strict=True):
        assert g.dtype == np.float16 and u.dtype == np.float32
        np.testing.assert_array_equal(g.view(np.uint16), w.astype(np.float16).view(np.uint16))
        np.testing.assert_array_equal(u, w.astype(np.float16).astype(np.float32))
    assert any(not np.array_equal(u, w) for u, w in zip(leaves(up), leaves(reference)))  # it did round


def test_cli_rejects_unsupported_dtype(hf_dir, tmp_path):
    r = main_cli(f"--hf_dir={hf_dir}", f"--out={tmp_path / 'out'}", "--dtype=int8")
    assert r.returncode != 0
    assert "unsupported dtype 'int8'" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_checkpoint_hash_identifies_headers(hf_dir, tmp_path):
    a = json.loads(open(os.path.join(convert_checkpoint(hf_dir, tmp_path / "a"), "moe_jax.json")).read())
    b = json.loads(open(os.path.join(convert_checkpoint(hf_dir, tmp_path / "b"), "moe_jax.json")).read())
    other = write_random_hf_checkpoint(tmp_path / "other", HF, seed=1, num_shards=2)  # same values, other shards
    c = json.loads(open(os.path.join(convert_checkpoint(other, tmp_path / "c"), "moe_jax.json")).read())
    assert a["checkpoint_sha256"] == b["checkpoint_sha256"] != c["checkpoint_sha256"]


def test_checkpoint_hash_identifies_weights_with_equal_headers(tmp_path):
    """Same architecture and layout, other weights (a fine-tune, another seed): another hash."""
    from moe_jax.convert.safetensors_io import scan_checkpoint
    x = scan_checkpoint(write_random_hf_checkpoint(tmp_path / "x", HF, seed=5))
    y = scan_checkpoint(write_random_hf_checkpoint(tmp_path / "y", HF, seed=6))
    assert x.shapes() == y.shapes() and x.sha256 != y.sha256


# ----------------------------------------------------------------------------------------------
# Atomicity


class Crash(RuntimeError):
    pass


def crash_after(monkeypatch, n):
    real, calls = loader.read_tensor, []

    def read(info):
        calls.append(info.name)
        if len(calls) > n:
            raise Crash("simulated crash")
        return real(info)
    monkeypatch.setattr(loader, "read_tensor", read)


def snapshot(path):
    return {os.path.relpath(os.path.join(d, f), path): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(path) for f in files}


def test_crash_mid_conversion_leaves_nothing(hf_dir, tmp_path, monkeypatch):
    crash_after(monkeypatch, 20)
    with pytest.raises(Crash, match="simulated crash"):
        convert_checkpoint(hf_dir, tmp_path / "out")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stage", ["read", "save", "install"])
def test_crash_keeps_existing_out(hf_dir, reference, tmp_path, monkeypatch, stage):
    out = convert_checkpoint(hf_dir, tmp_path / "out", dtype="float32")
    before = snapshot(out)
    if stage == "read":
        crash_after(monkeypatch, 20)
    elif stage == "save":
        real = orbax_io.save_tree

        def save(path, tree):  # a partly written params dir, then the crash
            real(path, tree)
            raise Crash("simulated crash")
        monkeypatch.setattr(orbax_io, "save_tree", save)
    else:
        monkeypatch.setattr(checkpoint, "_install", lambda tmp, out: (_ for _ in ()).throw(Crash("simulated crash")))
    with pytest.raises(Crash, match="simulated crash"):
        convert_checkpoint(hf_dir, out, dtype="bfloat16", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert snapshot(out) == before
    assert_same(load_params(out)[1], reference)


@pytest.mark.slow  # two Python processes (the killed conversion, then the CLI)
def test_killed_conversion_leaves_no_loadable_dir(hf_dir, tmp_path):
    """A SIGKILL mid-conversion (no cleanup runs) leaves only an incomplete temp dir."""
    script = textwrap.dedent(f"""
        import os, signal
        from moe_jax.convert import loader, orbax_io
        from moe_jax.convert.checkpoint import convert_checkpoint
        real = orbax_io.save_tree
        def save(path, tree):
            real(path, tree)
            os.kill(os.getpid(), signal.SIGKILL)
        orbax_io.save_tree = save
        convert_checkpoint({str(hf_dir)!r}, {str(tmp_path / 'out')!r})
    """)
    env = {**os.environ, "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()
    (leftover,) = os.listdir(tmp_path)
    assert leftover.startswith(".out.tmp-") and "params" in os.listdir(tmp_path / leftover)
    with pytest.raises(CheckpointError, match="incomplete"):
        load_params(tmp_path / leftover)
    # the next run removes it (and says so); look-alikes that are not its temp naming stay
    for name in (".out.tmp-mine", ".outx.tmp-abcd1234", "out.tmp-abcd1234"):
        (tmp_path / name).mkdir()
    r = run_cli(f"--hf_dir={hf_dir}", f"--out={tmp_path / 'out'}")
    assert r.returncode == 0, r.stderr
    assert f"removing {tmp_path / leftover}" in r.stderr
    assert sorted(os.listdir(tmp_path)) == [".out.tmp-mine", ".outx.tmp-abcd1234", "out", "out.tmp-abcd1234"]


# ----------------------------------------------------------------------------------------------
# Bad input: the promised error, naming file and tensor, before anything is written


@pytest.fixture
def bad(hf_dir, tmp_path):
    """A writable copy of the good checkpoint, and where its conversion would go."""
    src = tmp_path / "src"
    shutil.copytree(hf_dir, src)
    with open(src / "model.safetensors.index.json") as f:
        weight_map = json.load(f)["weight_map"]
    return src, tmp_path / "conv" / "out", weight_map


def rewrite_shard(src, weight_map, edit):
    """Rewrites the shard holding layer 0's q_proj with ``edit(dict of tensors)`` (safetensors' own writer)."""
    shard = weight_map["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(src / shard)
    edit(tensors)
    save_file(tensors, src / shard, metadata={"format": "pt"})
    return shard


def assert_rejected(src, out, error, *needles):
    before = snapshot(src)
    with pytest.raises(error) as e:
        convert_checkpoint(src, out)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert not out.parent.exists()  # nothing written, not even the parent dir
    assert snapshot(src) == before
    return str(e.value)


def test_unknown_model_type(bad):
    src, out, _ = bad
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    assert_rejected(src, out, UnsupportedModelError, "'llama'", "qwen2_moe")


def test_missing_tensor(bad):
    src, out, wm = bad
    name = "model.layers.0.self_attn.q_proj.weight"
    rewrite_shard(src, wm, lambda t: t.pop(name))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    del index["weight_map"][name]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_rejected(src, out, CheckpointError, name, "lacks 1 tensor", "model-0000")


def test_mis_shaped_tensor(bad):
    src, out, wm = bad
    name = "model.layers.0.self_attn.q_proj.weight"
    shard = rewrite_shard(src, wm, lambda t: t.update({name: np.zeros((64, 63), np.float32)}))
    assert_rejected(src, out, CheckpointError, name, shard, "[64, 63]", "expected [64, 64]")


def test_missing_expert_of_fused_checkpoint(tmp_path):
    src = write_random_hf_checkpoint(tmp_path / "src", tiny_hf_config("olmoe"), fused_experts=True)
    tensors = load_file(os.path.join(src, "model.safetensors"))
    del tensors["model.layers.1.mlp.experts.down_proj"]
    save_file(tensors, os.path.join(src, "model.safetensors"), metadata={"format": "pt"})
    assert_rejected(tmp_path / "src", tmp_path / "conv" / "out", CheckpointError,
                    "model.layers.1.mlp.experts.down_proj")


def test_truncated_file(bad):
    src, out, wm = bad
    shard = sorted(set(wm.values()))[-1]
    with open(src / shard, "r+b") as f:
        f.truncate(os.path.getsize(src / shard) - 100)
    assert_rejected(src, out, CheckpointError, shard, "truncated")


def test_corrupt_header(bad):
    src, out, wm = bad
    shard = sorted(set(wm.values()))[1]
    with open(src / shard, "r+b") as f:
        f.seek(8)
        f.write(b"#garbage#" * 4)
    assert_rejected(src, out, CheckpointError, shard, "corrupt")


def test_corrupt_header_length(bad):
    src, out, wm = bad
    shard = sorted(set(wm.values()))[0]
    with open(src / shard, "r+b") as f:
        f.write((2**40).to_bytes(8, "little"))
    assert_rejected(src, out, CheckpointError, shard, "corrupt")


def test_index_names_missing_shard(bad):
    src, out, wm = bad
    shard = sorted(set(wm.values()))[1]
    os.remove(src / shard)
    some_tensor = sorted(n for n, f in wm.items() if f == shard)[0]
    assert_rejected(src, out, CheckpointError, shard, some_tensor, "does not exist")


def test_unsupported_tensor_dtype(bad):
    src, out, wm = bad
    name = "model.layers.0.self_attn.q_proj.weight"
    shard = rewrite_shard(src, wm, lambda t: t.update({name: t[name].astype(np.float64)}))
    assert_rejected(src, out, CheckpointError, shard, name, "F64")


def test_unexpected_tensor(bad):
    src, out, wm = bad
    rewrite_shard(src, wm, lambda t: t.update({"model.layers.0.mlp.mystery.weight": np.zeros(3, np.float32)}))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.0.mlp.mystery.weight"] = wm["model.layers.0.self_attn.q_proj.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_rejected(src, out, CheckpointError, "model.layers.0.mlp.mystery.weight", "does not know")


def test_rotary_inv_freq_is_ignored_with_a_warning(bad, reference, caplog):
    src, out, wm = bad
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    rewrite_shard(src, wm, lambda t: t.update({name: np.ones(8, np.float32)}))
    index = json.loads((src / "model.safetensors.index.json").read_text())
    index["weight_map"][name] = wm["model.layers.0.self_attn.q_proj.weight"]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_same(load_params(src)[1], reference)
    assert "inv_freq" in caplog.text


def test_no_safetensors(bad):
    src, out, wm = bad
    for f in set(wm.values()) | {"model.safetensors.index.json"}:
        os.remove(src / f)
    assert_rejected(src, out, CheckpointError, "model.safetensors")


def test_unsupported_dtype_argument(bad):
    src, out, _ = bad
    with pytest.raises(ValueError, match="unsupported dtype 'float64'"):
        convert_checkpoint(src, out, dtype="float64")
    assert not out.parent.exists()


def test_existing_out_is_refused(bad):
    src, out, _ = bad
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="overwrite"):
        convert_checkpoint(src, out)
    assert os.listdir(out) == ["keep.txt"]


def test_overwrite_refuses_out_holding_the_input(hf_dir, tmp_path):
    """--overwrite with the input inside --out: refused, nothing deleted."""
    out = tmp_path / "OUT"
    shutil.copytree(hf_dir, out / "hf")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    r = main_cli(f"--hf_dir={out / 'hf'}", f"--out={out}", "--overwrite")
    assert r.returncode != 0 and "contains the input dir" in r.stderr, r.stderr
    assert snapshot(out) == before
    r = main_cli(f"--hf_dir={out / 'hf'}", f"--out={out / 'hf' / 'conv'}", "--overwrite")
    assert r.returncode != 0 and "is inside the input dir" in r.stderr, r.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize("marker", [None, '{"format": "something.else"}', "not json"])
def test_overwrite_refuses_dir_moe_jax_did_not_write(bad, marker):
    src, out, _ = bad
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    if marker is not None:
        (out / orbax_io.META_FILE).write_text(marker)
    before = snapshot(out)
    with pytest.raises(ValueError, match="not a moe_jax conversion.*--overwrite only replaces"):
        convert_checkpoint(src, out, overwrite=True)
    assert snapshot(out) == before and sorted(os.listdir(out.parent)) == ["out"]


def test_overwrite_replaces_an_empty_dir(bad):
    src, out, _ = bad
    out.mkdir(parents=True)
    convert_checkpoint(src, out, overwrite=True)
    assert orbax_io.read_meta(str(out))["format"] == orbax_io.FORMAT


def test_incomplete_converted_dir_is_refused(hf_dir, tmp_path):
    out = convert_checkpoint(hf_dir, tmp_path / "out")
    os.remove(os.path.join(out, orbax_io.META_FILE))
    with pytest.raises(CheckpointError, match="incomplete"):
        load_params(out)


def test_write_safetensors_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="'x'.*int64"):
        write_safetensors(str(tmp_path / "a.safetensors"), {"x": np.arange(3)})
    assert os.listdir(tmp_path) == []

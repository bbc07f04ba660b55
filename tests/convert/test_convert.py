"""HF checkpoints (saved by transformers) -> params: name maps, layouts, round trip, dtypes, shardings."""

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
from tests.helpers.hf_reference import build_hf_model, expected_params, flatten, save_hf_model
from safetensors import safe_open
from safetensors.numpy import load_file

from moe_jax.convert import name_map
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.export import params_to_hf_tensors, write_hf_checkpoint
from moe_jax.convert.loader import hf_tensors_to_params, load_hf_config, load_params
from moe_jax.convert.safetensors_io import write_safetensors
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import init_params, layer_params, param_shapes, unstack_layers
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

CASES = {
    "qwen2_moe": tiny_hf_config("qwen2_moe"),  # layer 1 is a dense MLP
    "qwen3_moe": tiny_hf_config("qwen3_moe"),
    "olmoe": tiny_hf_config("olmoe", clip_qkv=3.0),
    "phimoe": tiny_hf_config("phimoe"),
    "qwen2_moe_tied": tiny_hf_config("qwen2_moe", tie_word_embeddings=True, num_hidden_layers=2),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{case: (dir, torch model)}: tiny transformers models saved with save_pretrained."""
    out = {}
    for i, (case, hf) in enumerate(CASES.items()):
        model = build_hf_model(hf, seed=i)
        out[case] = (save_hf_model(model, tmp_path_factory.mktemp(case)), model)
    return out


def assert_trees_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        assert fa[k].dtype == fb[k].dtype and fa[k].shape == fb[k].shape, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


@pytest.mark.parametrize("case", CASES)
def test_name_map_covers_save_pretrained_exactly(saved, case):
    path, _ = saved[case]
    cfg = load_hf_config(path)
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        on_disk = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    sources = name_map.plan(cfg, on_disk)
    assert {s.name: s.shape for s in sources} == on_disk
    # every param leaf (every row of a layer stack) is written: once, or once per expert
    written = {}
    for s in sources:
        for t in s.targets:
            if s.row is not None:  # ("layers", run, ...) row r -> ("layers", decoder layer, ...)
                t = ("layers", cfg.layer_runs[t[1]][0] + s.row) + t[2:]
            written[t] = written.get(t, 0) + 1
    leaves = flatten(unstack_layers(init_params(cfg), cfg))
    assert written.keys() == leaves.keys()
    for t, n in written.items():
        assert n == (cfg.num_experts if t[-2:-1] == ("moe",) and t[-1] in ("gate", "up", "down") else 1), t


@pytest.mark.parametrize("case", CASES)
def test_loaded_params_equal_transformers_weights(saved, case):
    path, model = saved[case]
    cfg, params = load_params(path)
    assert cfg == ModelConfig.from_hf(CASES[case])
    got, want = flatten(unstack_layers(params, cfg)), expected_params(cfg, model)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    if case == "qwen2_moe":  # the dense layer is read as a dense MLP, not as experts
        assert [sorted(layer_params(params, cfg, i)) for i in range(3)] == [
            ["attn", "attn_norm", "mlp_norm", "moe"], ["attn", "attn_norm", "mlp", "mlp_norm"],
            ["attn", "attn_norm", "mlp_norm", "moe"]]
        assert len(params["layers"]) == 3  # three runs: MoE, dense, MoE
    if case == "qwen2_moe_tied":
        assert "lm_head" not in params


# qwen2_moe in the full suite only: phimoe runs the same fused readers and writer in the fast lane
@pytest.mark.parametrize("case", [pytest.param("qwen2_moe", marks=pytest.mark.slow), "phimoe"])
def test_fused_checkpoints_give_same_params(saved, case, tmp_path):
    path, model = saved[case]
    _, per_expert = load_params(path)
    # transformers' own fused layout (PhiMoE: also "mlp.router.weight")
    fused_dir = save_hf_model(model, tmp_path / "hf_fused", save_original_format=False)
    names = load_file(os.path.join(fused_dir, "model.safetensors")).keys()
    assert any(n.endswith("mlp.experts.gate_up_proj") for n in names)
    assert_trees_equal(load_params(fused_dir)[1], per_expert)
    # our fused writer
    cfg = load_hf_config(path)
    tensors = load_file(os.path.join(path, "model.safetensors"))
    ours = write_hf_checkpoint(tmp_path / "ours_fused", CASES[case], tensors, num_shards=2, fused_experts=True)
    assert_trees_equal(load_params(ours)[1], per_expert)
    # transposed fused layout [E, H, 2I] / [E, I, H], built by hand from the in-memory weights
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    t_dir = tmp_path / "transposed"
    t_dir.mkdir()
    hf = dict(tensors)
    for i in cfg.moe_layer_ids:
        for e in range(cfg.num_experts):
            for proj in name_map.EXPERT_PROJ[cfg.family.hf_moe_prefix].values():
                del hf[f"model.layers.{i}.{cfg.family.hf_moe_prefix}.experts.{e}.{proj}.weight"]
        for w in ("gate_up_proj", "down_proj"):
            hf[f"model.layers.{i}.mlp.experts.{w}"] = np.ascontiguousarray(
                sd[f"model.layers.{i}.mlp.experts.{w}"].transpose(0, 2, 1))
    write_hf_checkpoint(t_dir, CASES[case], hf)
    assert_trees_equal(load_params(t_dir)[1], per_expert)


@pytest.mark.parametrize("case", CASES)
def test_round_trip_hf_params_hf_params(saved, case, tmp_path):
    path, _ = saved[case]
    cfg, params = load_params(path)
    original = load_file(os.path.join(path, "model.safetensors"))
    exported = params_to_hf_tensors(cfg, params)
    assert exported.keys() == original.keys()
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    out = write_hf_checkpoint(tmp_path / "rt", CASES[case], exported, num_shards=3)
    assert len([f for f in os.listdir(out) if f.endswith(".safetensors")]) == 3
    assert_trees_equal(load_params(out)[1], params)
    # the in-memory converter agrees with the streaming one
    assert_trees_equal(hf_tensors_to_params(cfg, original), flatten_to_numpy(params))


def flatten_to_numpy(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.mark.slow  # the fast lane converts to bfloat16 in test_cli's multishard test
def test_bfloat16_conversion_rounds_float32(saved, tmp_path):
    path, _ = saved["phimoe"]
    _, f32 = load_params(path, dtype="float32")
    want = jax.tree.map(lambda x: jnp.asarray(x).astype(jnp.bfloat16), f32)  # XLA's rounding
    out = convert_checkpoint(path, tmp_path / "bf16", dtype="bfloat16")
    for got in (load_params(out, dtype="bfloat16")[1], load_params(path, dtype="bfloat16")[1]):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            assert g.dtype == jnp.bfloat16
            np.testing.assert_array_equal(np.asarray(g).view(np.uint16), np.asarray(w).view(np.uint16))
    up = load_params(out, dtype="float32")[1]
    for g, w in zip(jax.tree.leaves(up), jax.tree.leaves(want)):
        assert g.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w).astype(np.float32))
    assert not np.array_equal(np.asarray(jax.tree.leaves(up)[0]), np.asarray(jax.tree.leaves(f32)[0]))


@pytest.mark.parametrize("stored", ["bfloat16", "float16"])
def test_half_precision_checkpoints_read_exactly(tmp_path, stored):
    hf = tiny_hf_config("qwen3_moe")
    path = write_random_hf_checkpoint(tmp_path / stored, hf, seed=3, num_shards=2, dtype=stored)
    cfg, params = load_params(path, dtype="float32")
    # independent reader: safetensors' torch backend
    tensors = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(path, f), "pt") as st:
                for k in st.keys():
                    assert str(st.get_tensor(k).dtype) == f"torch.{stored}"
                    tensors[k] = st.get_tensor(k).to(torch.float32).numpy()
    assert_trees_equal(flatten_to_numpy(params), hf_tensors_to_params(cfg, tensors))


def test_shardings_place_each_leaf(saved, tmp_path):
    path, _ = saved["olmoe"]
    cfg = load_hf_config(path)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    tree = jax.tree.map(lambda _: rep, param_shapes(cfg))
    converted = convert_checkpoint(path, tmp_path / "c", dtype="float32")
    _, ref = load_params(path)
    for source in (path, converted):
        for shardings in (tree, rep):
            _, params = load_params(source, shardings=shardings)
            for leaf in jax.tree.leaves(params):
                assert isinstance(leaf, jax.Array) and leaf.sharding == rep
            assert_trees_equal(flatten_to_numpy(params), flatten_to_numpy(ref))


def test_unsupported_load_dtype_raises_before_reading(saved):
    path, _ = saved["olmoe"]
    with pytest.raises(ValueError, match="unsupported dtype 'int8'.*float32, bfloat16, float16"):
        load_params(path, dtype="int8")
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_params(path, dtype="float64")


def test_write_safetensors_is_readable_by_safetensors(tmp_path):
    x = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
         "b": np.array([1.5, -2.25], dtype=ml_dtypes.bfloat16),
         "c": np.array([[0.5]], dtype=np.float16)}
    write_safetensors(str(tmp_path / "t.safetensors"), x)
    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        np.testing.assert_array_equal(f.get_tensor("a").numpy(), x["a"])
        np.testing.assert_array_equal(f.get_tensor("b").float().numpy(), [1.5, -2.25])
        np.testing.assert_array_equal(f.get_tensor("c").numpy(), x["c"])

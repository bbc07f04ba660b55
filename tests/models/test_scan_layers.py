"""Decoder layers as a ``lax.scan`` over stacked per-run parameters: equal to the unrolled layers
(KV-cache prefill + decode with interventions; the plain forward), runs of identical layers, program
size independent of depth, and old per-layer checkpoints refused with the re-convert command.

Families: the scan reads each layer's row of every stacked leaf alike (``layers.take_row``), so what
a family adds is checked where its scan differs: Qwen2-MoE (runs of MoE, dense, MoE layers; shared
expert), GPT-OSS (per-layer attention windows as scanned data; sinks, router and expert biases),
and, with cache and intervention, OLMoE (whose cached decode is compared with transformers nowhere
else). The scanned forward of every family is checked against transformers by test_parity, the
scanned cache of Qwen3-MoE and PhiMoE by test_generate's greedy decoding against transformers."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.loader import load_params
from moe_jax.convert.safetensors_io import CheckpointError
from moe_jax.models import kv_cache
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import decoder_layers, default_positions, forward
from moe_jax.models.intervention import FORBID, FORCE, Intervention
from moe_jax.models.params import init_params, layer_params, param_shapes, stack_layers, unstack_layers
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

FAMILIES = {
    # shared expert; layer 2 of 5 dense: runs [0, 2) MoE, [2, 3) dense, [3, 5) MoE
    "qwen2_moe": tiny_hf_config("qwen2_moe", num_hidden_layers=5, mlp_only_layers=[2]),
    "qwen3_moe": tiny_hf_config("qwen3_moe"),
    "olmoe": tiny_hf_config("olmoe"),
    "phimoe": tiny_hf_config("phimoe"),
    "gpt_oss": tiny_hf_config("gpt_oss"),  # sliding, full, sliding attention (window 8)
}
TOL = 1e-6
BACKEND = "dense"  # the layer loop is under test, not dispatch: the backend that compiles fastest
B, P = 3, 14  # longer than GPT-OSS's window, so sliding and full layers differ


@pytest.fixture(scope="module", params=["gpt_oss", "olmoe", "qwen2_moe"])
def model(request):
    cfg = ModelConfig.from_hf(FAMILIES[request.param])
    params = init_params(cfg, seed=4)
    for run in params["layers"]:
        if "moe" in run:
            run["moe"]["router"]["kernel"] *= 10.0  # routing far from uniform
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (B, P)), jnp.int32)
    mask = jnp.asarray(np.arange(P)[None] >= np.array([[0], [3], [5]]), jnp.int32)  # left padding
    return cfg, jax.tree.map(jnp.asarray, params), ids, mask


def intervention(cfg: ModelConfig) -> Intervention:
    """Every kind of edit, different in every MoE layer."""
    iv = Intervention.none(cfg.num_moe_layers, cfg.num_experts)
    rng = np.random.default_rng(2)
    mode = np.zeros_like(iv.mode)
    for m in range(cfg.num_moe_layers):
        mode[m, (m + 1) % cfg.num_experts] = FORCE
        mode[m, (m + 2) % cfg.num_experts] = FORBID
    shape = iv.bias.shape
    return iv._replace(bias=rng.normal(0, 0.5, shape).astype(np.float32),
                       std_scale=rng.normal(0, 0.2, shape).astype(np.float32), mode=mode)


def assert_close(a, b, what):
    """Integer leaves equal; float leaves within ``TOL`` of each other relative to the largest
    magnitude of the array (at least 1): fp32 rounding of differently fused programs, nothing more."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
            np.testing.assert_array_equal(x, y, err_msg=what)
        else:
            err = np.abs(x - y).max(initial=0) / max(1.0, np.abs(y).max(initial=0))
            assert err <= TOL, (what, err)


# dense layers 2 and 3 of 6 and a sparse step of 2: MoE at layers 1 and 5 only
SPARSE_STEP = tiny_hf_config("qwen2_moe", num_hidden_layers=6, mlp_only_layers=[2, 3], decoder_sparse_step=2)


def test_layer_runs_group_identical_layers():
    runs = {k: ModelConfig.from_hf(v).layer_runs for k, v in FAMILIES.items()}
    assert runs["qwen2_moe"] == ((0, 2, True), (2, 3, False), (3, 5, True))
    assert runs["gpt_oss"] == ((0, 3, True),) and runs["olmoe"] == ((0, 2, True),)
    cfg = ModelConfig.from_hf(SPARSE_STEP)
    assert cfg.moe_layers == (False, True, False, False, False, True)
    assert cfg.layer_runs == ((0, 1, False), (1, 2, True), (2, 5, False), (5, 6, True))
    assert [cfg.layer_run(i) for i in range(6)] == [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (3, 0)]
    with pytest.raises(IndexError, match="decoder layer 6 out of range"):
        cfg.layer_run(6)


def test_stacked_layout_and_per_layer_view():
    cfg = ModelConfig.from_hf(SPARSE_STEP)
    params = init_params(cfg, seed=0)
    shapes = param_shapes(cfg)
    assert [run["attn"]["q"]["kernel"].shape[0] for run in shapes["layers"]] == [1, 1, 3, 1]
    assert ["moe" in run for run in params["layers"]] == [False, True, False, True]
    dense = layer_params(params, cfg, 3)  # row 1 of the run [2, 5)
    np.testing.assert_array_equal(dense["mlp"]["up"], params["layers"][2]["mlp"]["up"][1])
    assert dense["mlp"]["up"].shape == (cfg.hidden_size, cfg.dense_width)
    per_layer = unstack_layers(params, cfg)["layers"]
    assert len(per_layer) == 6 and "moe" in per_layer[5] and "mlp" in per_layer[4]
    restacked = stack_layers(cfg, per_layer)
    for a, b in zip(jax.tree.leaves(restacked), jax.tree.leaves(params["layers"])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="5 layer dicts for a model of 6 layers"):
        stack_layers(cfg, per_layer[:5])


@pytest.mark.slow  # OLMoE's scanned forward: against transformers in test_parity
@pytest.mark.parametrize("model", ["qwen2_moe", "gpt_oss"], indirect=True)
def test_scan_equals_unrolled_forward(model):
    """Without cache or intervention (with both: the next test)."""
    cfg, params, ids, mask = model
    run = functools.partial(forward, params, cfg, ids, mask, return_router=True, backend=BACKEND)
    scanned, unrolled = run(), run(scan_layers=False)
    assert scanned.router_logits.shape == (cfg.num_moe_layers, B, P, cfg.num_experts)
    assert_close(scanned, unrolled, cfg.model_type)


@functools.partial(jax.jit, static_argnames=("cfg", "scan"))
def prefill_and_decode(params, cfg, ids, mask, iv, scan):
    """Prefill of ``ids [B, P]`` into a cache, then a decode step of one token per row."""
    cache = kv_cache.init(cfg, B, P + 1, params["embed"].dtype)
    pos = default_positions(mask)
    x, r, cache, _ = decoder_layers(params, cfg, ids, pos, mask.astype(bool), cache=cache, index=0,
                                 intervention=iv, backend=BACKEND, scan_layers=scan)
    nxt = (ids[:, -1:] * 7 + 3) % cfg.vocab_size
    x2, r2, cache, _ = decoder_layers(params, cfg, nxt, pos[:, -1:] + 1, jnp.ones_like(nxt, bool), cache=cache,
                                   index=P, intervention=iv, backend=BACKEND, scan_layers=scan)
    return [(x, r), (x2, r2)], cache


@pytest.mark.slow
def test_scan_equals_unrolled_with_cache_and_intervention(model):
    cfg, params, ids, mask = model
    iv = intervention(cfg)
    scanned, s_cache = prefill_and_decode(params, cfg, ids, mask, iv, True)
    unrolled, u_cache = prefill_and_decode(params, cfg, ids, mask, iv, False)
    assert_close(scanned, unrolled, cfg.model_type)
    assert_close(s_cache, u_cache, cfg.model_type)
    assert bool(jnp.all(s_cache.valid[:, P:])) and float(jnp.abs(s_cache.k[-1, :, P]).max()) > 0
    # the decode steps' router outputs: one row per MoE layer, the forced expert on top in each
    r = scanned[-1][1]
    assert r.topk_idx.shape == (cfg.num_moe_layers, B, cfg.top_k)
    forced = np.argmax(np.asarray(iv.mode) == FORCE, axis=1)
    assert (np.asarray(r.topk_idx)[:, :, 0] == forced[:, None]).all()


@pytest.mark.slow
def test_intervention_rows_reach_their_own_moe_layer():
    """Forcing an expert in MoE layer m changes layer m only, also when m sits in a later run."""
    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))  # MoE layers: decoder layers 0 and 2 (runs 0, 2)
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=1))
    ids = jnp.asarray(np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 9)), jnp.int32)
    base = forward(params, cfg, ids, return_router=True, backend=BACKEND)
    iv = Intervention.none(cfg.num_moe_layers, cfg.num_experts)
    least = int(np.argmin(np.asarray(base.router_logits[1]).mean(axis=(0, 1))))  # rarely chosen at layer 2
    iv = iv._replace(mode=iv.mode.copy())
    iv.mode[1, least] = FORCE
    out = forward(params, cfg, ids, intervention=iv, return_router=True, backend=BACKEND)
    np.testing.assert_array_equal(np.asarray(out.topk_idx[0]), np.asarray(base.topk_idx[0]))
    assert (np.asarray(out.topk_idx[1]) == least).any(-1).all()
    assert not (np.asarray(base.topk_idx[1]) == least).any(-1).all()


@pytest.mark.slow
def test_program_size_does_not_grow_with_depth():
    """The lowered forward of 8 layers is about as large as that of 2 (the unrolled one grows)."""
    def size(layers: int, scan: bool) -> int:
        cfg = ModelConfig.from_hf(tiny_hf_config("olmoe", num_hidden_layers=layers))
        ids = jax.ShapeDtypeStruct((2, 16), jnp.int32)
        return len(forward.lower(param_shapes(cfg), cfg, ids, ids, return_router=True,
                                 scan_layers=scan).as_text())
    scanned = size(8, True) / size(2, True)
    unrolled = size(8, False) / size(2, False)
    print(f"lowered HLO size, 8 / 2 layers: scan {scanned:.2f}x, unrolled {unrolled:.2f}x")
    assert scanned < 1.3
    assert unrolled > 2.0  # the measure sees depth when the program has it


def test_old_per_layer_checkpoint_asks_to_convert_again(tmp_path):
    hf = write_random_hf_checkpoint(tmp_path / "hf", tiny_hf_config("olmoe"))
    out = convert_checkpoint(hf, tmp_path / "conv", dtype="float32")
    cfg, params = load_params(out)
    assert params["layers"][0]["attn"]["q"]["kernel"].shape[0] == cfg.num_layers
    meta_path = os.path.join(out, "moe_jax.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["format_version"] = 1  # as written before layers were stacked
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    want = f"python -m moe_jax.convert --hf_dir={hf} --out={out} --overwrite"
    with pytest.raises(CheckpointError, match="older moe_jax.*format v1") as e:
        load_params(out)
    assert want in str(e.value)
    convert_checkpoint(hf, out, dtype="float32", overwrite=True)  # the command's conversion loads again
    assert_close(load_params(out)[1], params, "reconverted")

"""GPT-OSS against transformers' ``gpt_oss`` (float32, eager) on tiny random models.

Cases differ in the layer-type pattern, the sliding window, YaRN options and the SwiGLU clamp; every
batch is longer than the window and holds a full, a left-padded and a right-padded row. Sinks, norms
and all biases are perturbed (``build_hf_model``). Also: YaRN frequencies, MXFP4 dequantisation
(bit-exact against transformers' own), conversion of plain and MXFP4 checkpoints,
bad packed input, interventions and routing collection, greedy generation with a KV cache.
Conversion is ``convert_checkpoint``, what ``python -m moe_jax.convert`` runs (the CLI itself:
tests/convert/test_cli.py). Forwards of the (3, 40) batch with the default config all ask for router
outputs: they share one compiled program.
"""

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.integrations.mxfp4 import convert_moe_packed_tensors
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import moe_jax
from tests.helpers.hf_reference import build_hf_model, reference_forward, save_hf_model
from moe_jax.convert import mxfp4
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.safetensors_io import CheckpointError
from moe_jax.models.config import ModelConfig, UnsupportedModelError
from moe_jax.models.intervention import FORCE
from moe_jax.models.params import layer_params
from moe_jax.models.yarn import yarn_inv_freq
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

TOL = 1e-4
B, S = 3, 40  # S > every case's window

CASES = {
    # transformers' default pattern (sliding, full, sliding), window 8, converted (the others load the HF dir).
    "alternating": dict(),
    # full attention first, then two sliding layers of window 5; truncated YaRN ramp; a clamp that bites.
    "full_first_w5_clamped": dict(
        layer_types=["full_attention", "sliding_attention", "sliding_attention"], sliding_window=5,
        swiglu_limit=0.15, rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=8.0, beta_fast=16.0,
                                                beta_slow=2.0, truncate=True, original_max_position_embeddings=32)),
    # every layer sliding (2 layers), GQA 4:1.
    "all_sliding": dict(num_hidden_layers=2, layer_types=["sliding_attention"] * 2, num_key_value_heads=1),
}


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, :13] = 0  # left padding
    mask[2, -11:] = 0  # right padding
    return ids, mask


def positions(mask):
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def rel_err(got, want, real):
    return np.abs(np.asarray(got) - want)[real].max() / np.abs(want[real]).max()


# whole-model tests (a compile each) out of the fast lane; the unit tests of config, YaRN, MXFP4 and
# the bf16 norm stay in it
@pytest.fixture(scope="module", params=[pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)])
def case(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    hf_cfg = tiny_hf_config("gpt_oss", **CASES[request.param])
    hf_model = build_hf_model(hf_cfg, seed=3)
    save_hf_model(hf_model, str(d / "hf"))
    path = convert_checkpoint(d / "hf", d / "jax", dtype="float32") if request.param == "alternating" else d / "hf"
    return request.param, hf_model, moe_jax.load(path)


def test_logits_router_logits_and_choices_match(case):
    name, hf_model, model = case
    cfg = model.cfg
    assert cfg.layer_types == tuple(CASES[name].get("layer_types", ("sliding_attention", "full_attention",
                                                                     "sliding_attention")))
    assert S > cfg.sliding_window
    ids, mask = batch(cfg.vocab_size)
    ref_logits, ref_router = reference_forward(hf_model, ids, mask, position_ids=positions(mask))
    out = model(ids, attention_mask=mask, return_router_logits=True)
    real = mask.astype(bool)
    err = rel_err(out.logits, ref_logits, real)
    print(f"gpt_oss {name}: logits max rel err {err:.2e}")
    assert err <= TOL
    rl = np.asarray(out.router_logits)
    assert rl.dtype == np.float32 and rl.shape == (cfg.num_moe_layers, B, S, cfg.num_experts)
    k, mismatch = cfg.top_k, 0
    for layer in range(cfg.num_moe_layers):
        ref = ref_router[layer]
        rerr = rel_err(rl[layer], ref, real)
        print(f"gpt_oss {name}: layer {layer} router logits max rel err {rerr:.2e}")
        assert rerr <= TOL
        # Top-k of the raw logits; weights = softmax over the k chosen logits.
        srt = -np.sort(-ref.astype(np.float64), -1)
        clear = real & (srt[..., k - 1] - srt[..., k] > 1e-4)
        assert clear.sum() > 0.9 * real.sum()
        want = np.sort(np.argsort(-ref, -1, kind="stable")[..., :k], -1)
        got_idx = np.asarray(out.topk_idx[layer])
        np.testing.assert_array_equal(np.sort(got_idx, -1)[clear], want[clear])
        mismatch += (np.sort(got_idx, -1)[real] != want[real]).any(-1).sum()
        chosen = np.take_along_axis(ref, got_idx, -1).astype(np.float64)
        w = np.exp(chosen - chosen.max(-1, keepdims=True))
        np.testing.assert_allclose(np.asarray(out.topk_weights[layer])[clear], (w / w.sum(-1, keepdims=True))[clear],
                                   atol=1e-5)
    print(f"gpt_oss {name}: top-k mismatches over all real tokens and layers: {mismatch}")


def test_config_read_as_transformers_reads_it():
    d = tiny_hf_config("gpt_oss", num_hidden_layers=4)  # transformers' default layer pattern for 4 layers
    c, hc = ModelConfig.from_hf(d), AutoConfig.for_model(**d)
    assert c.layer_types == tuple(hc.layer_types) == ("sliding_attention", "full_attention") * 2
    assert [c.attention_window(i) for i in range(4)] == [8, None, 8, None] and hc.sliding_window == 8
    assert (c.swiglu_limit, c.swiglu_alpha) == (hc.swiglu_limit, hc.swiglu_alpha)
    assert c.rope_theta == hc.rope_parameters["rope_theta"] and c.yarn.factor == hc.rope_parameters["factor"]
    assert c.qkv_bias and c.o_bias and c.num_experts == hc.num_local_experts and c.top_k == hc.num_experts_per_tok
    with pytest.raises(ValueError, match="sliding_attention layers but sliding_window=None"):
        ModelConfig.from_hf(dict(d, sliding_window=None))
    with pytest.raises(ValueError, match="layer_types has 3 entries for 4 layers"):
        ModelConfig.from_hf(dict(d, layer_types=["full_attention"] * 3))
    with pytest.raises(UnsupportedModelError, match="chunked_attention"):
        ModelConfig.from_hf(dict(d, layer_types=["chunked_attention"] * 4))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["alternating"], indirect=True)
def test_random_checkpoint_written_without_torch_matches_transformers(case, tmp_path):
    """``write_random_hf_checkpoint`` (export: re-interleaved gate/up) loads in transformers with no
    missing or unexpected tensor and gives the same logits."""
    _, _, model = case
    path = write_random_hf_checkpoint(tmp_path / "ckpt", tiny_hf_config("gpt_oss"), seed=6)
    hf_model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                          experts_implementation="eager", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids, mask = batch(model.cfg.vocab_size)
    ref_logits, _ = reference_forward(hf_model.eval(), ids, mask, position_ids=positions(mask))
    out = moe_jax.load(path)(ids, attention_mask=mask, return_router_logits=True)  # the parity test's program
    assert rel_err(out.logits, ref_logits, mask.astype(bool)) <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full_first_w5_clamped"], indirect=True)
def test_sinks_window_and_clamp_matter(case):
    """The parity cases exercise each feature: switching it off changes the reference's logits."""
    _, hf_model, model = case
    ids, mask = batch(model.cfg.vocab_size)
    real, pos = mask.astype(bool), positions(mask)
    base = reference_forward(hf_model, ids, mask, position_ids=pos)[0]
    attn = [layer.self_attn for layer in hf_model.model.layers]
    experts = [layer.mlp.experts for layer in hf_model.model.layers]
    sinks = [a.sinks.detach().clone() for a in attn]
    config = hf_model.config
    switches = {  # name: (switch off, switch back on)
        "sinks": (lambda: [a.sinks.data.fill_(-1e4) for a in attn],
                  lambda: [a.sinks.data.copy_(x) for a, x in zip(attn, sinks)]),
        "window": (lambda: setattr(config, "sliding_window", S), lambda: setattr(config, "sliding_window", 5)),
        "clamp": (lambda: [setattr(e, "limit", 100.0) for e in experts],
                  lambda: [setattr(e, "limit", 0.15) for e in experts]),
    }
    for name, (off, on) in switches.items():
        off()
        try:
            changed = reference_forward(hf_model, ids, mask, position_ids=pos)[0]
        finally:
            on()
        assert rel_err(changed, base, real) > 1e-3, name
    np.testing.assert_array_equal(reference_forward(hf_model, ids, mask, position_ids=pos)[0], base)  # restored


def test_bfloat16_norm_matches_the_reference_module():
    """In bf16 the reference keeps norm weights in fp32 and casts once after scaling: equal here up to
    rare one-ulp differences of the fp32 rsqrt, where scaling the bf16-cast normalised values (the
    other families' order) differs on many elements."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm
    from moe_jax.models.layers import norm
    cfg = ModelConfig.from_hf(tiny_hf_config("gpt_oss"))
    rng = np.random.default_rng(8)
    w = torch.tensor(1 + 0.3 * rng.normal(size=64)).to(torch.bfloat16).float()  # bf16 values, fp32 module
    x = torch.tensor(rng.normal(size=(500, 64)) * 3).to(torch.bfloat16)
    ref_norm = GptOssRMSNorm(64, eps=cfg.norm_eps)
    ref_norm.weight.data.copy_(w)
    with torch.no_grad():
        want = ref_norm(x).float().numpy()
    xs = jnp.asarray(x.float().numpy()).astype(jnp.bfloat16)
    scale = jnp.asarray(w.numpy()).astype(jnp.bfloat16)
    got = np.asarray(norm({"scale": scale}, xs, cfg).astype(jnp.float32))
    other = dataclasses.replace(cfg, model_type="olmoe")  # plain "rms": cast, then scale in bf16
    plain = np.asarray(norm({"scale": scale}, xs, other).astype(jnp.float32))
    print(f"bf16 norm: {(got != want).mean():.5f} of elements differ (plain order: {(plain != want).mean():.5f})")
    assert (got != want).mean() < 1e-3 and (plain != want).mean() > 0.05
    np.testing.assert_allclose(got, want, rtol=2 ** -7)  # at most one bf16 ulp


@pytest.mark.parametrize("rope", [
    dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
         original_max_position_embeddings=4096, rope_theta=150000.0),  # the release
    dict(rope_type="yarn", factor=4.0, beta_fast=8.0, beta_slow=2.0, original_max_position_embeddings=64,
         rope_theta=10000.0),  # truncate defaults to True
    dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64, rope_theta=10000.0, mscale=0.707,
         mscale_all_dim=1.0),  # attention factor from mscale / mscale_all_dim
    dict(rope_type="yarn", factor=2.0, attention_factor=1.25, original_max_position_embeddings=64, rope_theta=500.0),
])
def test_yarn_frequencies_match_transformers(rope):
    d = tiny_hf_config("gpt_oss", head_dim=64, rope_parameters=rope, max_position_embeddings=131072)
    inv, att = ROPE_INIT_FUNCTIONS["yarn"](AutoConfig.for_model(**d))
    cfg = ModelConfig.from_hf(d)
    # float32 step by step; the power theta^(2i/d) may differ from torch's by one ulp
    np.testing.assert_allclose(yarn_inv_freq(cfg.yarn, cfg.rope_theta, cfg.head_dim), inv.numpy(), rtol=3e-7, atol=0)
    assert cfg.yarn.attention_factor == pytest.approx(att, rel=1e-15)


# ----------------------------------------------------------------------------------------------
# MXFP4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_mxfp4_dequantization_bit_exact(dtype):
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (3, 48, 2, 16), dtype=np.uint8)
    scales = rng.integers(0, 256, (3, 48, 2), dtype=np.uint8)
    scales.reshape(-1)[:256] = np.arange(256)  # every exponent, 2^-127 to 2^128 (inf)
    want = convert_moe_packed_tensors(torch.tensor(blocks), torch.tensor(scales), dtype=dtype).float().numpy()
    got = mxfp4.dequantize(blocks, scales, dtype=np.float32 if dtype == torch.float32 else mxfp4.ml_dtypes.bfloat16)
    got = got.astype(np.float32)
    assert got.shape == want.shape == (3, 64, 48)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit, incl. -0 and inf


def test_mxfp4_bad_arrays_are_named():
    b, s = np.zeros((2, 4, 1, 16), np.uint8), np.zeros((2, 4, 1), np.uint8)
    with pytest.raises(CheckpointError, match=r"w\.down_proj_scales has shape \[2, 4, 2\]"):
        mxfp4.dequantize(b, np.zeros((2, 4, 2), np.uint8), "w.down_proj")
    with pytest.raises(CheckpointError, match=r"w\.down_proj_blocks: expected shape .*got \[2, 4, 1, 8\]"):
        mxfp4.dequantize(b[..., :8], s, "w.down_proj")
    with pytest.raises(CheckpointError, match="must be uint8"):
        mxfp4.dequantize(b.astype(np.float32), s, "w.down_proj")


def pack_experts(model, rng):
    """Replaces every layer's expert weights by random MXFP4 values (set on the torch model via
    transformers' own dequantisation); returns the packed tensors in the released naming."""
    packed = {}
    for i, layer in enumerate(model.model.layers):
        ex = layer.mlp.experts
        for proj in ("gate_up_proj", "down_proj"):
            w = getattr(ex, proj)  # [E, X, R]
            E, X, R = w.shape
            blocks = rng.integers(0, 256, (E, R, X // 32, 16), dtype=np.uint8)
            scales = rng.integers(119, 124, (E, R, X // 32), dtype=np.uint8)
            with torch.no_grad():
                w.copy_(convert_moe_packed_tensors(torch.tensor(blocks), torch.tensor(scales), dtype=torch.float32))
            name = f"model.layers.{i}.mlp.experts.{proj}"
            packed[name + "_blocks"], packed[name + "_scales"] = blocks, scales
    return packed


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("mxfp4")
    hf_cfg = tiny_hf_config("gpt_oss")
    hf_model = build_hf_model(hf_cfg, seed=4)
    packed = pack_experts(hf_model, np.random.default_rng(1))
    save_hf_model(hf_model, str(d / "plain"))
    plain = load_file(str(d / "plain" / "model.safetensors"))
    tensors = {k: v for k, v in plain.items() if k + "_blocks" not in packed}
    os.makedirs(d / "hf")
    save_file({**tensors, **packed}, str(d / "hf" / "model.safetensors"), metadata={"format": "pt"})
    config = json.load(open(d / "plain" / "config.json"))
    config["quantization_config"] = {"quant_method": "mxfp4"}
    json.dump(config, open(d / "hf" / "config.json", "w"))
    return hf_model, d / "hf", tensors, packed


@pytest.mark.slow
def test_mxfp4_checkpoint_converts(mxfp4_checkpoint, tmp_path):
    hf_model, hf_dir, _, _ = mxfp4_checkpoint
    model = moe_jax.load(convert_checkpoint(hf_dir, tmp_path / "jax", dtype="float32"))
    ids, mask = batch(model.cfg.vocab_size, seed=1)
    ref_logits, ref_router = reference_forward(hf_model, ids, mask, position_ids=positions(mask))
    out = model(ids, attention_mask=mask, return_router_logits=True)
    real = mask.astype(bool)
    err, rerr = rel_err(out.logits, ref_logits, real), rel_err(np.asarray(out.router_logits)[:, real],
                                                                 ref_router[:, real], slice(None))
    print(f"gpt_oss mxfp4: logits max rel err {err:.2e}, router logits {rerr:.2e}")
    assert err <= TOL and rerr <= TOL
    # the experts are the dequantised values exactly (float32 conversion)
    ex = hf_model.model.layers[1].mlp.experts
    np.testing.assert_array_equal(np.asarray(layer_params(model.param_tree, model.cfg, 1)["moe"]["up"]),
                                  ex.gate_up_proj.detach().numpy()[..., 1::2])


def test_released_checkpoint_layout_is_planned():
    """The tensor names and shapes of openai/gpt-oss-20b's safetensors (MXFP4 experts, bf16 elsewhere) are
    exactly what the converter expects from its config.json: nothing missing, nothing unknown."""
    from moe_jax.convert import name_map
    from tests.helpers.released import RELEASED
    cfg = ModelConfig.from_hf(RELEASED["gpt-oss-20b"][0])
    E, H, I, V = 32, 2880, 2880, 201088
    shapes = {"model.embed_tokens.weight": (V, H), "model.norm.weight": (H,), "lm_head.weight": (V, H)}
    for i in range(24):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,),
                       p + "self_attn.sinks": (64,), p + "mlp.router.weight": (E, H), p + "mlp.router.bias": (E,),
                       p + "mlp.experts.gate_up_proj_blocks": (E, 2 * I, H // 32, 16),
                       p + "mlp.experts.gate_up_proj_scales": (E, 2 * I, H // 32),
                       p + "mlp.experts.gate_up_proj_bias": (E, 2 * I),
                       p + "mlp.experts.down_proj_blocks": (E, H, I // 32, 16),
                       p + "mlp.experts.down_proj_scales": (E, H, I // 32), p + "mlp.experts.down_proj_bias": (E, H)})
        for x, n in (("q", 4096), ("k", 512), ("v", 512)):
            shapes.update({p + f"self_attn.{x}_proj.weight": (n, H), p + f"self_attn.{x}_proj.bias": (n,)})
        shapes.update({p + "self_attn.o_proj.weight": (H, 4096), p + "self_attn.o_proj.bias": (H,)})
    planned = {}
    for src in name_map.plan(cfg, shapes):
        planned[src.name] = src.shape
        if src.scales:
            planned[src.scales[0]] = src.scales_shape
    assert planned == shapes


def write_variant(d, tensors, packed, config_dir, **changes):
    """A copy of the MXFP4 checkpoint with tensors replaced (array) or removed (None)."""
    out = {**tensors, **packed}
    for k, v in changes.items():
        k = k.replace("__", ".")
        if v is None:
            out.pop(k)
        else:
            out[k] = v
    os.makedirs(d, exist_ok=True)
    save_file(out, str(d / "model.safetensors"))
    with open(config_dir / "config.json") as f, open(d / "config.json", "w") as g:
        g.write(f.read())
    return d


def test_bad_mxfp4_checkpoints_are_refused_by_name(mxfp4_checkpoint, tmp_path):
    _, hf_dir, tensors, packed = mxfp4_checkpoint
    name = "model.layers.1.mlp.experts.down_proj"
    no_scales = write_variant(tmp_path / "a", tensors, packed, hf_dir, **{name.replace(".", "__") + "_scales": None})
    with pytest.raises(CheckpointError, match=rf"{name}_scales \(the scales of {name}_blocks\)"):
        convert_checkpoint(no_scales, tmp_path / "out")
    gu = "model.layers.0.mlp.experts.gate_up_proj_blocks"
    bad = write_variant(tmp_path / "b", tensors, packed, hf_dir, **{gu.replace(".", "__"): packed[gu][..., :8].copy()})
    with pytest.raises(CheckpointError, match=rf"{gu} in .* has shape \[8, 64, 2, 8\], expected \[8, 64, 2, 16\]"):
        convert_checkpoint(bad, tmp_path / "out")
    as_float = write_variant(tmp_path / "c", tensors, packed, hf_dir,
                             **{gu.replace(".", "__"): packed[gu].astype(np.float32)})
    with pytest.raises(CheckpointError, match=rf"{gu} in .* has dtype F32, expected U8"):
        convert_checkpoint(as_float, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_bfloat16_checkpoint_converts(tmp_path):
    """A bf16 checkpoint (the release's non-expert tensors are bf16): read exactly, parity in float32."""
    hf_model = build_hf_model(tiny_hf_config("gpt_oss"), seed=5).to(torch.bfloat16)
    save_hf_model(hf_model, str(tmp_path / "hf"))
    model = moe_jax.load(tmp_path / "hf", dtype="float32")
    hf_model = hf_model.float()
    ids, mask = batch(model.cfg.vocab_size, seed=2)
    ref_logits, _ = reference_forward(hf_model, ids, mask, position_ids=positions(mask))
    err = rel_err(model(ids, attention_mask=mask).logits, ref_logits, mask.astype(bool))
    print(f"gpt_oss bf16 checkpoint: logits max rel err {err:.2e}")
    assert err <= TOL


# ----------------------------------------------------------------------------------------------
# Interventions, collection, generation


@pytest.mark.slow
@pytest.mark.parametrize("case", ["alternating"], indirect=True)
def test_interventions_and_collection_work_unchanged(case):
    """On the parity case's model (routers scaled x10 by ``build_hf_model``: routing far from uniform)."""
    from moe_jax import sharding as shd
    from moe_jax.data.tokenize import EncodedTexts
    from moe_jax.routing import collect
    _, _, model = case
    cfg = model.cfg
    ids, mask = batch(cfg.vocab_size)
    base = model(ids, attention_mask=mask, return_router_logits=True)
    iv = model.no_intervention()
    same = model(ids, attention_mask=mask, intervention=iv, return_router_logits=True)
    np.testing.assert_array_equal(np.asarray(same.logits), np.asarray(base.logits))
    mode = np.zeros((cfg.num_moe_layers, cfg.num_experts), np.int32)
    mode[1, 5] = FORCE
    forced = model(ids, attention_mask=mask, intervention=iv._replace(mode=mode), return_router_logits=True)
    assert (np.asarray(forced.topk_idx[1]) == 5).any(-1).all()
    np.testing.assert_array_equal(np.asarray(forced.router_logits[0]), np.asarray(base.router_logits[0]))
    # routing collection: per-sequence top-k frequencies from the forward's own choices
    mesh = shd.make_mesh({"data": -1, "model": 1})
    step = collect.make_collect_step(cfg, mesh)
    rows = [ids[r][mask[r].astype(bool)].astype(np.int32) for r in range(B)]
    enc = EncodedTexts(rows, [np.ones(len(x), bool) for x in rows], np.zeros(B, bool))
    res = collect.collect_language(step, model.param_tree, enc, cfg=cfg, mesh=mesh, batch_size=B, pad_to_multiple=8)
    real = mask.astype(bool)
    for r in range(B):
        idx = np.asarray(base.topk_idx)[:, r][:, real[r]]  # [L, n, k]
        freq = np.stack([np.bincount(idx[l].ravel(), minlength=cfg.num_experts) / idx.shape[1]
                         for l in range(cfg.num_moe_layers)])
        np.testing.assert_allclose(res.arrays["seq_topk_freq"][r], freq, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full_first_w5_clamped"], indirect=True)
def test_greedy_generation_matches_transformers(case):
    """KV-cache decoding honours each layer's window: prompts of 20 tokens and 16 new ones, window 5
    (a full layer, then two sliding ones: the decode scan's per-layer windows, as in every case; the
    clamp biting), left-padded batch."""
    _, hf_model, model = case
    rng = np.random.default_rng(7)
    P, new = 20, 16
    ids = rng.integers(0, model.cfg.vocab_size, (2, P))
    mask = np.ones((2, P), np.int64)
    mask[1, :6] = 0
    got = model.generate(ids, attention_mask=mask, max_new_tokens=new, stop_token_ids=[])
    with torch.no_grad():
        want = hf_model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=0).numpy()[:, P:]
    np.testing.assert_array_equal(np.asarray(got.tokens), want)

"""Logit and router parity with transformers' PyTorch models, in float32, through conversion.

Each tiny model is built by transformers (eager attention and experts, eval mode, norms perturbed),
saved with ``save_pretrained``, converted by ``convert_checkpoint`` (what ``python -m moe_jax.convert``
runs; the CLI itself: tests/convert/test_cli.py) and loaded with ``moe_jax.load``. A batch of 3
sequences of 96 tokens holds a full row, a left-padded row and a right-padded row (as many real
tokens as the left-padded one); only real tokens are compared. Every forward of a family's batch
asks for router outputs, so the tests of a family share one compiled program.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import moe_jax
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.tiny import tiny_hf_config
from moe_jax.models import experts
from tests.helpers.hf_reference import build_hf_model, reference_forward, save_hf_model
from tests.helpers.rope_reference import np_rope_cos_sin

TOL = 1e-4
B, S = 3, 96
PAD = 13  # padding of the left- and of the right-padded row: their real tokens run alone as one batch

CASES = {
    # Qwen2-MoE: dense layer 1, GQA, shared expert; saved as a multi-shard checkpoint.
    "qwen2_moe": dict(model_type="qwen2_moe", shard="20KB"),
    # Qwen3-MoE: head_dim 24 != 64/4, GQA, renormalised top-k.
    "qwen3_moe": dict(model_type="qwen3_moe"),
    # OLMoE with clip_qkv (tight enough to bite) and GQA.
    "olmoe": dict(model_type="olmoe", overrides=dict(clip_qkv=0.5)),
    # PhiMoE in the short LongRoPE regime (96 <= original_max 128): transformers is the reference.
    "phimoe": dict(model_type="phimoe", original_max=128),
}


def batch(vocab):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, :PAD] = 0  # left padding
    mask[2, -PAD:] = 0  # right padding
    return ids, mask


def positions(mask):
    """Explicit positions for the reference (transformers defaults to arange even with padding)."""
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def hf_config(case):
    cfg = tiny_hf_config(case["model_type"], **case.get("overrides", {}))
    if "original_max" in case:
        cfg["rope_scaling"]["original_max_position_embeddings"] = case["original_max"]
    return cfg


FAST = "phimoe"  # the family whose parity stays in the fast lane (-m "not slow"): the cheapest to compile


@pytest.fixture(scope="module", params=[pytest.param(n, marks=() if n == FAST else pytest.mark.slow)
                                        for n in sorted(CASES)])
def converted(request, tmp_path_factory):
    """``(family, transformers model, directory with hf/ and jax/, the float32 moe_jax model)``."""
    case = CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    model = build_hf_model(hf_config(case), seed=0)
    save_hf_model(model, str(d / "hf"), max_shard_size=case.get("shard"))
    convert_checkpoint(d / "hf", d / "jax", dtype="float32")
    return request.param, model, d, moe_jax.load(d / "jax", dtype="float32")


def run(model, ids, mask):
    """The one forward of a family's batch (router outputs on): shared by every test of the family."""
    return model(ids, attention_mask=mask, return_router_logits=True)


def topk_reference(router_logits, cfg):
    """Reference expert choices and the margin between the k-th and (k+1)-th scores."""
    z = router_logits.astype(np.float64)
    if cfg.family.router == "sparsemixer":  # picks by logits
        scores = z
    else:
        e = np.exp(z - z.max(-1, keepdims=True))
        scores = e / e.sum(-1, keepdims=True)
    order = np.argsort(-scores, axis=-1, kind="stable")
    srt = np.take_along_axis(scores, order, -1)
    k = cfg.top_k
    return np.sort(order[..., :k], -1), srt[..., k - 1] - srt[..., k]


def test_logits_router_logits_and_choices_match(converted):
    name, hf_model, d, model = converted
    cfg = model.cfg
    if name == "qwen2_moe":
        assert cfg.moe_layers == (True, False, True)
        assert len([f for f in os.listdir(d / "hf") if f.endswith(".safetensors")]) > 1
    ids, mask = batch(cfg.vocab_size)
    ref_logits, ref_router = reference_forward(hf_model, ids, mask, position_ids=positions(mask))
    out = run(model, ids, mask)
    real = mask.astype(bool)
    lg = np.asarray(out.logits)
    err = np.abs(lg - ref_logits)[real].max() / np.abs(ref_logits[real]).max()
    print(f"{name}: logits max rel err {err:.2e}")
    assert err <= TOL
    rl = np.asarray(out.router_logits)
    assert rl.dtype == np.float32 and rl.shape == (cfg.num_moe_layers, B, S, cfg.num_experts)
    mismatch = 0
    for layer in range(cfg.num_moe_layers):
        ref = ref_router[layer]
        rerr = np.abs(rl[layer] - ref)[real].max() / np.abs(ref[real]).max()
        print(f"{name}: MoE layer {layer} router logits max rel err {rerr:.2e}")
        assert rerr <= TOL
        want, margin = topk_reference(ref, cfg)
        got = np.sort(np.asarray(out.topk_idx[layer]), -1)
        clear = real & (margin > 1e-4)
        assert clear.sum() > 0.9 * real.sum()  # margins are wide enough to test most choices
        np.testing.assert_array_equal(got[clear], want[clear])
        mismatch += (got[real] != want[real]).any(-1).sum()
    print(f"{name}: top-k mismatch rate over all real tokens {mismatch / (real.sum() * cfg.num_moe_layers):.4f}")
    assert mismatch == 0  # README: no mismatch at all, near-ties included, on these models


@pytest.mark.slow
@pytest.mark.parametrize("converted", ["phimoe", "qwen2_moe"], indirect=True)
def test_padding_does_not_change_real_tokens(converted):
    """The padded rows' real tokens give what they give without padding (the two rows hold as many
    real tokens: one unpadded batch of both, one compile). Padding reaches a family only through the
    positions and the attention mask, the same code for every family: PhiMoE (whose LongRoPE regime
    follows the positions) and Qwen2-MoE (MoE, dense, MoE layers)."""
    _, _, _, model = converted
    ids, mask = batch(model.cfg.vocab_size)
    full = run(model, ids, mask)
    rows = (1, 2)
    alone = model(np.stack([ids[row][mask[row].astype(bool)] for row in rows]), return_router_logits=True)
    for i, row in enumerate(rows):
        keep = mask[row].astype(bool)
        np.testing.assert_allclose(np.asarray(full.logits[row][keep]), np.asarray(alone.logits[i]),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(full.router_logits[:, row][:, keep]),
                                   np.asarray(alone.router_logits[:, i]), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("converted", ["qwen2_moe"], indirect=True)
def test_dispatch_backends_match_dense(converted):
    """The default (``auto``) and every other backend against the ``dense`` reference, whole model.
    One family: dispatch sees only tokens, choices, weights and expert weights, the same code for
    every family (each backend against a per-token loop: test_dispatch.py); Qwen2-MoE's layers mix
    MoE, dense and a shared expert."""
    _, _, d, _ = converted
    dense = moe_jax.load(d / "jax", backend="dense")
    ids, mask = batch(dense.cfg.vocab_size)
    a = dense(ids, attention_mask=mask, return_router_logits=True)
    for backend in ["auto"] + [b for b in experts.available_backends() if b != "dense"]:
        b = moe_jax.load(d / "jax", backend=backend)(ids, attention_mask=mask, return_router_logits=True)
        np.testing.assert_allclose(np.asarray(a.logits), np.asarray(b.logits), rtol=1e-5, atol=1e-5, err_msg=backend)
        np.testing.assert_array_equal(np.asarray(a.topk_idx), np.asarray(b.topk_idx), err_msg=backend)


@pytest.mark.slow
def test_bfloat16_conversion_close_to_float32(converted, tmp_path):
    """bf16 weights and activations: logits within 2% of the largest logit, >= 98% of argmax equal
    (docs/models.md's numbers: 0.7-1.7% and 98.9-99.6%)."""
    name, _, d, m32 = converted
    out = convert_checkpoint(d / "hf", tmp_path / "bf16", dtype="bfloat16")
    m16 = moe_jax.load(out, dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(m16.param_tree))
    ids, mask = batch(m32.cfg.vocab_size)
    real = mask.astype(bool)
    a = np.asarray(run(m16, ids, mask).logits.astype(jnp.float32))[real]
    b = np.asarray(run(m32, ids, mask).logits)[real]
    rel = np.abs(a - b).max() / np.abs(b).max()
    agree = (a.argmax(-1) == b.argmax(-1)).mean()
    print(f"{name}: bf16 vs f32 logits max rel err {rel:.3e}, argmax agreement {agree:.3f}")
    assert rel < 2e-2 and agree >= 0.98


@pytest.mark.slow
def test_phimoe_long_rope_beyond_original_max(tmp_path):
    """Total length 96 > original_max 64: long factors and long mscale, checked against transformers
    with its rotary table replaced by the independent NumPy LongRoPE reference (transformers 5.15+
    always uses the short factors)."""
    hf_cfg = tiny_hf_config("phimoe")
    hf_model = build_hf_model(hf_cfg, seed=1)
    save_hf_model(hf_model, str(tmp_path / "hf"))
    model = moe_jax.load(tmp_path / "hf")  # straight from the HF directory
    lr = dataclasses.asdict(model.cfg.longrope)
    assert S > lr["original_max_position_embeddings"]
    ids, mask = batch(model.cfg.vocab_size)
    pos = positions(mask)

    def numpy_rotary(x, position_ids):
        cos, sin = np_rope_cos_sin(position_ids.numpy(), model.cfg.head_dim, model.cfg.rope_theta, lr)
        return torch.tensor(cos, dtype=x.dtype), torch.tensor(sin, dtype=x.dtype)

    hf_model.model.rotary_emb.forward = numpy_rotary
    ref_logits, _ = reference_forward(hf_model, ids, mask, position_ids=pos)
    out = model(ids, attention_mask=mask)
    real = mask.astype(bool)
    err = np.abs(np.asarray(out.logits) - ref_logits)[real].max() / np.abs(ref_logits[real]).max()
    print(f"phimoe long-rope logits max rel err {err:.2e}")
    assert err <= TOL


@pytest.mark.slow
def test_qwen2_moe_decoder_sparse_step_and_mlp_only_layers(tmp_path):
    """decoder_sparse_step=2 with mlp_only_layers: MoE layers are those transformers builds with a
    router ((i+1) % 2 == 0 and i not in [5] -> 1, 3), logits and router logits match."""
    hf_model = build_hf_model(tiny_hf_config("qwen2_moe", num_hidden_layers=6, decoder_sparse_step=2,
                                             mlp_only_layers=[5]), seed=3)
    save_hf_model(hf_model, str(tmp_path))
    model = moe_jax.load(tmp_path)
    hf_moe = tuple(i for i, layer in enumerate(hf_model.model.layers) if hasattr(layer.mlp, "gate"))
    assert model.cfg.moe_layer_ids == hf_moe == (1, 3)
    ids, mask = batch(model.cfg.vocab_size)
    ref_logits, ref_router = reference_forward(hf_model, ids, mask, position_ids=positions(mask))
    out = model(ids, attention_mask=mask, return_router_logits=True)
    real = mask.astype(bool)
    err = np.abs(np.asarray(out.logits) - ref_logits)[real].max() / np.abs(ref_logits[real]).max()
    rerr = np.abs(np.asarray(out.router_logits) - ref_router)[:, real].max() / np.abs(ref_router[:, real]).max()
    assert err <= TOL and rerr <= TOL, (err, rerr)

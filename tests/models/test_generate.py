"""KV-cache greedy generation: parity with transformers' generate, with repeated full forward passes,
interventions, stop tokens, chunked decoding and PhiMoE's LongRoPE switch mid-generation.

Greedy tokens are compared up to the first near-tie of the reference in each row: a step whose top-2
logit gap is below ``NEAR_TIE`` times the largest |logit| (float32 rounding may pick either token
there, and everything after depends on it). Each row must keep at least ``MIN_COMPARED`` tokens.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationMixin

import moe_jax
from tests.helpers.hf_reference import build_hf_model, save_hf_model
from moe_jax.models import generate as gen
from moe_jax.models import layers
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import FORBID, Intervention
from moe_jax.models.params import init_params
from moe_jax.convert.tiny import tiny_hf_config
from tests.helpers.rope_reference import np_rope_cos_sin

N = 24  # new tokens
LENS = (20, 13, 7)  # prompt lengths, left-padded to the longest
NEAR_TIE = 1e-4
MIN_COMPARED = 16
PAD = 0
NO_STOP = np.full(3, -1)  # stop ids never emitted, shaped like the stop tests' ids: one program for both


def left_padded(vocab, lens, seed=0):
    P = max(lens)
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (len(lens), P))
    mask = np.zeros((len(lens), P), np.int64)
    for i, n in enumerate(lens):
        mask[i, P - n:] = 1
        ids[i, :P - n] = PAD
    return ids, mask


def compared_steps(logits):
    """Per row, the number of leading steps before the first near-tie in ``logits [B, steps, V]``."""
    top2 = np.sort(logits, -1)[..., -2:]
    tie = (top2[..., 1] - top2[..., 0]) < NEAR_TIE * np.abs(logits).max()
    return np.where(tie.any(1), tie.argmax(1), tie.shape[1])


def assert_greedy_equal(got, want, ref_logits):
    got, want = np.asarray(got), np.asarray(want)
    n = compared_steps(ref_logits)
    print(f"compared steps per row: {n.tolist()} of {want.shape[1]}")
    assert (n >= MIN_COMPARED).all()
    for row, k in enumerate(n):
        np.testing.assert_array_equal(got[row, :k], want[row, :k], err_msg=f"row {row}")


def lively(hf_model):
    """Embeddings x10, linear biases x0.1, q/k kernels x10, in place. With the tiny models' default
    scales the biases dominate the residual stream, attention is nearly uniform (RoPE hardly
    matters) and greedy decoding falls into a 1-2 token loop that would hide cache errors; this way
    generations depend on the context and on positions."""
    with torch.no_grad():
        hf_model.model.embed_tokens.weight.mul_(10.0)
        for name, p in hf_model.named_parameters():
            if name.endswith("bias") and "norm" not in name:
                p.mul_(0.1)
            elif name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(10.0)
    return hf_model


def hf_generate(model, ids, mask, n=N):
    with torch.no_grad():
        r = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
                           min_new_tokens=n, do_sample=False, pad_token_id=PAD, return_dict_in_generate=True,
                           output_logits=True)
    return r.sequences[:, ids.shape[1]:].numpy(), torch.stack(r.logits, 1).float().numpy()


def patch_longrope_generation(hf_model, cfg):
    """transformers' PhiMoE generate with moe_jax's LongRoPE rule: factors and mscale from
    max(position_ids) + 1 of the tokens being processed (transformers 5.15+ always uses the short
    factors), cached keys kept as computed (PhiMoE's ``prepare_inputs_for_generation`` would drop
    the cache once and recompute every key when the padded length first passes the original max)."""
    lr = dataclasses.asdict(cfg.longrope)

    def rotary(x, position_ids):
        cos, sin = np_rope_cos_sin(position_ids.numpy(), cfg.head_dim, cfg.rope_theta, lr)
        return torch.tensor(cos, dtype=x.dtype), torch.tensor(sin, dtype=x.dtype)
    hf_model.model.rotary_emb.forward = rotary
    hf_model.prepare_inputs_for_generation = functools.partial(GenerationMixin.prepare_inputs_for_generation,
                                                               hf_model)


# Families against transformers' generate: Qwen3-MoE (head_dim 24 != hidden/heads: the cache's
# shape) and PhiMoE (the LongRoPE switch mid-generation). Qwen2-MoE's decode is checked against its
# own full forward below (``tiny``) and that forward against transformers in test_parity; OLMoE's
# qk-norm runs before the cache write in the same ``layers.attention`` call as its forward (parity).
@pytest.fixture(scope="module", params=["qwen3_moe", "phimoe"])
def hf_pair(request, tmp_path_factory):
    hf_model = lively(build_hf_model(tiny_hf_config(request.param), seed=4))
    return hf_model, moe_jax.load(save_hf_model(hf_model, tmp_path_factory.mktemp(request.param)))


@pytest.mark.slow
def test_greedy_matches_transformers(hf_pair):
    """Prompts of 50, 37 and 44 tokens, 24 new. PhiMoE (original max 64) switches to the long
    factors from new token 15 on (fed position 64); its reference is transformers patched to the
    LongRoPE rule of ``generate.py``, and unpatched transformers 5.23 (short factors throughout)
    must agree before the switch and differ after it, so the switch is tested."""
    hf_model, model = hf_pair
    lens = (50, 37, 44)
    ids, mask = left_padded(model.cfg.vocab_size, lens, seed=3)
    if model.cfg.longrope is not None:
        switch = model.cfg.longrope.original_max_position_embeddings - max(lens) + 1
        assert 0 < switch < N
        short_only, _ = hf_generate(hf_model, ids, mask)
        patch_longrope_generation(hf_model, model.cfg)
    want, ref_logits = hf_generate(hf_model, ids, mask)
    if model.cfg.longrope is not None:
        assert (short_only[:, :switch] == want[:, :switch]).all()
        assert (short_only[:, switch:] != want[:, switch:]).any()
    out = model.generate(ids, mask, max_new_tokens=N)  # no tokenizer: no stop token, pad 0
    assert out.tokens.shape == (3, N) and out.tokens.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out.lengths), N)
    assert_greedy_equal(out.tokens, want, ref_logits)


@pytest.fixture(scope="module")
def tiny():
    """qwen2_moe (dense layer, shared expert) with random weights, routers scaled as in the HF tests."""
    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))
    params = init_params(cfg, seed=5)
    params["embed"] *= 10.0  # as lively(): generations that depend on the context
    for layer in params["layers"]:
        if "moe" in layer:
            layer["moe"]["router"]["kernel"] *= 10.0
    ids, mask = left_padded(cfg.vocab_size, LENS, seed=1)
    return cfg, jax.tree.map(jnp.asarray, params), ids, mask


@pytest.fixture(scope="module")
def baseline(tiny):
    cfg, params, ids, mask = tiny
    return gen.generate(params, cfg, ids, mask, max_new_tokens=N, return_router=True, stop_token_ids=NO_STOP)


@pytest.mark.slow
def test_cache_matches_repeated_full_forward(tiny, baseline):
    """Token t must be the argmax of a full forward over prompt + tokens < t; one causal forward over
    the whole sequence gives every such pass at once. Its router top-k at the generated tokens must
    equal what decode reported."""
    cfg, params, ids, mask = tiny
    P = ids.shape[1]
    seq = np.concatenate([ids, np.asarray(baseline.tokens)], 1)
    full_mask = np.concatenate([mask, np.ones((3, N), np.int64)], 1)
    ref = forward(params, cfg, jnp.asarray(seq), jnp.asarray(full_mask), return_router=True)
    logits = np.asarray(ref.logits)[:, P - 1:P - 1 + N]
    assert_greedy_equal(baseline.tokens, logits.argmax(-1), logits)
    assert baseline.topk_idx.shape == (cfg.num_moe_layers, 3, N, cfg.top_k)
    np.testing.assert_array_equal(np.sort(np.asarray(baseline.topk_idx), -1),
                                  np.sort(np.asarray(ref.topk_idx)[:, :, P:], -1))
    np.testing.assert_allclose(np.sort(np.asarray(baseline.topk_weights), -1),
                               np.sort(np.asarray(ref.topk_weights)[:, :, P:], -1), rtol=1e-5, atol=1e-6)
    # Without router outputs the last token is emitted unfed: same tokens.
    plain = gen.generate(params, cfg, ids, mask, max_new_tokens=N, stop_token_ids=NO_STOP)
    np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(baseline.tokens))
    assert plain.topk_idx is None


@pytest.mark.slow
def test_right_padded_prompts_generate_the_same(tiny, baseline):
    """Prompts may be padded on either side: the first token comes from each row's last real token."""
    cfg, params, ids, mask = tiny
    right_ids, right_mask = np.zeros_like(ids), np.zeros_like(mask)
    for row, n in enumerate(mask.sum(1)):
        right_ids[row, :n], right_mask[row, :n] = ids[row, -n:], 1
    assert (right_mask != mask).any()
    out = gen.generate(params, cfg, right_ids, right_mask, max_new_tokens=N, stop_token_ids=NO_STOP)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(baseline.tokens))


@pytest.mark.slow
def test_intervention_changes_generation_and_never_recompiles(tiny, baseline):
    cfg, params, ids, mask = tiny
    iv = Intervention.none(cfg.num_moe_layers, cfg.num_experts)
    neutral = gen.generate(params, cfg, ids, mask, max_new_tokens=N, intervention=iv, return_router=True,
                           stop_token_ids=NO_STOP)
    for a, b in zip(neutral, baseline):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Forbid, in every MoE layer, the experts row 0's first generated token used.
    first = np.asarray(baseline.topk_idx)[:, 0, 0]  # [moe_layers, k]
    mode = np.zeros((cfg.num_moe_layers, cfg.num_experts), np.int32)
    np.put_along_axis(mode, first, FORBID, axis=1)
    out = gen.generate(params, cfg, ids, mask, max_new_tokens=N, intervention=iv._replace(mode=mode),
                       return_router=True, stop_token_ids=[5, 6, 7])
    assert (np.asarray(out.tokens) != np.asarray(baseline.tokens)).any()
    used = np.asarray(out.topk_idx)  # [moe_layers, B, N, k]
    for layer in range(cfg.num_moe_layers):
        assert not np.isin(used[layer][used[layer] >= 0], first[layer]).any()
    compiles = gen._generate_jit._cache_size()  # new values and stop ids below: no new program
    gen.generate(params, cfg, ids, mask, max_new_tokens=N, intervention=iv._replace(std_scale=iv.std_scale + 1),
                 return_router=True, stop_token_ids=[7, 8, 9])
    assert gen._generate_jit._cache_size() == compiles


@pytest.mark.slow
def test_stop_tokens_and_early_exit(tiny, baseline):
    cfg, params, ids, mask = tiny
    P, base = ids.shape[1], np.asarray(baseline.tokens)
    stops = base[:, 3]  # every row stops at step 3 at the latest

    def first_stop(row):
        hit = np.isin(row, stops)
        return int(hit.argmax()) + 1 if hit.any() else len(row)
    want_len = np.array([first_stop(r) for r in base])
    assert (want_len <= 4).all()
    state = gen.prefill(params, cfg, ids, mask, cache_len=P + N)
    n = N // 2
    state, out = gen.decode(params, cfg, state, num_steps=n, stop_token_ids=stops, pad_id=PAD - 1,
                            return_router=True)
    np.testing.assert_array_equal(np.asarray(state.lengths), want_len)
    for row, k in enumerate(want_len):
        np.testing.assert_array_equal(np.asarray(out.tokens[row, :k]), base[row, :k])
        assert (np.asarray(out.tokens[row, k:]) == PAD - 1).all()
        np.testing.assert_array_equal(np.asarray(out.topk_idx[:, row, :k]),
                                      np.asarray(baseline.topk_idx[:, row, :k]))
        assert (np.asarray(out.topk_idx[:, row, k:]) == -1).all()
    assert bool(state.done.all())
    assert int(state.index) == P + want_len.max() < P + n  # the loop stopped once every row was done
    whole = gen.generate(params, cfg, ids, mask, max_new_tokens=N, stop_token_ids=stops, pad_id=PAD - 1)
    np.testing.assert_array_equal(np.asarray(whole.tokens[:, :n]), np.asarray(out.tokens))
    assert (np.asarray(whole.tokens[:, n:]) == PAD - 1).all()
    np.testing.assert_array_equal(np.asarray(whole.lengths), want_len)


@pytest.mark.slow
def test_chunked_decode_equals_one_decode(tiny, baseline):
    """Two decodes of n steps equal one of 2n (``baseline``: generate with router outputs is
    prefill + one decode of N = 2n steps in one program)."""
    cfg, params, ids, mask = tiny
    P, n = ids.shape[1], N // 2
    state = gen.prefill(params, cfg, ids, mask, cache_len=P + N)
    kw = dict(return_router=True, stop_token_ids=NO_STOP)
    state, a = gen.decode(params, cfg, state, num_steps=n, **kw)
    state, b = gen.decode(params, cfg, state, num_steps=n, **kw)
    np.testing.assert_array_equal(np.concatenate([a.tokens, b.tokens], 1), np.asarray(baseline.tokens))
    np.testing.assert_array_equal(np.concatenate([a.topk_idx, b.topk_idx], 2), np.asarray(baseline.topk_idx))
    np.testing.assert_array_equal(np.asarray(state.lengths), np.asarray(baseline.lengths))
    assert int(state.index) == P + N
    with pytest.raises(ValueError, match="free cache slots"):
        gen.decode(params, cfg, state, num_steps=1)


def test_attention_mask_from_slots_positions_and_validity():
    q_slots = jnp.asarray([3, 4])
    q_pos = jnp.asarray([[1, 2], [3, 4]])
    k_pos = jnp.asarray([[0, 0, 0, 1, 2, 0], [0, 1, 2, 3, 4, 0]])
    k_valid = jnp.asarray([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]], bool)
    want_causal = np.zeros((2, 2, 6), bool)
    for b in range(2):
        for s in range(2):
            for t in range(6):
                want_causal[b, s, t] = bool(k_valid[b, t]) and t <= int(q_slots[s])
    np.testing.assert_array_equal(np.asarray(layers.attention_mask(q_slots, q_pos, k_pos, k_valid)),
                                  want_causal)
    windowed = np.asarray(layers.attention_mask(q_slots, q_pos, k_pos, k_valid, window=2))
    dist = np.asarray(q_pos)[:, :, None] - np.asarray(k_pos)[:, None, :]
    np.testing.assert_array_equal(windowed, want_causal & (dist < 2))

"""Routing statistics against a direct NumPy computation from the model's own router outputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import sharding as shd
from moe_jax.data.tokenize import EncodedTexts
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import init_params
from moe_jax.routing import collect
from moe_jax.routing.statistics import routing_statistics
from moe_jax.convert.tiny import tiny_hf_config

TINY = tiny_hf_config("qwen2_moe")  # 3 layers (one dense), 8 experts, top-3, shared expert
TEMPLATE = 3  # first 3 tokens and the last one play the chat template (not counted)


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.from_hf(TINY)
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=1))
    return cfg, params


@pytest.fixture(scope="module")
def corpus():
    rng = np.random.default_rng(0)
    lengths = [9, 17, 6, 12, 20, 7, 11]
    ids = [rng.integers(1, TINY["vocab_size"], n).astype(np.int32) for n in lengths]
    masks = []
    for n in lengths:
        m = np.ones(n, bool)
        m[:TEMPLATE] = False
        m[-1] = False
        masks.append(m)
    return ids, masks


@pytest.fixture(scope="module")
def reference(model, corpus):
    """NumPy statistics from unpadded single-sequence forwards (float64)."""
    cfg, params = model
    ids, masks = corpus
    ref = {"seq_mean_probs": [], "seq_topk_freq": [], "seq_topk_weight": [], "seq_token_entropy": [],
           "seq_lengths": [], "token_topk": []}
    L, E = cfg.num_moe_layers, cfg.num_experts
    counts, gates = np.zeros((L, E), np.int64), np.zeros((L, E))
    for x, m in zip(ids, masks):
        out = forward(params, cfg, jnp.asarray(x[None]), return_router=True, compute_logits=False)
        z = np.asarray(out.router_logits, np.float64)[:, 0][:, m]  # [L, n, E]
        idx = np.asarray(out.topk_idx)[:, 0][:, m]  # [L, n, k]
        w = np.asarray(out.topk_weights, np.float64)[:, 0][:, m]
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        onehot = np.zeros(p.shape)
        for l in range(L):
            for t in range(idx.shape[1]):
                onehot[l, t, idx[l, t]] += 1
                gates[l, idx[l, t]] += w[l, t]
        counts += onehot.sum(1).astype(np.int64)
        ref["seq_mean_probs"].append(p.mean(1))
        ref["seq_topk_freq"].append(onehot.mean(1))
        kept = p * (onehot > 0)  # the full softmax kept on the token's top-k, renormalised over it
        ref["seq_topk_weight"].append((kept / kept.sum(-1, keepdims=True)).mean(1))
        ref["seq_token_entropy"].append(-(p * np.log(p)).sum(-1).mean(1))
        ref["seq_lengths"].append(m.sum())
        ref["token_topk"].append(idx.transpose(1, 0, 2))
    ref = {k: np.stack(v) if k != "token_topk" else np.concatenate(v) for k, v in ref.items()}
    ref["topk_counts"], ref["gate_weight_sums"] = counts, gates
    ref["token_totals"] = np.full(L, sum(m.sum() for m in masks))
    return ref


@pytest.fixture(scope="module")
def mesh():
    return shd.make_mesh({"data": -1, "model": 1})


@pytest.fixture(scope="module")
def step(model, mesh):
    return collect.make_collect_step(model[0], mesh, token_topk=True)


def run(model, corpus, mesh, step, **kw):
    cfg, params = model
    kw = {"batch_size": 4, "pad_to_multiple": 8, "keep_token_topk": True, **kw}
    return collect.collect_language(step, params, encoded(*corpus), cfg=cfg, mesh=mesh, **kw)


def encoded(ids, masks):
    return EncodedTexts(list(ids), list(masks), np.zeros(len(ids), bool))


@pytest.mark.slow  # the reference: a forward pass per sequence
def test_statistics_match_numpy(model, corpus, mesh, step, reference):
    res = run(model, corpus, mesh, step)
    a = res.arrays
    for key in ("seq_mean_probs", "seq_topk_freq", "seq_topk_weight", "seq_token_entropy", "gate_weight_sums"):
        np.testing.assert_allclose(a[key], reference[key], atol=1e-5, rtol=1e-5, err_msg=key)
    for key in ("seq_lengths", "topk_counts", "token_totals", "token_topk"):
        np.testing.assert_array_equal(a[key], reference[key], err_msg=key)
    assert a["topk_counts"].dtype == np.int64 and a["gate_weight_sums"].dtype == np.float64
    assert a["token_topk"].dtype == np.int16
    # frequencies sum to k per layer and sequence; mean probabilities to 1
    np.testing.assert_allclose(a["seq_topk_freq"].sum(-1), model[0].top_k, atol=1e-5)
    np.testing.assert_allclose(a["seq_mean_probs"].sum(-1), 1.0, atol=1e-5)
    assert res.sequences == 7 and res.counted_tokens == reference["token_totals"][0]
    assert res.tokens == sum(len(x) for x in corpus[0]) and res.batches == 2


@pytest.mark.slow
def test_padding_amount_and_pad_ids_do_not_matter(model, corpus, mesh, step):
    base = run(model, corpus, mesh, step).arrays
    unsorted = run(model, corpus, mesh, step, pad_to_multiple=32, sort_by_length=False, batch_size=2).arrays
    left = run(model, corpus, mesh, step, padding_side="left", pad_id=5).arrays
    for key, v in base.items():
        np.testing.assert_allclose(left[key], v, atol=1e-5, err_msg=f"left padding: {key}")
    for key, v in base.items():
        np.testing.assert_allclose(unsorted[key], v, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_compiles_once_per_shape(model, corpus, mesh):
    cfg, params = model
    step = collect.make_collect_step(cfg, mesh)
    ids = [corpus[0][0]] * 9  # 3 batches of 4 (last one partial), all the same length bucket
    masks = [corpus[1][0]] * 9
    collect.collect_language(step, params, encoded(ids, masks), cfg=cfg, mesh=mesh, batch_size=4, pad_to_multiple=16)
    assert step._cache_size() == 1


def test_statistics_by_hand():
    """E=3, k=1, one layer, two sequences; padding holds NaN logits that must not leak."""
    z = np.log(np.array([[[[1, 1, 2], [1, 1, 1], [np.nan] * 3],
                          [[3, 1, 0.0 + 1e-30], [np.nan] * 3, [np.nan] * 3]]], np.float32))
    counted = np.array([[1, 1, 0], [1, 0, 0]], bool)
    idx = np.array([[[[2], [0], [1]], [[0], [1], [1]]]], np.int32)
    w = np.array([[[[0.5], [1 / 3], [np.nan]], [[0.75], [np.nan], [np.nan]]]], np.float32)
    out = jax.tree.map(np.asarray, routing_statistics(jnp.asarray(z), idx, w, counted))
    p1, p2 = np.array([.25, .25, .5]), np.array([1 / 3] * 3)
    np.testing.assert_allclose(out["seq_mean_probs"][0, 0], (p1 + p2) / 2, atol=1e-6)
    np.testing.assert_allclose(out["seq_mean_probs"][1, 0], [.75, .25, 0], atol=1e-6)
    np.testing.assert_allclose(out["seq_topk_freq"][:, 0], [[.5, 0, .5], [1, 0, 0]])
    h1, h2 = -(p1 * np.log(p1)).sum(), np.log(3)
    np.testing.assert_allclose(out["seq_token_entropy"][:, 0], [(h1 + h2) / 2, -(.75 * np.log(.75) + .25 * np.log(.25))],
                               atol=1e-6)
    np.testing.assert_array_equal(out["topk_counts"], [[2, 0, 1]])
    np.testing.assert_allclose(out["gate_weight_sums"], [[1 / 3 + .75, 0, .5]], atol=1e-6)
    assert out["token_count"] == 3 and out["seq_lengths"].tolist() == [2, 1]


def test_row_without_counted_tokens_is_zero():
    z = jnp.zeros((1, 2, 3, 4))
    idx = jnp.zeros((1, 2, 3, 1), jnp.int32)
    out = routing_statistics(z, idx, jnp.ones((1, 2, 3, 1)), jnp.array([[1, 1, 1], [0, 0, 0]], bool))
    assert float(jnp.abs(out["seq_mean_probs"][1]).sum()) == 0 and int(out["seq_lengths"][1]) == 0
    np.testing.assert_allclose(out["seq_mean_probs"][0], 0.25)


@pytest.mark.slow
def test_bad_inputs(model, corpus, mesh, step):
    cfg, params = model
    with pytest.raises(ValueError, match="sequence 1"):
        collect.collect_language(step, params, encoded(corpus[0][:2], [corpus[1][0], corpus[1][0]]), cfg=cfg,
                                 mesh=mesh, batch_size=2)
    with pytest.raises(ValueError, match="2 count masks"):
        collect.collect_language(step, params, encoded(corpus[0][:3], corpus[1][:2]), cfg=cfg, mesh=mesh,
                                 batch_size=2)

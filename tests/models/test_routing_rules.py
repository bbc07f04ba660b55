"""Routing rules against direct per-token NumPy loops (dispatch backends: test_dispatch.py)."""

import numpy as np
import pytest

from moe_jax.models import routing
from moe_jax.models.config import ModelConfig
from moe_jax.convert.tiny import tiny_hf_config


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("renorm", [False, True])
def test_softmax_topk_matches_numpy(renorm):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 8)).astype(np.float32) * 3
    w, idx = routing.softmax_topk(z, 3, renorm)
    for t in range(50):
        p = np_softmax(z[t].astype(np.float64))
        order = np.argsort(-p)[:3]
        ww = p[order] / (p[order].sum() if renorm else 1.0)
        np.testing.assert_array_equal(np.asarray(idx[t]), order)
        np.testing.assert_allclose(np.asarray(w[t]), ww, rtol=1e-6)


def np_sparsemixer(s, eps):
    """Transcription of the reference's eval-mode sparsemixer, one token at a time."""
    s = s.astype(np.float64)
    out_w, out_i = [], []
    masked = s.copy()
    for step in range(2):
        m = masked.max()
        i = int(np.argmax(masked))
        drop = (m - s) / np.maximum(np.abs(s), m) > 2 * eps
        g = np.where(drop, -np.inf, masked)
        out_w.append(np_softmax(g)[i])
        out_i.append(i)
        masked = masked.copy()
        masked[i] = -np.inf
    return np.array(out_w), np.array(out_i)


def test_sparsemixer_matches_numpy_transcription():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 16)).astype(np.float32)
    z[:20, 3] = z[:20].max(-1) + 0.001  # near ties: several experts inside the 2*eps window
    w, idx = routing.sparsemixer_top2(z, 0.01)
    for t in range(200):
        ww, ii = np_sparsemixer(z[t], 0.01)
        np.testing.assert_array_equal(np.asarray(idx[t]), ii)
        np.testing.assert_allclose(np.asarray(w[t]), ww, rtol=1e-5)
    # Not renormalised: sums exceed 1 where both experts stand alone in their window.
    assert np.asarray(w).sum(-1).max() > 1.5


def test_topk_softmax_matches_numpy():
    """GPT-OSS: top-k of the raw logits, softmax over the k chosen only."""
    z = np.random.default_rng(6).normal(size=(50, 8)).astype(np.float32) * 3
    w, idx = routing.topk_softmax(z, 3)
    for t in range(50):
        order = np.argsort(-z[t])[:3]
        np.testing.assert_array_equal(np.asarray(idx[t]), order)
        np.testing.assert_allclose(np.asarray(w[t]), np_softmax(z[t][order].astype(np.float64)), rtol=1e-6)


def test_route_dispatches_on_family():
    z = np.random.default_rng(3).normal(size=(10, 4)).astype(np.float32)
    phi = ModelConfig.from_hf(tiny_hf_config("phimoe"))
    w, i = routing.route(z, phi)
    w2, i2 = routing.sparsemixer_top2(z, phi.router_jitter_noise)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(i2))
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w2))


@pytest.mark.slow
def test_sparsemixer_bfloat16_matches_the_reference_function():
    """In bf16 the reference runs the relative-distance test in bf16: compare with transformers' own
    sparsemixer (eval mode) on bf16 logits with many near-ties."""
    import jax.numpy as jnp
    import torch
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    rng = np.random.default_rng(5)
    z = rng.normal(size=(4000, 16)).astype(np.float32) * 2
    z[:, 5] = z.max(-1) - np.abs(rng.normal(size=4000)) * 0.05  # second best within ~2*eps of the max
    zb = torch.tensor(z).to(torch.bfloat16)
    ref_w, ref_i = sparsemixer(zb, jitter_eps=0.01, training=False)
    ref = ref_w.float().numpy()

    def run(dtype):
        w, idx = routing.sparsemixer_top2(jnp.asarray(zb.float().numpy()), 0.01, dtype)
        return np.asarray(jnp.asarray(w).astype(jnp.bfloat16).astype(jnp.float32)), np.asarray(idx)

    w, idx = run(jnp.bfloat16)
    np.testing.assert_array_equal(idx, ref_i.numpy())
    np.testing.assert_array_equal(w, ref)  # bit-exact once rounded to bf16, like the reference's output
    # fp32 arithmetic on the same logits keeps or drops other experts for a few tokens.
    w32, _ = run(jnp.float32)
    assert np.abs(w32 - ref).max() > 0.1

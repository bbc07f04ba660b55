"""Learned steering: the fitted router bias lowers the divergence, and lives only in the band."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models.config import ModelConfig
from moe_jax.models.params import init_params
from moe_jax.steering import learned
from moe_jax.convert.tiny import tiny_hf_config

CFG = ModelConfig.from_hf(tiny_hf_config("olmoe", num_hidden_layers=3))  # 3 MoE layers, 8 experts


@pytest.fixture(scope="module")
def problem():
    params = jax.tree.map(jnp.asarray, init_params(CFG, seed=5))
    for lp in params["layers"]:  # sharper routing than the random init, so languages differ
        lp["moe"]["router"]["kernel"] = lp["moe"]["router"]["kernel"] * 10.0
    rng = np.random.default_rng(0)
    n, s = 8, 12
    lang = jnp.asarray(rng.integers(0, CFG.vocab_size // 2, (n, s)), jnp.int32)
    pivot = jnp.asarray(rng.integers(CFG.vocab_size // 2, CFG.vocab_size, (n, s)), jnp.int32)
    mask = np.ones((n, s), np.int32)
    mask[:3, :4] = 0  # left padding on a few rows
    mask = jnp.asarray(mask)
    zero = jnp.zeros((CFG.num_moe_layers, CFG.num_experts))
    target = learned.routing_statistic(params, CFG, pivot, mask, mask, zero)
    return params, lang, mask, target


def test_mean_softmax_against_a_loop():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)  # [L, B, S, E]
    b = rng.normal(size=(2, 4)).astype(np.float32)
    m = (rng.random((3, 5)) > 0.3).astype(np.int32)
    m[:, 0] = 1
    got = np.asarray(learned.mean_softmax(jnp.asarray(z), jnp.asarray(b), jnp.asarray(m)))
    for i in range(3):
        for l in range(2):
            rows = [np.exp(z[l, i, t] + b[l]) / np.exp(z[l, i, t] + b[l]).sum() for t in range(5) if m[i, t]]
            np.testing.assert_allclose(got[i, l], np.mean(rows, 0), rtol=1e-5)


def test_js_divergence_values():
    p = jnp.asarray([[1.0, 0.0], [0.5, 0.5]])
    q = jnp.asarray([[0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(np.asarray(learned.js_divergence(p, q)), [np.log(2), 0.0], atol=1e-6)


@pytest.mark.slow  # compiles the tiny model's loss and gradient
def test_gradient_is_zero_outside_the_band(problem):
    params, lang, mask, target = problem
    band = jnp.asarray([0.0, 1.0, 0.0])
    bias = jnp.asarray(np.random.default_rng(2).normal(size=(3, CFG.num_experts)), jnp.float32)
    (_, _), grad = learned._value_and_grad(bias, params, CFG, lang, mask, mask, target, band, 1e-3)
    grad = np.asarray(grad)
    assert np.all(grad[[0, 2]] == 0.0)
    assert np.abs(grad[1]).max() > 1e-4


@pytest.mark.slow
def test_fit_lowers_the_training_divergence_in_the_band_only(problem):
    params, lang, mask, target = problem
    fit = learned.fit_router_bias(params, CFG, lang, mask, mask, target, [False, True, True], steps=25,
                                  learning_rate=0.2, l2=1e-4, heldout_fraction=0.25, seed=0)
    assert fit.train_loss[-1] < 0.9 * fit.train_loss[0]  # per-sentence variation is out of reach of one bias
    assert fit.heldout_loss.shape == (26,) and np.all(np.isfinite(fit.heldout_loss))
    assert len(fit.heldout_idx) == 2 and not set(fit.heldout_idx) & set(fit.train_idx)
    assert np.all(fit.bias[0] == 0) and np.abs(fit.bias[1:]).max() > 0.05
    spec = learned.learned_spec(fit, CFG, language="lang")
    assert spec.method == "bias" and spec.provenance["rule"] == "learned"
    np.testing.assert_allclose(spec.to_intervention(CFG).bias, fit.bias, rtol=1e-6)


@pytest.mark.slow
def test_bad_shapes(problem):
    params, lang, mask, target = problem
    with pytest.raises(ValueError, match=r"target must be \[sequences, moe_layers, experts\]"):
        learned.fit_router_bias(params, CFG, lang, mask, mask, target[:, :2], [True, True, True], steps=1)
    with pytest.raises(ValueError, match="band_rows must be a non-empty"):
        learned.fit_router_bias(params, CFG, lang, mask, mask, target, [False, False, False], steps=1)

"""Representation summaries (moe_jax/routing/hidden_statistics.py): the random projection keeps cosines
within its stated bound, pooled states and logit-lens masses equal NumPy computations from the
model's own hidden states, and token-to-language sets follow their share rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.analysis import representations as rep
from moe_jax.convert.tiny import tiny_hf_config
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.lens import logit_lens, residual_stream
from moe_jax.models.params import init_params
from moe_jax.routing import hidden_statistics as hs


def unit_cos(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_projection_keeps_cosines_within_the_stated_bound(sigma):
    """Per sentence pair the projected cosine's spread is about (1 - c^2) / sqrt(k) (within 25%); the
    similarity, a mean over the sentences, moves by far less; retrieval is unchanged here."""
    rng = np.random.default_rng(0)
    d, n, k = 1024, 100, hs.PROJECTION_DIM
    pivot = rng.normal(size=(1, n, d))
    other = pivot + sigma * rng.normal(size=pivot.shape)
    proj = hs.projection(d)
    assert proj.shape == (d, k) and proj.dtype == np.float32
    a, b = pivot[0] - pivot[0].mean(0), other[0] - other[0].mean(0)
    c, cp = unit_cos(a, b), unit_cos(a @ proj, b @ proj)
    bound = np.mean(1 - c ** 2) / np.sqrt(k)
    assert np.std(cp - c) <= 1.25 * bound
    assert abs(rep.similarity(pivot @ proj, other @ proj)[0] - rep.similarity(pivot, other)[0]) <= bound / 4
    for full, projected in zip(rep.retrieval(pivot, other), rep.retrieval(pivot @ proj, other @ proj)):
        np.testing.assert_array_equal(full, projected)
    np.testing.assert_array_equal(hs.projection(d), proj)  # seeded: the same map for every language
    np.testing.assert_array_equal(hs.projection(64), np.eye(64, dtype=np.float32))  # nothing to reduce


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))
    params = init_params(cfg, seed=0)
    ids = jax.random.randint(jax.random.PRNGKey(0), (3, 12), 0, cfg.vocab_size)
    mask = np.ones((3, 12), np.int32)
    mask[1, :4] = 0
    counted = mask.copy()
    counted[0, :2] = 0  # a template prefix that does not count
    counted[2] = 0  # a dummy row: nothing counts
    out = forward(params, cfg, ids, jnp.asarray(mask), return_hidden_states=True)
    return cfg, params, out, counted


@pytest.mark.slow  # the tiny model's forward and lens (the module fixture)
def test_pooled_states_are_projected_means_over_counted_tokens(model):
    cfg, _, out, counted = model
    proj = hs.projection(cfg.hidden_size, 16)
    got = np.asarray(jax.jit(hs.pooled_states)(out.hidden_states, jnp.asarray(counted), proj))
    assert got.shape == (3, cfg.num_layers + 1, 16) and got.dtype == np.float16
    hidden = np.asarray(out.hidden_states, np.float64)
    for b in range(2):
        want = hidden[:, b, counted[b].astype(bool)].mean(1) @ proj
        np.testing.assert_allclose(got[b], want, rtol=2e-3, atol=2e-3)  # float16 storage
    np.testing.assert_array_equal(got[2], 0)


@pytest.mark.slow
def test_lens_mass_equals_softmax_sums_over_the_token_sets(model):
    cfg, params, out, counted = model
    rng = np.random.default_rng(1)
    sets = (rng.random((2, cfg.vocab_size)) < 0.3).astype(np.float32)
    stream = residual_stream(out)
    got = np.asarray(jax.jit(hs.lens_mass, static_argnums=1)(params, cfg, stream, jnp.asarray(counted), sets))
    assert got.shape == (3, cfg.num_layers + 1, 2)
    logits = np.asarray(logit_lens(params, cfg, stream), np.float64)  # [L + 1, B, S, V]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for b in range(2):
        want = (probs[:, b, counted[b].astype(bool)] @ sets.T).mean(1)  # [L + 1, 2]
        np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], 0)
    # the last layer's lens is the model's own output distribution
    last = np.asarray(jax.nn.softmax(out.logits, -1), np.float64)[0, counted[0].astype(bool)] @ sets.T
    np.testing.assert_allclose(got[0, -1], last.mean(0), rtol=1e-5)


def test_token_languages_follow_the_share_rule():
    counts = {"eng_Latn": np.array([10, 0, 5, 1, 0]), "fra_Latn": np.array([0, 8, 5, 3, 0]),
              "deu_Latn": np.array([0, 2, 0, 0, 0])}
    sets = hs.token_languages(counts, share=0.5)
    assert sets["eng_Latn"].tolist() == [True, False, True, False, False]  # token 2: a 50/50 tie, both
    assert sets["fra_Latn"].tolist() == [False, True, True, True, False]
    assert not sets["deu_Latn"].any()
    strict = hs.token_languages(counts, share=0.6, min_count=4)
    assert strict["fra_Latn"].tolist() == [False, True, False, False, False]  # token 3: only 3 occurrences
    assert hs.token_counts(np.array([[1, 1, 4], [0, 1, 1]]), 6).tolist() == [1, 4, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="share must be in"):
        hs.token_languages(counts, share=0)
    with pytest.raises(ValueError, match="different vocabulary sizes"):
        hs.token_languages({"a": np.zeros(3), "b": np.zeros(4)})

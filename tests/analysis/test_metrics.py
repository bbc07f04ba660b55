"""Divergence metrics against hand-computed values, identities, symmetry, bounds and bad input."""

import math
import warnings

import numpy as np
import pytest

from moe_jax.analysis import (DistributionWarning, cosine_similarity, entropy, entropy_normalized_js,
                              js_divergence, kl_divergence)


def test_hand_computed_values():
    p, q = [0.5, 0.5], [0.9, 0.1]
    kl = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(p, q) == pytest.approx(kl, rel=1e-12)
    m = [0.7, 0.3]
    js = 0.5 * sum(a * math.log(a / b) for a, b in zip(p, m)) + 0.5 * sum(a * math.log(a / b) for a, b in zip(q, m))
    assert js_divergence(p, q) == pytest.approx(js, rel=1e-12)
    h = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert entropy(q) == pytest.approx(h, rel=1e-12)
    assert entropy_normalized_js(p, q) == pytest.approx(js / (math.log(2) - (math.log(2) + h) / 2), rel=1e-12)
    assert cosine_similarity([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))


def test_one_hot_cases_by_hand():
    # disjoint one-hots: JSD = log 2, H = 0, denominator log 4 -> exactly 1/2
    assert js_divergence([1, 0, 0, 0], [0, 1, 0, 0]) == pytest.approx(math.log(2))
    assert entropy_normalized_js([1, 0, 0, 0], [0, 1, 0, 0]) == pytest.approx(0.5)
    # disjoint halves: JSD = log 2, H = log 2 each, denominator log 4 - log 2 = log 2 -> 1
    assert entropy_normalized_js([.5, .5, 0, 0], [0, 0, .5, .5]) == pytest.approx(1.0)
    # identical one-hots: denominator log E, finite and 0; E = 1: denominator clamped, still 0
    assert entropy_normalized_js([0, 1, 0], [0, 1, 0]) == 0.0
    assert entropy_normalized_js([1.0], [1.0]) == 0.0
    # KL stays finite where q has zeros (q clamped at 1e-10)
    assert kl_divergence([1, 0], [0, 1]) == pytest.approx(math.log(1e10))


@pytest.fixture(scope="module")
def random_pairs():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(8, 0.3), size=(50, 3))
    q = rng.dirichlet(np.full(8, 0.3), size=(50, 3))
    return p, q


@pytest.mark.parametrize("fn", [js_divergence, kl_divergence, entropy_normalized_js])
def test_zero_for_identical_and_shape(fn, random_pairs):
    p, _ = random_pairs
    out = fn(p, p)
    assert out.shape == (50, 3)
    np.testing.assert_allclose(out, 0.0, atol=1e-12)


def test_symmetry_and_bounds(random_pairs):
    p, q = random_pairs
    np.testing.assert_allclose(js_divergence(p, q), js_divergence(q, p), rtol=1e-12)
    np.testing.assert_allclose(entropy_normalized_js(p, q), entropy_normalized_js(q, p), rtol=1e-12)
    np.testing.assert_allclose(cosine_similarity(p, q), cosine_similarity(q, p), rtol=1e-12)
    js = js_divergence(p, q)
    assert np.all(js >= 0) and np.all(js <= math.log(2) + 1e-12)
    d = entropy_normalized_js(p, q)
    assert np.all(d >= 0) and np.all(d <= 1 + 1e-9)  # JSD <= log E - mean H
    assert np.all(kl_divergence(p, q) >= 0)
    assert not np.allclose(kl_divergence(p, q), kl_divergence(q, p))  # KL is not symmetric
    # JSD against a direct NumPy computation
    m = (p + q) / 2
    direct = 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    np.testing.assert_allclose(js, direct, rtol=1e-10)


def test_finite_at_one_hot_everywhere():
    e = np.eye(16)
    d = entropy_normalized_js(e[:, None, :], e[None, :, :])
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(np.diag(d), 0.0)
    np.testing.assert_allclose(d[~np.eye(16, dtype=bool)], math.log(2) / math.log(16))


def test_unnormalised_input_is_normalised_with_warning():
    with pytest.warns(DistributionWarning, match="not 1; normalising"):
        v = js_divergence([2.0, 2.0], [0.9, 0.1])
    assert v == pytest.approx(js_divergence([0.5, 0.5], [0.9, 0.1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 rounding does not warn
        js_divergence(np.float32([0.3, 0.3, 0.4]), [0.2, 0.3, 0.5])


@pytest.mark.parametrize("bad, match", [([0.5, -0.1, 0.6], "negative"), ([0.5, np.nan, 0.5], "NaN"),
                                        ([0.0, 0.0, 0.0], "sum to 0"), ([], "at least one expert")])
def test_bad_distributions_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        js_divergence(bad, [0.2, 0.3, 0.5] if len(bad) == 3 else [1.0])


def test_cosine_zero_vector_refused():
    with pytest.raises(ValueError, match="all-zero"):
        cosine_similarity([0.0, 0.0], [1.0, 0.0])


def test_js_of_tiny_disjoint_masses_is_exact():
    """Mass 2e-8 on different experts (near-one-hot rows): m = 1e-8 there. The mixture clamp must sit
    below such masses (1e-10), or the divergence collapses to 0 (a clamp at 1e-6 makes KL(p||m) < 0)."""
    a = 2e-8
    p, q = [1 - a, a, 0.0], [1 - a, 0.0, a]
    assert js_divergence(p, q) == pytest.approx(a * math.log(2), rel=1e-6)


def test_entropy_normalised_js_of_near_uniform_rows():
    """Near-uniform rows leave little room for divergence: log E - mean H = 8.0e-4 here, well above
    the 1e-6 floor of the denominator, so the ratio is JSD / (log E - mean H) exactly."""
    d = 0.02
    p, q = np.array([0.5 + d, 0.5 - d]), np.array([0.5 - d, 0.5 + d])
    h = -(p * np.log(p)).sum()  # both rows have the same entropy
    m = np.array([0.5, 0.5])
    js = (p * np.log(p / m)).sum()  # KL(p||m) = KL(q||m)
    assert 1e-4 < math.log(2) - h < 1e-2
    assert entropy_normalized_js(p, q) == pytest.approx(js / (math.log(2) - h), rel=1e-9)
    assert 0.9 < entropy_normalized_js(p, q) <= 1.0  # close to the bound: the rows are as far apart as H allows

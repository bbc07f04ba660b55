"""Paired statistics against independent computations."""

import math

import numpy as np
import pytest

from moe_jax.steering import paired


def test_mcnemar_against_a_direct_binomial_sum():
    base = np.array([1, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    steer = np.array([1, 0, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    b, c, p = paired.mcnemar_exact(base, steer)
    assert (b, c) == (6, 1)
    # two-sided exact binomial at 1/2: 2 * P(X <= min(b, c)), X ~ Bin(7, 1/2), capped at 1
    direct = min(1.0, 2 * sum(math.comb(7, i) for i in range(0, 2)) / 2 ** 7)
    assert p == pytest.approx(direct, rel=1e-12)  # 0.125
    assert paired.mcnemar_exact(base, base) == (0, 0, 1.0)


def test_bootstrap_against_a_direct_numpy_loop():
    rng = np.random.default_rng(0)
    base, steer = rng.random(50) < 0.5, rng.random(50) < 0.6
    lo, hi = paired.paired_bootstrap(base, steer, n_boot=500, seed=3)
    gen = np.random.default_rng(3)
    idx = gen.integers(0, 50, size=(500, 50))
    deltas = [steer[row].mean() - base[row].mean() for row in idx]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-12)
    assert lo <= steer.mean() - base.mean() <= hi


def test_paired_comparison_fields_and_errors():
    base = np.array([1, 0, 0, 1, 0], bool)
    steer = np.array([1, 1, 0, 1, 1], bool)
    r = paired.paired_comparison(base, steer, n_boot=200)
    assert (r.n, r.baseline, r.steered, r.b, r.c) == (5, 0.4, 0.8, 2, 0)
    assert r.delta == pytest.approx(0.4) and r.ci_low <= r.delta <= r.ci_high and r.p_mcnemar == 0.5
    with pytest.raises(ValueError, match=r"same items, got \(5,\) and \(4,\)"):
        paired.paired_comparison(base, steer[:4])
    with pytest.raises(ValueError, match="no items"):
        paired.mcnemar_exact([], [])

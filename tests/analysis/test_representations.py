"""Representation alignment (moe_jax/analysis/representations.py) on planted vectors with known answers,
against loop-by-loop NumPy references written out here; the partial correlation against the
textbook formula from pairwise correlations and against SciPy's t test on regression residuals."""

import numpy as np
import pytest
from scipy import stats

from moe_jax.analysis import representations as rep

L, N, D = 3, 40, 64


def planted(seed=0, angle=0.6):
    """Pivot states ``[L, N, D]`` and a rotation by ``angle`` radians in each of D/2 random planes."""
    rng = np.random.default_rng(seed)
    pivot = rng.normal(size=(L, N, D)) + 3.0  # a shared offset: mean-centring removes it
    basis = np.linalg.qr(rng.normal(size=(D, D)))[0]
    c, s = np.cos(angle), np.sin(angle)
    blocks = np.kron(np.eye(D // 2), np.array([[c, -s], [s, c]]))
    return rng, pivot, basis @ blocks @ basis.T


def loop_similarity(p, o):
    out = []
    for layer in range(p.shape[0]):
        a, b = p[layer] - p[layer].mean(0), o[layer] - o[layer].mean(0)
        out.append(np.mean([a[i] @ b[i] / np.linalg.norm(a[i]) / np.linalg.norm(b[i]) for i in range(len(a))]))
    return np.array(out)


def loop_retrieval(p, o):
    fwd, back = [], []
    for layer in range(p.shape[0]):
        a, b = p[layer] - p[layer].mean(0), o[layer] - o[layer].mean(0)
        cos = np.array([[x @ y / np.linalg.norm(x) / np.linalg.norm(y) for y in b] for x in a])
        fwd.append(np.mean([np.argmax(cos[i]) == i for i in range(len(a))]))
        back.append(np.mean([np.argmax(cos[:, j]) == j for j in range(len(b))]))
    return np.array(fwd), np.array(back)


def test_a_rotation_of_the_pivot_retrieves_perfectly_at_the_rotation_cosine():
    """Every sentence turned by the same angle in every plane: each cosine is exactly cos(angle), so the
    similarity is cos(angle) and every sentence retrieves its translation; a language offset changes nothing."""
    for angle in (0.3, 0.6):  # far below the random-pair cosines of 64 dims (about 0.12 each)
        _, pivot, rotation = planted(angle=angle)
        rotated = pivot @ rotation.T + 5.0
        np.testing.assert_allclose(rep.similarity(pivot, rotated), np.cos(angle), atol=1e-12)
        for direction in rep.retrieval(pivot, rotated):
            np.testing.assert_array_equal(direction, 1.0)


def test_noise_lowers_similarity_by_the_computable_amount():
    """Isotropic noise of standard deviation sigma on unit-variance coordinates: cos -> 1 / sqrt(1 + sigma^2)
    as the dimension grows (here D = 2048: within 0.01)."""
    rng = np.random.default_rng(1)
    pivot = rng.normal(size=(1, 200, 2048))
    for sigma in (0.5, 1.0, 2.0):
        noisy = pivot + sigma * rng.normal(size=pivot.shape)
        assert abs(rep.similarity(pivot, noisy)[0] - 1 / np.sqrt(1 + sigma ** 2)) < 0.01, sigma


def test_equal_to_loop_references_on_noisy_data():
    rng, pivot, rotation = planted(2)
    other = pivot @ rotation.T + rng.normal(scale=[[[0.5]], [[4.0]], [[12.0]]], size=(L, N, D))
    np.testing.assert_allclose(rep.similarity(pivot, other), loop_similarity(pivot, other), rtol=1e-10)
    got, want = rep.retrieval(pivot, other), loop_retrieval(pivot, other)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert got[0][0] == 1.0 and got[0][2] < 0.9  # noise lowers retrieval layer by layer as planted


def test_alignment_curves_per_language_and_errors():
    rng, pivot, rotation = planted(3)
    pooled = {"eng_Latn": pivot, "fra_Latn": pivot @ rotation.T, "deu_Latn": rng.normal(size=(L, N, D))}
    curves = rep.alignment_curves(pooled, "eng_Latn")
    assert sorted(curves) == ["deu_Latn", "fra_Latn"]
    np.testing.assert_allclose(curves["fra_Latn"]["similarity"], np.cos(0.6), atol=1e-12)
    np.testing.assert_array_equal(curves["fra_Latn"]["retrieval_to_pivot"], 1.0)
    assert np.all(np.abs(curves["deu_Latn"]["similarity"]) < 0.1)  # unrelated sentences
    with pytest.raises(ValueError, match="pivot 'spa_Latn' has no hidden states"):
        rep.alignment_curves(pooled, "spa_Latn")
    with pytest.raises(ValueError, match=r"but hidden states of fra_Latn \(3, 39, 64\)"):
        rep.alignment_curves({"eng_Latn": pivot, "fra_Latn": pivot[:, :-1]}, "eng_Latn")


def test_partial_correlation_matches_the_formula_and_residual_regression():
    rng = np.random.default_rng(4)
    z = rng.normal(size=12)
    x, y = z + 0.5 * rng.normal(size=12), z + 0.5 * rng.normal(size=12)
    got = rep.partial_correlation(x, y, z, n_boot=500)
    rxy, rxz, ryz = (stats.pearsonr(a, b)[0] for a, b in ((x, y), (x, z), (y, z)))
    want = (rxy - rxz * ryz) / np.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))
    assert got.r == pytest.approx(want, abs=1e-12)
    rx = x - np.polyval(np.polyfit(z, x, 1), z)
    ry = y - np.polyval(np.polyfit(z, y, 1), z)
    t = want * np.sqrt(9 / (1 - want ** 2))
    assert got.p == pytest.approx(2 * stats.t.sf(abs(t), 9), rel=1e-9)
    assert stats.pearsonr(rx, ry)[0] == pytest.approx(got.r, abs=1e-9)
    assert got.ci_low <= got.r <= got.ci_high and got.n == 12 and got.n_boot == 500


def test_alignment_accuracy_says_which_alignment_carries_the_signal():
    """Accuracy planted to follow representation alignment; routing alignment follows it only through
    representation: the partial correlation keeps representation's and removes routing's."""
    rng = np.random.default_rng(5)
    langs = [f"l{i}" for i in range(30)]
    rep_align = rng.uniform(0.2, 0.9, 30)
    routing = rep_align + 0.1 * rng.normal(size=30)
    acc = rep_align + 0.02 * rng.normal(size=30)
    out = rep.alignment_accuracy(dict(zip(langs, routing)), dict(zip(langs, rep_align)), dict(zip(langs, acc)),
                                 n_boot=300)
    assert out["representation"]["pearson"].r > 0.95 and out["routing"]["pearson"].r > 0.8
    assert out["representation_given_routing"].r > 0.8 and out["representation_given_routing"].p < 1e-3
    assert abs(out["routing_given_representation"].r) < 0.4
    with pytest.raises(ValueError, match="at least 4 languages"):
        rep.alignment_accuracy({"a": 1, "b": 2}, {"a": 1, "b": 2}, {"a": 1, "b": 2})


def test_planted_synthetic_representations_peak_in_the_middle_and_fall_with_the_language_weight():
    """moe_jax.analysis.synthetic plants meaning weighted by an inverted U and a language vector weighted by
    w_x times a U: similarity is highest in the middle states and lower for heavier-weighted languages."""
    from moe_jax.analysis.synthetic import SyntheticSpec, hidden_arrays

    spec = SyntheticSpec()
    pooled = {l: np.swapaxes(hidden_arrays(spec, l)["seq_hidden"].astype(np.float64), 0, 1) for l in spec.codes}
    curves = rep.alignment_curves(pooled, spec.pivot)
    mid = pooled[spec.pivot].shape[0] // 2
    for lang, c in curves.items():
        assert c["similarity"][mid] > max(c["similarity"][1], c["similarity"][-1]), lang
    by_weight = [curves[code]["similarity"][1:].mean() for code, w, _, _ in spec.languages if w > 0]
    assert by_weight == sorted(by_weight, reverse=True)  # fra (0.5) ... tha (1.5)

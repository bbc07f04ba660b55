"""Pivot divergence (per-sequence and aggregate paths), split-half baseline, middle band."""

import numpy as np
import pytest

from moe_jax.analysis import (aggregate_distribution, aggregate_divergence, detect_middle_band, js_divergence,
                              pairwise_divergence, pivot_divergence, pivot_divergence_pairs, split_half_baseline)

N, L, E, K = 6, 4, 8, 2


@pytest.fixture(scope="module")
def seqs():
    rng = np.random.default_rng(1)
    return {lang: rng.dirichlet(np.ones(E), size=(N, L)) for lang in ("eng_Latn", "fra_Latn", "tha_Thai")}


def test_pivot_divergence_is_mean_over_aligned_pairs(seqs):
    out = pivot_divergence(seqs, "eng_Latn", metric="js_divergence")
    assert set(out) == {"fra_Latn", "tha_Thai"}
    for lang, v in out.items():
        direct = np.array([[js_divergence(seqs["eng_Latn"][i, l], seqs[lang][i, l]) for l in range(L)]
                           for i in range(N)]).mean(0)
        np.testing.assert_allclose(v, direct, rtol=1e-12)
    pairs = pivot_divergence_pairs(seqs, "eng_Latn")
    assert pairs["fra_Latn"].shape == (N, L)
    # the pivot against itself is 0 through the same path
    same = pivot_divergence({"eng_Latn": seqs["eng_Latn"], "copy": seqs["eng_Latn"]}, "eng_Latn")
    np.testing.assert_allclose(same["copy"], 0.0, atol=1e-12)


def test_alignment_by_sequence_ids(seqs):
    perm = np.array([3, 0, 5, 1, 4, 2])
    shuffled = dict(seqs, fra_Latn=seqs["fra_Latn"][perm])
    ids = {l: np.array([f"s{i}" for i in range(N)]) for l in seqs}
    ids["fra_Latn"] = ids["fra_Latn"][perm]
    a = pivot_divergence(seqs, "eng_Latn")
    b = pivot_divergence(shuffled, "eng_Latn", seq_ids=ids)
    np.testing.assert_allclose(a["fra_Latn"], b["fra_Latn"], rtol=1e-12)
    # a language missing some ids: aligned on the common ones, with a warning
    part = dict(seqs, fra_Latn=seqs["fra_Latn"][:4])
    ids_part = dict(ids, fra_Latn=np.array([f"s{i}" for i in range(4)]))
    with pytest.warns(UserWarning, match="4 aligned sequences"):
        c = pivot_divergence(part, "eng_Latn", seq_ids=ids_part)
    direct = pairwise_divergence(seqs["eng_Latn"][:4], seqs["fra_Latn"][:4]).mean(0)
    np.testing.assert_allclose(c["fra_Latn"], direct, rtol=1e-12)


def _identical_sequence_language(rng, n_seq):
    """A language whose sequences are all the same token sequence: per-sequence top-k frequency
    rows [N, L, E] and the aggregate counts [L, E] / totals [L] of those tokens."""
    n_tok = 5
    topk = np.stack([np.stack([rng.choice(E, K, replace=False) for _ in range(L)]) for _ in range(n_tok)])  # [T, L, K]
    onehot = np.zeros((n_tok, L, E))
    np.put_along_axis(onehot, topk, 1.0, axis=-1)
    freq = onehot.mean(0)  # [L, E], rows sum to K
    counts = (onehot.sum(0) * n_seq).astype(np.int64)
    return np.broadcast_to(freq, (n_seq, L, E)), counts, np.full(L, n_tok * n_seq)


def test_aggregate_and_per_sequence_paths_agree_for_identical_sequences():
    rng = np.random.default_rng(2)
    freq, counts, totals = {}, {}, {}
    for lang in ("eng_Latn", "hin_Deva", "ben_Beng"):
        freq[lang], counts[lang], totals[lang] = _identical_sequence_language(rng, n_seq=7)
    for metric in ("entropy_normalized_js", "js_divergence", "kl_divergence", "cosine_distance"):
        per_seq = pivot_divergence({l: f / K for l, f in freq.items()}, "eng_Latn", metric)
        agg = aggregate_divergence(counts, totals, "eng_Latn", metric)
        for lang in per_seq:
            np.testing.assert_allclose(per_seq[lang], agg[lang], rtol=1e-10, atol=1e-12)


def test_aggregate_distribution_checks():
    c = np.array([[3, 1, 0], [2, 2, 0]])
    np.testing.assert_allclose(aggregate_distribution(c, [3, 2]), [[0.75, 0.25, 0], [0.5, 0.5, 0]])
    with pytest.raises(ValueError, match="at most once a token"):
        aggregate_distribution(c, [3, 1])
    with pytest.raises(ValueError, match="2 layers of counts but 3 token totals"):
        aggregate_distribution(c, [3, 2, 2])
    with pytest.raises(KeyError, match="token totals missing"):
        aggregate_divergence({"eng_Latn": c, "fra_Latn": c}, {"eng_Latn": [3, 2]})


def test_mismatched_layers_or_experts_and_missing_pivot(seqs):
    bad_e = dict(seqs, tha_Thai=seqs["tha_Thai"][..., :4] / seqs["tha_Thai"][..., :4].sum(-1, keepdims=True))
    with pytest.raises(ValueError, match="'tha_Thai' has shape .*trailing dims"):
        pivot_divergence(bad_e, "eng_Latn")
    bad_l = dict(seqs, fra_Latn=seqs["fra_Latn"][:, :3])
    with pytest.raises(ValueError, match="'fra_Latn'"):
        pivot_divergence(bad_l, "eng_Latn")
    with pytest.raises(KeyError, match="pivot language 'deu_Latn' is missing"):
        pivot_divergence(seqs, "deu_Latn")
    with pytest.raises(ValueError, match="pass seq_ids"):
        pivot_divergence(dict(seqs, fra_Latn=seqs["fra_Latn"][:3]), "eng_Latn")


def test_split_half_baseline():
    rng = np.random.default_rng(3)
    one = rng.dirichlet(np.ones(E), size=L)
    same = np.broadcast_to(one, (10, L, E))
    for mode in ("pairs", "means"):
        np.testing.assert_allclose(split_half_baseline(same, mode=mode), 0.0, atol=1e-12)
    # two kinds of sequence, alternating: a split can separate them, so the baseline is positive,
    # and the per-pair estimator over unaligned sequences exceeds the half-means one
    a, b = np.zeros((L, E)), np.zeros((L, E))
    a[:, 0] = b[:, 1] = 1.0
    mixed = np.stack([a, b] * 10)
    pairs = split_half_baseline(mixed, "js_divergence", "pairs", n_repeats=20, seed=0)
    means = split_half_baseline(mixed, "js_divergence", "means", n_repeats=20, seed=0)
    assert np.all(pairs > 0.1) and np.all(pairs < np.log(2) + 1e-12) and np.all(means < pairs)
    reps = split_half_baseline(mixed, "js_divergence", "pairs", n_repeats=5, seed=0, return_repeats=True)
    assert reps.shape == (5, L)
    np.testing.assert_allclose(reps, split_half_baseline(mixed, "js_divergence", "pairs", n_repeats=5, seed=0,
                                                         return_repeats=True))  # seeded
    with pytest.raises(ValueError, match="at least 2 sequences"):
        split_half_baseline(mixed[:1])
    with pytest.raises(ValueError, match="positive"):
        split_half_baseline(mixed, mode="means", weights=np.zeros(20))


def test_detect_middle_band():
    u = np.array([0.9, 0.6, 0.2, 0.1, 0.12, 0.15, 0.5, 0.8])
    # threshold 0.5: <= 0.1 + 0.4 = 0.5 -> layers 2..6
    assert detect_middle_band(u, 0.5) == (2, 6)
    assert detect_middle_band(u, 0.1) == (3, 5)  # <= 0.1 + 0.1 * 0.8 = 0.18 excludes 0.2
    # Phi-3.5-like anomaly: a low first layer does not capture the band (longest run wins)
    phi = np.array([0.05, 0.9, 0.8, 0.2, 0.1, 0.1, 0.15, 0.9])
    assert detect_middle_band(phi, 0.3) == (3, 6)
    # averaged over languages
    assert detect_middle_band({"a": u, "b": u + 0.01}, 0.5) == (2, 6)
    assert detect_middle_band(u, override=(1, 3)) == (1, 3)
    with pytest.raises(ValueError, match="not a range within 0..7"):
        detect_middle_band(u, override=(3, 9))
    with pytest.raises(ValueError, match="not a range"):
        detect_middle_band(u, override=(5, 2))

"""Consistency, entropy, similarity/clustering, experts, correlation, accuracy loading, tables:
small hand-made examples and direct NumPy/SciPy computations."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from moe_jax.analysis import (band_similarity, cluster_languages, correlate, divergence_accuracy_correlation,
                              expert_overlap, jaccard, language_experts, layer_similarity, leaf_order,
                              load_accuracy, pair_mean_sem, routing_entropy, sample_token_pairs,
                              shared_exclusive_experts, specialization, task_experts, to_flores, token_consistency,
                              utilization_entropy)
from moe_jax.analysis import tables
from moe_jax.data.languages import UnknownLanguageError


# -- consistency -----------------------------------------------------------------------------------

def test_jaccard_by_hand():
    assert jaccard([0, 1], [1, 2]) == pytest.approx(1 / 3)
    assert jaccard([0, 1, 2, 3], [3, 2, 1, 0]) == 1.0
    assert jaccard([0, 1], [2, 3]) == 0.0
    np.testing.assert_allclose(jaccard(np.array([[0, 1], [4, 5]]), np.array([[1, 0], [5, 6]])), [1.0, 1 / 3])


def test_token_pairs_stay_within_a_sequence_and_are_distinct():
    lengths = np.array([3, 1, 5, 0, 2])
    seq_of = np.repeat(np.arange(5), lengths)
    i, j = sample_token_pairs(lengths, 500, seed=0)
    assert np.all(i != j) and np.all(seq_of[i] == seq_of[j])
    assert not np.any(seq_of[i] == 1)  # a 1-token sequence has no pair
    i2, j2 = sample_token_pairs(lengths, 500, seed=0)
    assert np.array_equal(i, i2) and np.array_equal(j, j2)  # seeded
    i3, j3 = sample_token_pairs(lengths, 500, seed=0, scope="language")
    assert np.all(i3 != j3) and np.any(seq_of[i3] != seq_of[j3])


def test_token_consistency_planted():
    # layer 0: every token has the same top-2 -> 1; layer 1: tokens of a sequence share nothing -> 0;
    # layer 2: half of each pair overlaps -> 1/3
    lengths = np.array([4, 6])
    T = lengths.sum()
    topk = np.zeros((T, 3, 2), np.int16)
    topk[:, 0] = [3, 5]
    topk[:, 1] = np.stack([2 * np.arange(T), 2 * np.arange(T) + 1], -1)
    topk[:, 2] = np.stack([np.zeros(T), 1 + np.arange(T)], -1)
    np.testing.assert_allclose(token_consistency(topk, lengths, n_pairs=300, seed=1), [1.0, 0.0, 1 / 3])
    with pytest.raises(ValueError, match="10 tokens but seq_lengths sum to 9"):
        token_consistency(topk, [4, 5])


# -- entropy ---------------------------------------------------------------------------------------

def test_routing_entropy_is_token_weighted():
    h = np.array([[1.0, 2.0], [3.0, 0.0]])
    np.testing.assert_allclose(routing_entropy(h, [1, 3]), [(1 + 9) / 4, 2 / 4])
    np.testing.assert_allclose(routing_entropy(h), [2.0, 1.0])
    counts = np.array([[5, 5, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(utilization_entropy(counts), [math.log(2), math.log(4)])
    with pytest.raises(ValueError, match="non-negative"):
        routing_entropy(-h)


# -- similarity and clustering -------------------------------------------------------------------

def test_similarity_against_direct_cosine_and_band_mean():
    rng = np.random.default_rng(0)
    u = rng.random((4, 3, 6))
    s = layer_similarity(u)
    assert s.shape == (3, 4, 4)
    for l in range(3):
        for a in range(4):
            for b in range(4):
                direct = u[a, l] @ u[b, l] / np.linalg.norm(u[a, l]) / np.linalg.norm(u[b, l])
                assert s[l, a, b] == pytest.approx(direct)
    np.testing.assert_allclose(band_similarity(u, (1, 2)), s[1:3].mean(0))
    sj = layer_similarity(u, "js")
    np.testing.assert_allclose(np.diagonal(sj, axis1=1, axis2=2), 1.0)
    assert np.all(sj <= 1.0)
    with pytest.raises(ValueError, match="similarity band"):
        band_similarity(u, (2, 5))


def test_clustering_recovers_planted_families():
    rng = np.random.default_rng(1)
    fam = rng.random((2, 2, 8)) ** 4
    langs = ["a1", "a2", "a3", "b1", "b2"]
    u = np.stack([fam[0] + 0.05 * rng.random((2, 8)) for _ in range(3)] +
                 [fam[1] + 0.05 * rng.random((2, 8)) for _ in range(2)])
    z = cluster_languages(band_similarity(u, (0, 1)))
    assert z.shape == (4, 4)
    from scipy.cluster.hierarchy import fcluster
    lab = fcluster(z, 2, criterion="maxclust")
    assert len(set(lab[:3])) == 1 and len(set(lab[3:])) == 1 and lab[0] != lab[3]
    assert sorted(leaf_order(z)) == list(range(len(langs)))


# -- experts ---------------------------------------------------------------------------------------

def test_specialization_by_hand():
    task = np.array([[[0.9, 0.1, 0.0]], [[0.7, 0.3, 0.0]]])  # [N=2, L=1, E=3]
    generic = np.array([[[0.2, 0.2, 0.6]]])
    r = task_experts(task, generic, tau=0.3)
    np.testing.assert_allclose(r.scores, [[0.6, 0.0, -0.6]])
    assert [e.tolist() for e in r.experts] == [[0]] and r.counts().tolist() == [1]
    assert specialization(task, generic, tau=0.7).experts[0].size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        specialization(task * 3, generic)
    with pytest.raises(ValueError, match="target frequencies have"):
        specialization(task, generic[..., :2])
    le = language_experts({"eng_Latn": generic, "x": task}, "eng_Latn", 0.3)
    assert list(le) == ["x"] and le["x"].experts[0].tolist() == [0]
    with pytest.raises(KeyError, match="pivot"):
        language_experts({"x": task}, "eng_Latn")


def test_shared_exclusive_by_hand():
    # one layer, 4 experts, top-2 per language
    f = {"a": np.array([[0.9, 0.5, 0.1, 0.0]]),   # top-2: e0, e1
         "b": np.array([[0.8, 0.0, 0.6, 0.0]]),   # top-2: e0, e2
         "c": np.array([[0.1, 0.2, 0.0, 0.7]])}   # top-2: e3, e1
    r = shared_exclusive_experts(f, top_k=2, thr=0.5)
    # e0 kept by a (0.9) and b (0.8): shares .53/.47 -> exclusive to a; e1: a .5, c .2 -> a .714 exclusive;
    # e2 only b -> exclusive to b; e3 only c -> exclusive to c
    np.testing.assert_allclose(r.share[:, 0, 0], [0.9 / 1.7, 0.8 / 1.7, 0.0])
    assert [x.tolist() for x in r.exclusive("a")] == [[0, 1]]
    assert r.exclusive("b")[0].tolist() == [2] and r.exclusive("c")[0].tolist() == [3]
    assert r.shared()[0].tolist() == []
    r2 = shared_exclusive_experts(f, top_k=2, thr=0.75)
    assert r2.shared()[0].tolist() == [0, 1] and r2.exclusive("a")[0].tolist() == []
    assert shared_exclusive_experts(f, top_k=99).top_k == 4  # clipped to E
    with pytest.raises(ValueError, match="'b' has shape"):
        shared_exclusive_experts(dict(f, b=np.ones((1, 3))))


def test_shared_exclusive_tie_at_threshold_is_neither():
    # docs/methods.md: exclusive if p_x > thr, shared if every p_x < thr. e0: a and b 0.5 each (tie at thr);
    # e1: a 0.3 / b 0.1 -> a .75 exclusive; e2: a .2 / b .6 -> b .75; e3 in no top-3
    f = {"a": np.array([[0.4, 0.3, 0.2, 0.0]]), "b": np.array([[0.4, 0.1, 0.6, 0.05]])}
    r = shared_exclusive_experts(f, top_k=3, thr=0.5)
    np.testing.assert_allclose(r.share[:, 0, 0], [0.5, 0.5])
    assert not r.exclusive_mask[:, 0, 0].any() and not r.shared_mask[0, 0]  # the tie: neither
    r2 = shared_exclusive_experts(f, top_k=3, thr=0.6)  # strictly below thr: shared
    assert r2.shared()[0].tolist() == [0]
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        shared_exclusive_experts(f, thr=0.0)


def test_expert_overlap():
    a = np.array([[1, 1, 0], [0, 0, 0]], bool)
    b = np.array([[0, 1, 1], [0, 0, 0]], bool)
    ov = expert_overlap(a, b)
    assert ov["n_both"].tolist() == [1, 0] and ov["jaccard"].tolist() == [1 / 3, 0.0]
    assert [x.tolist() for x in ov["both"]] == [[1], []]


# -- correlation -----------------------------------------------------------------------------------

def test_correlate_against_scipy_and_numpy():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(12)
    y = -0.8 * x + 0.5 * rng.standard_normal(12)
    c = correlate(x, y, n_boot=500, seed=3)
    assert c["pearson"].r == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert c["pearson"].p == pytest.approx(stats.pearsonr(x, y)[1])
    assert c["spearman"].r == pytest.approx(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])
    for s in c.values():
        assert s.ci_low <= s.r <= s.ci_high and s.ci_high < 0 and s.n == 12 and s.n_boot > 450
    again = correlate(x, y, n_boot=500, seed=3)
    assert again["pearson"].ci_low == c["pearson"].ci_low  # seeded


def test_spearman_exact_pvalue_small_n():
    # a perfect rank correlation of 5 points: 2 of the 120 permutations are as extreme
    c = correlate(np.arange(5.0), -np.arange(5.0) ** 3)
    assert c["spearman"].r == pytest.approx(-1.0) and c["spearman"].p == pytest.approx(2 / 120)


def test_correlation_bad_input():
    with pytest.raises(ValueError, match="at least 3 languages, got 2"):
        correlate([1.0, 2.0], [2.0, 1.0])
    with pytest.raises(ValueError, match="accuracy is constant"):
        correlate([1.0, 2.0, 3.0], [0.5, 0.5, 0.5], names=("divergence", "accuracy"))
    with pytest.raises(ValueError, match="NaN"):
        correlate([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    div = {"a": np.array([0.1, 0.2]), "b": np.array([0.1, 0.3]), "c": np.array([0.1, 0.4])}
    with pytest.raises(ValueError, match=r"at least 3 languages .* have \['a', 'b'\]"):
        divergence_accuracy_correlation(div, {"a": 0.9, "b": 0.8, "zzz": 0.1})


def test_divergence_accuracy_correlation_per_layer_and_band():
    div = {"a": np.array([0.1, 0.2, 0.9]), "b": np.array([0.1, 0.3, 0.5]), "c": np.array([0.1, 0.4, 0.7]),
           "d": np.array([0.1, 0.5, 0.6])}
    acc = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "unused": 0.1}
    r = divergence_accuracy_correlation(div, acc, band=(1, 2), n_boot=200)
    assert r["languages"] == ["a", "b", "c", "d"]
    layer0 = r["per_layer"]["pearson"][0]
    assert np.isnan(layer0.r) and "constant" in layer0.note  # explicit, not a silent NaN
    assert r["per_layer"]["pearson"][1].r == pytest.approx(-1.0)
    band_div = np.array([0.55, 0.4, 0.55, 0.55])
    np.testing.assert_allclose(r["band_divergence"], band_div)
    assert r["band"]["pearson"].r == pytest.approx(np.corrcoef(band_div, [0.9, 0.8, 0.7, 0.6])[0, 1])


# -- accuracy files and tables ---------------------------------------------------------------------

def test_load_accuracy(tmp_path):
    assert load_accuracy(None) == {} and load_accuracy("") == {}
    assert load_accuracy({"a": "0.5"}) == {"a": 0.5}
    (tmp_path / "acc.json").write_text(json.dumps({"accuracy": {"a": 0.5, "b": 0.7}}))
    assert load_accuracy(str(tmp_path / "acc.json")) == {"a": 0.5, "b": 0.7}
    (tmp_path / "acc.csv").write_text("Language,Accuracy\neng_Latn,0.9\nfra_Latn,0.8\n")
    assert load_accuracy(str(tmp_path / "acc.csv")) == {"eng_Latn": 0.9, "fra_Latn": 0.8}
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="bad.csv: expected a header"):
        load_accuracy(str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="accuracy of 'b' is not a number"):
        load_accuracy({"b": "high"})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_accuracy(str(tmp_path / "missing.json"))


def test_accuracy_duplicates_are_errors(tmp_path):
    (tmp_path / "dup.csv").write_text("language,accuracy\neng_Latn,0.9\nfra_Latn,0.8\neng_Latn,0.7\n")
    with pytest.raises(ValueError, match=r"dup.csv: language 'eng_Latn' has two rows \(the second on line 4\)"):
        load_accuracy(str(tmp_path / "dup.csv"))
    (tmp_path / "dup.json").write_text('{"bn": 0.5, "fr": 0.7, "bn": 0.6}')
    with pytest.raises(ValueError, match="dup.json: key 'bn' appears twice"):
        load_accuracy(str(tmp_path / "dup.json"))


def test_accuracy_codes_to_flores():
    acc, renamed = to_flores({"eng_Latn": 0.9, "bn": 0.6, "zh": 0.7, "tha": 0.5, "sw": 0.4})
    assert acc == {"eng_Latn": 0.9, "ben_Beng": 0.6, "zho_Hans": 0.7, "tha_Thai": 0.5, "swh_Latn": 0.4}
    assert renamed == {"bn": "ben_Beng", "zh": "zho_Hans", "tha": "tha_Thai", "sw": "swh_Latn"}
    with pytest.raises(UnknownLanguageError,
                       match="accuracy: unknown language code 'tha_thai'; did you mean: tha_Thai"):
        to_flores({"eng_Latn": 0.9, "tha_thai": 0.5})
    with pytest.raises(UnknownLanguageError, match="unknown ISO 639-1 code 'qq'"):
        to_flores({"qq": 0.5})
    with pytest.raises(UnknownLanguageError, match="ambiguous language code 'zho': one of zho_Hans, zho_Hant"):
        to_flores({"zho": 0.5})
    with pytest.raises(ValueError, match="keys 'bn' and 'ben_Beng' both name language 'ben_Beng'"):
        to_flores({"bn": 0.6, "ben_Beng": 0.5})
    # a store's own (unregistered) code is accepted as it is
    assert to_flores({"xyz_Latn": 0.5}, known=["xyz_Latn"]) == ({"xyz_Latn": 0.5}, {})


def test_pair_mean_sem_by_hand():
    v = np.array([[1.0, 0.0], [3.0, 0.0], [5.0, 3.0]])  # [pairs=3, layers=2]
    mean, sem = pair_mean_sem(v)
    np.testing.assert_allclose(mean, [3.0, 1.0])
    np.testing.assert_allclose(sem, [2.0 / np.sqrt(3), np.sqrt(3.0) / np.sqrt(3)])
    np.testing.assert_allclose(pair_mean_sem(v[:1])[1], [0.0, 0.0])


def test_tables_roundtrip(tmp_path):
    recs = [{"language": "a", "layer": np.int64(0), "value": np.float32(0.5), "both": np.array([1, 2])},
            {"language": "b", "layer": 1, "value": float("nan"), "both": []}]
    tables.write_table(str(tmp_path), "t", recs)
    back = tables.read_table(str(tmp_path), "t")
    assert back == [{"language": "a", "layer": 0, "value": 0.5, "both": [1, 2]},
                    {"language": "b", "layer": 1, "value": None, "both": []}]
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines == ["language,layer,value,both", "a,0,0.5,1 2", "b,1,,"]
    assert tables.read_table(str(tmp_path), "absent") is None
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]

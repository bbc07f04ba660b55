"""Target selection on planted routing statistics: every rule recovers what was planted."""

import numpy as np
import pytest

from moe_jax.steering import targets as tg

L, E, K = 6, 16, 4
MOE_IDS = (0, 2, 3, 4, 5, 7)  # decoder layers 1 and 6 are dense


def _freqs(rng, n, planted=(), boost=0.0):
    """Per-sequence top-k frequencies ``[n, L, E]`` in [0, 1]: a base level plus planted experts."""
    f = rng.uniform(0.05, 0.25, size=(n, L, E))
    for l, e in planted:
        f[:, l, e] += boost
    return np.clip(f, 0, 1)


def test_task_targets_recover_planted_experts_inside_the_band():
    rng = np.random.default_rng(0)
    planted = [(1, 3), (2, 3), (2, 9), (3, 5), (5, 1)]  # (5, 1) lies outside the band below
    task, generic = _freqs(rng, 40, planted, 0.6), _freqs(rng, 50)
    t = tg.task_targets(task, generic, MOE_IDS, band=(2, 4), tau=0.3)
    assert sorted((int(l), int(e)) for l, e in zip(*np.nonzero(t.mask))) == [(1, 3), (2, 3), (2, 9), (3, 5)]
    assert t.pairs()[0] == (2, 3, 1.0)  # decoder-layer numbers, not MoE positions
    assert t.counts().tolist() == [0, 1, 2, 1, 0, 0]
    np.testing.assert_allclose(t.scores, task.mean(0) - generic.mean(0))
    assert t.params == {"tau": 0.3, "band": (2, 4)}
    # the whole model: the planted expert outside the band comes back
    assert tg.task_targets(task, generic, MOE_IDS, band=None, tau=0.3).mask[5, 1]


def test_empty_selection_says_why():
    rng = np.random.default_rng(1)
    task, generic = _freqs(rng, 20, [(2, 4)], 0.2), _freqs(rng, 20)
    delta = task.mean(0)[1:4] - generic.mean(0)[1:4]
    with pytest.raises(tg.EmptySelectionError, match=rf"largest Delta there is {delta.max():.4f}, tau is 0.5"):
        tg.task_targets(task, generic, MOE_IDS, band=(2, 4), tau=0.5)


@pytest.mark.parametrize("band, match", [((1, 1), r"holds no MoE layer; MoE layers are \[0, 2, 3, 4, 5, 7\]"),
                                         ((5, 2), "is after last layer")])
def test_bad_band(band, match):
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=match):
        tg.task_targets(_freqs(rng, 3), _freqs(rng, 3), MOE_IDS, band=band)


def test_language_targets_against_the_pivot():
    rng = np.random.default_rng(3)
    fra, eng = _freqs(rng, 30, [(4, 7)], 0.5), _freqs(rng, 30)
    t = tg.language_targets(fra, eng, MOE_IDS, band=None, tau=0.3, language="fra_Latn")
    assert np.argwhere(t.mask).tolist() == [[4, 7]]
    assert t.rule == "language" and t.params["language"] == "fra_Latn"


def _pool():
    """Frequencies ``{lang: [L, E]}``: experts 0-3 used equally by both, 8-9 only by zho, 12 only by eng."""
    eng, zho = np.zeros((L, E)), np.zeros((L, E))  # unused experts are never kept
    eng[:, :4] = zho[:, :4] = 0.5
    zho[:, 8:10] = 0.6
    eng[:, 12] = 0.6
    return {"eng_Latn": eng, "zho_Hans": zho}


def test_shared_targets_weight_is_the_dominant_share():
    t = tg.shared_targets(_pool(), MOE_IDS, band=(3, 5), top_k=7, thr=0.7)
    assert t.counts().tolist() == [0, 0, 4, 4, 4, 0]
    assert set(np.flatnonzero(t.mask[2])) == {0, 1, 2, 3}
    np.testing.assert_allclose(t.weights[2, :4], 0.5)  # eng's share of an equally used expert
    assert t.weights[~t.mask].max() == 0.0
    # the dominant language is the first one: weights follow its share, here after reordering
    pool = _pool()
    pool["zho_Hans"][:, 0] = 1.5 * pool["eng_Latn"][:, 0]
    t_zh = tg.shared_targets({"zho_Hans": pool["zho_Hans"], "eng_Latn": pool["eng_Latn"]}, MOE_IDS, None, 7, 0.7)
    np.testing.assert_allclose(t_zh.weights[:, 0], 0.6)


def test_exclusive_targets_of_one_language():
    t = tg.exclusive_targets(_pool(), ["zho_Hans"], MOE_IDS, band=None, top_k=7, thr=0.6)
    assert all(set(np.flatnonzero(m)) == {8, 9} for m in t.mask)
    t_en = tg.exclusive_targets(_pool(), ["eng_Latn"], MOE_IDS, band=None, top_k=7, thr=0.6)
    assert all(set(np.flatnonzero(m)) == {12} for m in t_en.mask)
    with pytest.raises(ValueError, match=r"must be a non-empty subset of the pool \['eng_Latn', 'zho_Hans'\]"):
        tg.exclusive_targets(_pool(), ["fra_Latn"], MOE_IDS, band=None)
    with pytest.raises(tg.EmptySelectionError, match="no expert of"):
        tg.exclusive_targets(_pool(), ["zho_Hans"], MOE_IDS, band=None, top_k=7, thr=1.0)


def test_random_control_matches_counts_and_is_seeded():
    rng = np.random.default_rng(4)
    t = tg.task_targets(_freqs(rng, 20, [(1, 3), (2, 3), (2, 9)], 0.6), _freqs(rng, 20), MOE_IDS, (2, 4), 0.3)
    r1, r2, r3 = tg.random_targets(t, seed=7), tg.random_targets(t, seed=7), tg.random_targets(t, seed=8)
    assert r1.counts().tolist() == t.counts().tolist()
    assert not (r1.mask & t.mask).any()
    np.testing.assert_array_equal(r1.mask, r2.mask)
    assert any(not np.array_equal(tg.random_targets(t, seed=s).mask, r1.mask) for s in range(8, 12))
    assert r3.params["seed"] == 8 and r3.params["like"] == "task"


def test_shifted_band_keeps_the_width():
    assert tg.shifted_band((3, 5), MOE_IDS, "early") == (0, 3)  # MoE layers 0, 2, 3
    assert tg.shifted_band((3, 5), MOE_IDS, "late") == (4, 7)  # MoE layers 4, 5, 7
    assert tg.band_from_analysis((1, 3), MOE_IDS) == (2, 4)
    with pytest.raises(ValueError, match="'early' or 'late'"):
        tg.shifted_band((3, 5), MOE_IDS, "middle")


def test_cap_per_layer_keeps_the_highest_scores():
    rng = np.random.default_rng(5)
    task = _freqs(rng, 30, [(2, 1), (2, 4), (2, 7), (2, 9), (3, 2)], 0.5)
    task[:, 2, 9] += 0.2  # the strongest of layer 2
    t = tg.task_targets(task, _freqs(rng, 30), MOE_IDS, band=None, tau=0.3)
    assert t.counts()[2] == 4
    capped = tg.cap_per_layer(t, 2)
    assert capped.counts().tolist() == [0, 0, 2, 1, 0, 0]
    top2 = np.argsort(-t.scores[2])[:2]
    assert set(np.flatnonzero(capped.mask[2])) == set(top2) and 9 in top2
    assert capped.params["max_per_layer"] == 2 and capped.weights[~capped.mask].max() == 0.0
    assert tg.cap_per_layer(t, 4) is t

"""The exclusive rule: two target languages against a hand-built share table (sum of their shares,
as published, and any one share), ties at the top-K cut, layer ranges as a sweep axis and the
masking table (languages x masked ranges) built from the summary rows."""

import numpy as np
import pytest

from moe_jax.report import plots
from moe_jax.steering import sweep as sweep_lib
from moe_jax.steering import targets as tg

IDS = [3]  # one MoE layer, decoder layer 3
# frequencies of 4 experts; every language keeps all 4 (top_k=4), so the shares are f / sum f:
#   expert 0: en .30 zh .35 ja .35 -> shares .30 .35 .35: zh+ja = .70 > .4, neither alone
#   expert 1: en .10 zh .50 ja .40 -> .10 .50 .40: zh alone > .4
#   expert 2: en .80 zh .10 ja .10 -> .80 .10 .10: zh+ja = .20
#   expert 3: en .20 zh .25 ja .05 -> .40 .50 .10: zh alone > .4, zh+ja = .60
POOL = {"eng_Latn": np.array([[0.30, 0.10, 0.80, 0.20]]), "zho_Hans": np.array([[0.35, 0.50, 0.10, 0.25]]),
        "jpn_Jpan": np.array([[0.35, 0.40, 0.10, 0.05]])}


def test_two_target_languages_sum_of_shares_and_any_one():
    summed = tg.exclusive_targets(POOL, ["zho_Hans", "jpn_Jpan"], IDS, None, top_k=4, thr=0.4)
    assert np.flatnonzero(summed.mask[0]).tolist() == [0, 1, 3]
    np.testing.assert_allclose(summed.scores[0], [0.70, 0.90, 0.20, 0.60])
    assert summed.params["combine"] == "sum"
    anyone = tg.exclusive_targets(POOL, ["zho_Hans", "jpn_Jpan"], IDS, None, top_k=4, thr=0.4, combine="any")
    assert np.flatnonzero(anyone.mask[0]).tolist() == [1, 3]
    np.testing.assert_allclose(anyone.scores[0], [0.35, 0.50, 0.10, 0.50])
    with pytest.raises(ValueError, match=r"combine 'all' is not one of \['sum', 'any'\]"):
        tg.exclusive_targets(POOL, ["zho_Hans"], IDS, None, combine="all")


def test_top_k_ties_keep_the_lowest_expert_id():
    # en uses experts 1 and 2 equally (a tie at the top-1 cut): expert 1 is kept, 2 is not
    pool = {"eng_Latn": np.array([[0.1, 0.4, 0.4, 0.1]]), "zho_Hans": np.array([[0.1, 0.1, 0.1, 0.7]])}
    t = tg.exclusive_targets(pool, ["eng_Latn"], IDS, None, top_k=1, thr=0.5)
    assert np.flatnonzero(t.mask[0]).tolist() == [1]
    reordered = {"eng_Latn": pool["eng_Latn"][:, ::-1], "zho_Hans": pool["zho_Hans"][:, ::-1]}
    t = tg.exclusive_targets(reordered, ["eng_Latn"], IDS, None, top_k=1, thr=0.5)
    assert np.flatnonzero(t.mask[0]).tolist() == [1]  # again the lower id of the tied pair (now 1 and 2)


def test_ranges_are_a_sweep_axis_and_give_the_masking_table():
    ids = list(range(8))
    rng = np.random.default_rng(0)
    pool = {l: rng.uniform(0.0, 1.0, (8, 6)) for l in ("eng_Latn", "zho_Hans", "fra_Latn")}
    pool["zho_Hans"][:, 5] = 5.0  # a zh-exclusive expert in every layer

    def select(tau, band):
        return tg.exclusive_targets(pool, ["zho_Hans"], ids, band, top_k=3, thr=0.4)
    grid = sweep_lib.Grid(methods=("mask",), bands=((0, 1), (3, 4), (6, 7)), controls=())
    specs = sweep_lib.build_settings(select, grid, ids, "exclusive")
    assert [sweep_lib.band_of(s.name) for s in specs] == [(0, 1), (3, 4), (6, 7)]
    for s, (lo, hi) in zip(specs, grid.bands):
        assert {l for l, _, _ in s.targets} <= set(range(lo, hi + 1)) and (lo, 5, 1.0) in s.targets
    # summary rows of the sweep (two languages, three ranges) -> languages x ranges
    rows = [dict(setting=s.name, method="mask", rule="exclusive", task="mgsm", language=lang,
                 delta=d, ci_low=d - 0.1, ci_high=d + 0.1, p_mcnemar=0.5)
            for s, d0 in zip(specs, (-0.3, 0.0, 0.1)) for lang, d in (("eng_Latn", d0), ("zho_Hans", d0 - 0.2))]
    rows.append(dict(rows[0], rule="task"))  # another rule's row is left out
    table = sweep_lib.band_table(rows)
    assert table["languages"] == ["eng_Latn", "zho_Hans"] and table["bands"] == [(0, 1), (3, 4), (6, 7)]
    np.testing.assert_allclose(table["delta"], [[-0.3, 0.0, 0.1], [-0.5, -0.2, -0.1]])
    np.testing.assert_allclose(table["high"] - table["low"], 0.2)
    fig = plots.masking_grid(table["languages"], table["bands"], table["delta"], table["low"], table["high"],
                             p=table["p"], title="masking")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "-0.500\n[-0.600, -0.400]\np=0.5" in texts and len(texts) == 6
    assert plots.png_bytes(fig).startswith(b"\x89PNG")

"""The statistic table: each statistic x pooling against NumPy from the per-token routing, uneven
sequence lengths where token and sequence pooling select different experts, the steer stage's
choice of both, and the refusal of a store collected before a statistic existed."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from moe_jax.artifacts import layout as wd
from moe_jax.errors import StageError
from moe_jax.routing import statistic_table as st
from moe_jax.artifacts import routing_store as store
from moe_jax.routing.statistics import routing_statistics
from moe_jax.pipeline import steer as steer_stage
from moe_jax.steering import targets as tg

L, E, K = 2, 4, 1
MOE_IDS = [0, 1]


def _tokens(choices: list[list[int]], rng) -> list[dict]:
    """Per sequence, per token: the chosen expert (k = 1, the same at both layers), a gate weight and
    softmax probabilities with the chosen expert on top."""
    seqs = []
    for experts in choices:
        T = len(experts)
        probs = rng.uniform(0.05, 0.2, (T, L, E))
        for t, e in enumerate(experts):
            probs[t, :, e] = 1.0
        probs /= probs.sum(-1, keepdims=True)
        onehot = np.zeros((T, L, E))
        onehot[np.arange(T), :, experts] = 1.0
        seqs.append({"onehot": onehot, "probs": probs, "gate": onehot * probs})
    return seqs


def _arrays(seqs: list[dict], with_gate: bool = True) -> dict:
    """Store arrays of one language, from the per-token values (token means and language totals)."""
    mean = lambda key: np.stack([s[key].mean(0) for s in seqs]).astype(np.float32)
    renorm = [s["onehot"] * s["probs"] / (s["onehot"] * s["probs"]).sum(-1, keepdims=True) for s in seqs]
    total = sum(len(s["onehot"]) for s in seqs)
    out = {"seq_ids": np.array([f"s{i}" for i in range(len(seqs))]),
           "seq_lengths": np.array([len(s["onehot"]) for s in seqs], np.int32),
           "seq_mean_probs": mean("probs"), "seq_topk_freq": mean("onehot"),
           "seq_topk_weight": np.stack([r.mean(0) for r in renorm]).astype(np.float32),
           "seq_token_entropy": np.zeros((len(seqs), L), np.float32),
           "topk_counts": sum(s["onehot"].sum(0) for s in seqs).astype(np.int64),
           "gate_weight_sums": sum(s["gate"].sum(0) for s in seqs),
           "token_totals": np.full(L, total, np.int64)}
    if with_gate:
        out["seq_gate_weight"] = mean("gate")
    return out


# English: one long sequence on expert 0 and three one-token sequences on expert 1; Chinese the
# mirror image. Token pooling: en prefers 0, zh prefers 1; sequence pooling: the other way round.
EN = [[0] * 9, [1], [1], [1]]
ZH = [[1] * 9, [0], [0], [0]]
SHARDS = {"token": {"eng_Latn": 0, "zho_Hans": 1}, "sequence": {"eng_Latn": 1, "zho_Hans": 0}}


@pytest.fixture(scope="module")
def langs():
    rng = np.random.default_rng(0)
    return {"eng_Latn": _tokens(EN, rng), "zho_Hans": _tokens(ZH, rng)}


def _formula(seqs, key, pooling):
    """Token: all the language's tokens' values over its token total; sequence: mean of token means."""
    if pooling == "token":
        return np.concatenate([s[key] for s in seqs]).sum(0) / sum(len(s[key]) for s in seqs)
    return np.mean([s[key].mean(0) for s in seqs], 0)


@pytest.mark.parametrize("pooling", st.POOLINGS)
@pytest.mark.parametrize("statistic,key", [("topk_freq", "onehot"), ("gate_weight", "gate"),
                                           ("mean_probs", "probs"), ("topk_weight", "renorm")])
def test_each_statistic_and_pooling_against_numpy(langs, statistic, key, pooling):
    seqs = langs["eng_Latn"]
    if key == "renorm":
        seqs = [dict(s, renorm=s["onehot"] * s["probs"] / (s["onehot"] * s["probs"]).sum(-1, keepdims=True))
                for s in seqs]
    got = st.pooled(_arrays(seqs), statistic, pooling)
    np.testing.assert_allclose(got, _formula(seqs, key, pooling), rtol=1e-6, atol=1e-7)


def test_the_two_poolings_select_different_experts(langs):
    for pooling, top in SHARDS.items():
        freqs = {l: st.pooled(_arrays(s), "topk_freq", pooling) for l, s in langs.items()}
        for lang, expert in top.items():
            assert freqs[lang].argmax(-1).tolist() == [expert] * L, (pooling, lang)
        # exclusive experts of zh (top-1 per language, share > 0.5): the pooled favourite
        t = tg.exclusive_targets(freqs, ["zho_Hans"], MOE_IDS, None, top_k=1, thr=0.5)
        assert [np.flatnonzero(m).tolist() for m in t.mask] == [[top["zho_Hans"]]] * L


def test_rule_defaults_are_the_published_ones():
    assert st.resolve("shared") == st.resolve("exclusive") == ("topk_freq", "token")
    assert st.resolve("task") == ("topk_freq", "sequence")
    assert st.resolve("task", "topk_weight", "") == ("topk_weight", "sequence")
    with pytest.raises(ValueError, match=r"steer.pooling 'tokens' is not one of \['token', 'sequence'\]"):
        st.resolve("task", "", "tokens", "steer")


def _workdir(tmp_path, langs, with_gate=True):
    work = str(tmp_path / "work")
    path = wd.routing_dir(work)
    store.open_store(path, {"fingerprint": "f", "moe_layer_ids": MOE_IDS, "top_k": K})
    for lang, seqs in langs.items():
        store.write_language(path, lang, _arrays(seqs, with_gate), {})
    return work


def _config(**steer):
    c = ml_collections.ConfigDict({"steer": steer_stage.default_config()})
    c.steer.update(dict(dict(rule="exclusive", shared_languages="eng_Latn,zho_Hans", exclusive_languages="zho_Hans",
                             exclusive_top_k=1, exclusive_thr=0.5, methods="mask", bands="0-1", controls=""), **steer))
    return c


@pytest.mark.parametrize("pooling", ["", "token", "sequence"])
def test_steer_stage_selects_with_the_chosen_pooling(tmp_path, langs, pooling):
    config = _config(pooling=pooling)
    specs, _, _ = steer_stage.build_specs(config, _workdir(tmp_path, langs), steer_stage.options(config))
    (spec,) = specs
    expert = SHARDS[pooling or "token"]["zho_Hans"]  # "": the exclusive rule's published token pooling
    assert [(l, e) for l, e, _ in spec.targets] == [(0, expert), (1, expert)]
    assert spec.provenance["pooling"] == (pooling or "token") and spec.provenance["statistic"] == "topk_freq"


def test_a_store_without_the_statistic_is_refused_naming_collect(tmp_path, langs):
    work = _workdir(tmp_path, langs, with_gate=False)
    config = _config(statistic="gate_weight", pooling="sequence")
    with pytest.raises(StageError, match=r"routing \(eng_Latn\) has no \['seq_gate_weight'\].*'gate_weight' with "
                                         r"'sequence' pooling; delete .*routing, then run the collect stage again.*"
                                         r"--stages=collect"):
        steer_stage.build_specs(config, work, steer_stage.options(config))
    config = _config(statistic="gate_weight", pooling="token")  # the language totals suffice
    assert steer_stage.build_specs(config, work, steer_stage.options(config))[0]


def test_collected_gate_weight_per_sequence():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(L, 2, 5, E)).astype(np.float32)
    idx = np.argsort(-z, -1)[..., :2].astype(np.int32)
    w = rng.uniform(0.1, 1.0, idx.shape).astype(np.float32)
    counted = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = routing_statistics(jnp.asarray(z), jnp.asarray(idx), jnp.asarray(w), jnp.asarray(counted))
    want = np.zeros((2, L, E))
    for l in range(L):
        for b in range(2):
            for s in np.flatnonzero(counted[b]):
                want[b, l, idx[l, b, s]] += w[l, b, s] / counted[b].sum()
    np.testing.assert_allclose(np.asarray(out["seq_gate_weight"]), want, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["gate_weight_sums"]),
                               np.einsum("b,ble->le", counted.sum(1), want), rtol=1e-5)


@pytest.mark.parametrize("pooling", ["", "sequence"])
def test_analysis_shared_exclusive_with_the_chosen_pooling(tmp_path, langs, pooling):
    from moe_jax.artifacts import stage_outputs
    from moe_jax.pipeline import analyze as analysis_stage
    work = _workdir(tmp_path, langs)
    config = ml_collections.ConfigDict({"analysis": {"pooling": pooling, "metrics": ("js_divergence",),
                                                     "experts": {"shared_top_k": 1, "shared_thr": 0.5}}})
    summary = analysis_stage.run(config, work)
    assert summary["shared_exclusive"]["pooling"] == (pooling or "token")
    rows = stage_outputs.read_analysis(work, "experts_pool.json")
    zh = {(r["layer"], r["expert"]) for r in rows if r["language"] == "zho_Hans" and r["label"] == "exclusive"}
    assert zh == {(l, SHARDS[pooling or "token"]["zho_Hans"]) for l in range(L)}


def test_an_empty_exclusive_band_names_what_to_change(tmp_path, langs):
    config = _config(exclusive_thr=1.0)
    with pytest.raises(StageError, match=r"no expert of \['zho_Hans'\] has a summed share above thr=1.0.*; lower "
                                         r"steer.exclusive_thr, raise steer.exclusive_top_k"):
        steer_stage.build_specs(config, _workdir(tmp_path, langs), steer_stage.options(config))

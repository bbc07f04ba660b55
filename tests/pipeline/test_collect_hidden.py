"""The collect stage with ``collect.hidden_states``: each sentence's pooled hidden states and logit-lens
masses land in the routing store beside its routing statistics, equal to what the loaded model gives
for that sentence; the options are recorded, checked and part of the store's identity."""

import csv
import os

import jax.numpy as jnp
import numpy as np
import pytest

import moe_jax
from moe_jax.artifacts import layout as wd
from moe_jax.analysis import representations as rep
from moe_jax.artifacts import routing_store as store
from moe_jax.data import corpora, tokenize as tok_lib
from moe_jax.errors import StageError
from moe_jax.models.decoder import forward
from moe_jax.models.lens import logit_lens, residual_stream
from moe_jax.pipeline import analyze
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline import registry
from moe_jax.routing import hidden_statistics as hs
from tests.helpers.configs import small_config


LANGS = "eng_Latn,fra_Latn,deu_Latn,spa_Latn,zho_Hans"  # the pivot and 4 with placeholder accuracies


def hidden_config(**collect):
    c = small_config()
    c.model.tiny.overrides = {}  # the 3-layer tiny model
    c.data.languages = LANGS
    c.collect.hidden_states = True
    c.collect.update(collect)
    return c


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("hidden") / "w")
    config = hidden_config()
    registry.run_stages(config, work, "convert,collect")
    return config, work


@pytest.mark.slow  # the collected module fixture (convert + collect of 5 languages)
def test_store_holds_the_models_pooled_states_and_lens_masses(collected):
    config, work = collected
    meta, data = store.read_store(wd.routing_dir(work))
    model = moe_jax.load(wd.checkpoint_dir(work), dtype="float32")
    cfg = model.cfg
    assert meta["hidden_states"]["dim"] == 256 and meta["hidden_states"]["pivot"] == "eng_Latn"
    corpus = corpora.load_corpus(options_lib.of(config).data)
    encoded = {lang: tok_lib.encode_texts(model.tokenizer, corpus.texts[lang], **tok_lib.corpus_encoding_options(
        options_lib.of(config).data, corpus)) for lang in corpus.languages}
    counts = {lang: hs.token_counts(np.concatenate([i[m.astype(bool)] for i, m in zip(e.input_ids, e.count_mask)]),
                                    cfg.vocab_size) for lang, e in encoded.items()}
    sets = hs.token_languages(counts, 0.5)
    proj = hs.projection(cfg.hidden_size, 256)  # the tiny model's hidden size is below 256: the identity
    for lang in ("eng_Latn", "zho_Hans"):
        arrays = data[lang]
        n = len(arrays["seq_ids"])
        assert arrays["seq_hidden"].shape == (n, cfg.num_layers + 1, min(256, cfg.hidden_size))
        assert arrays["seq_hidden"].dtype == np.float16 and arrays["seq_lens_mass"].shape == (n, cfg.num_layers + 1, 2)
        for i in (0, n - 1):  # one sentence alone, unpadded: its own forward
            ids, counted = encoded[lang].input_ids[i], encoded[lang].count_mask[i].astype(bool)
            out = forward(model.param_tree, cfg, jnp.asarray(ids[None], jnp.int32), return_hidden_states=True)
            want = np.asarray(out.hidden_states, np.float64)[:, 0, counted].mean(1) @ proj
            np.testing.assert_allclose(arrays["seq_hidden"][i], want, rtol=3e-3, atol=3e-3)
            lens = np.asarray(logit_lens(model.param_tree, cfg, residual_stream(out)), np.float64)[:, 0, counted]
            probs = np.exp(lens - lens.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            mass = probs @ np.stack([sets["eng_Latn"], sets[lang]]).T.astype(np.float64)  # [L + 1, T, 2]
            np.testing.assert_allclose(arrays["seq_lens_mass"][i], mass.mean(1), rtol=1e-4, atol=1e-6)
    eng = data["eng_Latn"]["seq_lens_mass"]
    np.testing.assert_array_equal(eng[..., 0], eng[..., 1])  # the pivot's own tokens are the pivot's


@pytest.mark.slow
def test_hidden_options_are_part_of_the_store_identity(collected, tmp_path):
    config, work = collected
    before = store.read_meta(wd.routing_dir(work))
    other = hidden_config(lens_token_share=0.8)
    with pytest.raises(StageError, match=r"hidden_states.lens_token_share: 0.5 \(recorded\) != 0.8 \(now\)"):
        registry.preflight(other, work, ["collect"])
    assert store.read_meta(wd.routing_dir(work)) == before
    plain = small_config()
    plain.model.tiny.overrides = {}
    plain.collect.hidden_states = False  # the demo collects them by default
    work2 = str(tmp_path / "plain")
    registry.run_stages(plain, work2, "convert,collect")
    meta = store.read_meta(wd.routing_dir(work2))
    assert "hidden_states" not in meta and meta["fingerprint"] != before["fingerprint"]
    assert "seq_hidden" not in store.read_store(wd.routing_dir(work2))[1]["eng_Latn"]


def test_bad_hidden_options_are_refused_before_anything_is_written(tmp_path):
    for collect, message in ((dict(hidden_dim=0), "collect.hidden_dim must be a positive int"),
                             (dict(lens_token_share=1.5), r"collect.lens_token_share must be in \(0, 1\]")):
        with pytest.raises(StageError, match=message):
            registry.run_stages(hidden_config(**collect), str(tmp_path / "w"), "convert,collect")
    c = hidden_config()
    c.data.languages = "fra_Latn,deu_Latn"
    with pytest.raises(StageError, match="the pivot eng_Latn .analysis.pivot. is not among data.languages"):
        registry.run_stages(c, str(tmp_path / "w"), "convert,collect")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_analyze_writes_representation_curves_and_correlations(collected):
    """The curves equal moe_jax.analysis.representations on the stored arrays; the correlation uses the
    states after the middle band's decoder layers and minus the band's divergence as routing alignment."""
    config, work = collected
    summary = analyze.run(config, work)
    piece = summary["representations"]
    _, data = store.read_store(wd.routing_dir(work))
    pooled = {l: np.swapaxes(a["seq_hidden"].astype(np.float64), 0, 1) for l, a in data.items()}
    curves = rep.alignment_curves(pooled, "eng_Latn")
    table = read_csv(wd.analysis_dir(work), "representations")
    rows = [r for r in table if r["language"] == "fra_Latn"]
    assert [int(r["state"]) for r in rows] == list(range(piece["states"])) == [int(r["decoder_layer"]) + 1 for r in rows]
    for key in ("similarity", "retrieval_from_pivot", "retrieval_to_pivot"):
        np.testing.assert_allclose([float(r[key]) for r in rows], curves["fra_Latn"][key], rtol=1e-6, err_msg=key)
    np.testing.assert_allclose([float(r["lens_own_mass"]) for r in rows],
                               data["fra_Latn"]["seq_lens_mass"][..., 1].mean(0), rtol=1e-6)
    band = summary["middle_band"]["decoder_layers"]
    states = piece["correlation"]["band_states"]
    assert states == list(range(band[0] + 1, band[1] + 2))
    acc = {l: config.analysis.accuracy[l] for l in LANGS.split(",")[1:]}
    want = rep.alignment_accuracy({l: -v for l, v in summary["band_divergence"].items() if l != "eng_Latn"},
                                  {l: c["similarity"][states].mean() for l, c in curves.items()}, acc)
    got = {(r["alignment"], r["statistic"]): float(r["r"]) for r in read_csv(wd.analysis_dir(work),
                                                                               "representation_correlation")}
    assert got[("representation", "pearson")] == pytest.approx(want["representation"]["pearson"].r, abs=1e-9)
    assert got[("routing", "spearman")] == pytest.approx(want["routing"]["spearman"].r, abs=1e-9)
    assert got[("routing_given_representation", "partial_pearson")] == pytest.approx(
        want["routing_given_representation"].r, abs=1e-9)


def read_csv(directory, name):
    with open(os.path.join(directory, f"{name}.csv")) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_report_shows_the_representation_section(collected):
    from moe_jax.pipeline import report

    config, work = collected
    analyze.run(config, work)
    page = open(report.run(config, work)).read()
    assert ">Hidden representations<" in page
    for png in ("representation_alignment", "logit_lens"):
        assert os.path.getsize(os.path.join(work, "report", f"{png}.png")) > 0 and f"{png}.png" in page, png
    text = page.replace("<wbr>", "")  # long cell words may break
    assert "partial_pearson" in text and "representation_given_routing" in text  # the correlations side by side


@pytest.mark.slow  # a second convert + collect
def test_without_the_logit_lens_only_the_states_are_collected(tmp_path):
    config = hidden_config(logit_lens=False)
    config.data.languages = "eng_Latn,fra_Latn"
    work = str(tmp_path / "w")
    registry.run_stages(config, work, "convert,collect,analyze,report")
    meta, data = store.read_store(wd.routing_dir(work))
    assert meta["hidden_states"]["logit_lens"] is False
    assert "seq_hidden" in data["fra_Latn"] and "seq_lens_mass" not in data["fra_Latn"]
    rows = read_csv(wd.analysis_dir(work), "representations")
    assert rows and all(r["lens_own_mass"] == "" and r["similarity"] != "" for r in rows if r["language"] == "fra_Latn")
    page = open(os.path.join(work, "report", "index.html")).read()
    assert "representation_alignment.png" in page and "logit_lens.png" not in page

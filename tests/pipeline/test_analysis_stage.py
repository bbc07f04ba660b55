"""The analyze stage on synthetic stores: tables, summary, skips of missing pieces, bad input."""

import os
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from moe_jax.analysis import inputs, pivot_divergence, tables
from moe_jax.pipeline import analyze as stage
from moe_jax.analysis.synthetic import (DEFAULT_LANGUAGES, SyntheticSpec, language_arrays, write_demo,
                                        write_synthetic_store)
from moe_jax.artifacts import routing_store as store_lib

SPEC = SyntheticSpec(moe_layer_ids=tuple(range(1, 13)))  # decoder layer 0 dense: MoE layer l is decoder l + 1
SMALL = dict(n_sequences=10)


def _config(**analysis):
    c = ml_collections.ConfigDict()
    c.analysis = stage.default_config()
    c.analysis.bootstrap.n = 200
    c.analysis.consistency_pairs = 300
    for k, v in analysis.items():
        c.analysis[k] = v
    return c


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("full"))
    paths = write_demo(wd, SPEC)
    summary = stage.run(_config(accuracy=paths["accuracy"], task_stores={"math": paths["task_math"]}), wd)
    return wd, summary


def test_full_run_writes_every_table(full):
    wd, s = full
    assert s["skipped"] == {}
    out = os.path.join(wd, "analysis")
    for name in ("divergence", "divergence_aggregate", "baseline", "entropy", "consistency", "similarity_layers",
                 "similarity_bands", "clustering", "experts_language", "experts_pool", "experts_task",
                 "expert_overlap", "correlation", "correlation_points", "accuracy"):
        assert name in s["tables"]
        assert os.path.getsize(os.path.join(out, f"{name}.csv")) > 0 and tables.read_table(out, name), name
    assert tables.read_json(os.path.join(out, "summary.json")) == s
    assert set(s["tables"]) == set(stage.TABLES)
    assert s["languages"][0] == "eng_Latn" and s["n_layers"] == 12 and s["n_experts"] == 16 and s["top_k"] == 4


def test_full_run_numbers(full):
    wd, s = full
    out = os.path.join(wd, "analysis")
    _, data = store_lib.read_store(os.path.join(wd, "routing"))
    direct = pivot_divergence({l: a["seq_mean_probs"] for l, a in data.items()}, "eng_Latn")
    rows = [r for r in tables.read_table(out, "divergence") if r["metric"] == "entropy_normalized_js"]
    for r in rows:
        assert r["mean"] == pytest.approx(direct[r["language"]][r["layer"]])
        assert r["decoder_layer"] == r["layer"] + 1 and r["n_pairs"] == SPEC.n_sequences
    b = s["middle_band"]
    assert b["source"] == "detected" and 1 <= b["start"] < 5 and 6 < b["end"] <= 10
    assert b["decoder_layers"] == [b["start"] + 1, b["end"] + 1]
    assert s["correlation"]["band"]["pearson"]["r"] < -0.8 and s["correlation"]["band"]["spearman"]["r"] < -0.8
    assert s["task_experts"]["tasks"]["math"]["n_task_experts"] == len(SPEC.task_experts)
    assert s["task_experts"]["tasks"]["math"]["n_also_language_experts"] == 0
    assert set(s["similarity"]["bands"]) == {"all", "early", "middle", "late"}
    corr = tables.read_table(out, "correlation")
    assert {r["scope"] for r in corr} == {"layer", "band"}
    assert len([r for r in corr if r["scope"] == "layer"]) == 2 * SPEC.n_layers


def test_missing_pieces_are_skipped(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(**SMALL), with_token_topk=False)
    s = stage.run(_config(), str(tmp_path))
    assert set(s["skipped"]) == {"consistency", "task_experts", "correlation"}
    assert "token_topk" in s["skipped"]["consistency"] and "accuracy" in s["skipped"]["correlation"]
    assert not os.path.exists(tmp_path / "analysis" / "consistency.csv")
    assert "divergence" in s["tables"]


def test_rerun_without_a_piece_removes_its_stale_tables(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(**SMALL))
    acc = SyntheticSpec().accuracy()
    assert "correlation" in stage.run(_config(accuracy=acc), str(tmp_path))["tables"]
    s = stage.run(_config(), str(tmp_path))
    assert "correlation" in s["skipped"]
    for name in ("correlation", "correlation_points", "accuracy"):
        assert not os.path.exists(tmp_path / "analysis" / f"{name}.csv")
        assert not os.path.exists(tmp_path / "analysis" / f"{name}.json")


def test_fewer_than_three_languages(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(languages=DEFAULT_LANGUAGES[:2], **SMALL))
    s = stage.run(_config(accuracy={"eng_Latn": 0.9, "fra_Latn": 0.8}), str(tmp_path))
    assert {"similarity", "correlation"} <= set(s["skipped"])
    assert "at least 3" in s["skipped"]["similarity"] and "at least 3" in s["skipped"]["correlation"]
    assert "experts_pool" in s["tables"] and "divergence" in s["tables"]


def test_missing_pivot_skips_pivot_analyses(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(languages=DEFAULT_LANGUAGES[1:4], **SMALL))
    s = stage.run(_config(accuracy={"fra_Latn": 0.8, "spa_Latn": 0.7, "hin_Deva": 0.6}), str(tmp_path))
    for name in ("divergence", "middle_band", "language_experts", "correlation"):
        assert name in s["skipped"]
    assert "pivot 'eng_Latn' is not in the store" in s["skipped"]["divergence"]
    assert {"entropy", "similarity_bands", "experts_pool"} <= set(s["tables"])


def test_band_override_and_string_options(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(**SMALL))
    s = stage.run(_config(middle_band=(2, 4), similarity_bands="low:0-3,high:8-11"), str(tmp_path))
    assert s["middle_band"]["start"] == 2 and s["middle_band"]["end"] == 4 and s["middle_band"]["source"] == "override"
    assert s["similarity"]["bands"] == {"low": [0, 3], "high": [8, 11]}
    with pytest.raises(ValueError, match=r"analysis.middle_band: \(3, 99\) is not a range"):
        stage.run(_config(middle_band=(3, 99)), str(tmp_path))
    with pytest.raises(ValueError, match="similarity_bands: bad item 'x'"):
        stage.run(_config(similarity_bands="x"), str(tmp_path))


def test_mismatched_experts_between_languages(tmp_path):
    path = str(tmp_path / "routing")
    store_lib.open_store(path, {"fingerprint": "mixed"})
    store_lib.write_language(path, "eng_Latn", language_arrays(SyntheticSpec(**SMALL), "eng_Latn"), {})
    store_lib.write_language(path, "fra_Latn", language_arrays(SyntheticSpec(n_experts=8, **SMALL), "fra_Latn"), {})
    with pytest.raises(ValueError, match="'fra_Latn' has shape .*16"):
        stage.run(_config(), str(tmp_path))


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no routing store"):
        stage.run(_config(), str(tmp_path))


def test_command_line_overrides_of_placeholder_fields(monkeypatch):
    argv = ["prog", "--config.analysis.middle_band=(3,7)", "--config.analysis.accuracy=/tmp/acc.csv",
            "--config.analysis.task_stores=math=/a,med=/b", "--config.analysis.bootstrap.n=50"]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    root = ml_collections.ConfigDict({"analysis": stage.default_config()})
    config_flags.DEFINE_config_dict("config", root, flag_values=fv)
    fv(argv)
    a = fv.config.analysis
    assert tuple(a.middle_band) == (3, 7) and a.accuracy == "/tmp/acc.csv" and a.bootstrap.n == 50
    assert inputs.parse_task_stores(a.task_stores) == {"math": "/a", "med": "/b"}
    # the section alone, or a partial dict, works too
    cfg = stage.options({"pivot": "fra_Latn", "bootstrap": {"n": 7}})
    assert cfg.pivot == "fra_Latn" and cfg.bootstrap.n == 7 and cfg.bootstrap.seed == 0


def test_divergence_on_the_topk_weight_statistic(tmp_path):
    wd = str(tmp_path)
    write_demo(wd, SPEC)
    s = stage.run(_config(routing_statistic="topk_weight", metrics=("js_divergence",)), wd)
    assert s["routing_statistic"] == "topk_weight"
    _, data = store_lib.read_store(os.path.join(wd, "routing"))
    want = pivot_divergence({l: a["seq_topk_weight"] for l, a in data.items()}, "eng_Latn", "js_divergence")
    rows = [r for r in tables.read_table(os.path.join(wd, "analysis"), "divergence") if r["language"] == "fra_Latn"]
    assert [float(r["mean"]) for r in rows] == pytest.approx(list(want["fra_Latn"]), rel=1e-6)
    with pytest.raises(ValueError, match=r"routing_statistic 'topk_freq' is not one of \['mean_probs', 'topk_weight'\]"):
        stage.run(_config(routing_statistic="topk_freq"), wd)

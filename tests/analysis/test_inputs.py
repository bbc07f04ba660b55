"""What the analyze stage takes in: the pool of languages, task stores collected alike, accuracy
language codes, config keys, and the synthetic demo's layout (read by the launcher unchanged)."""

import json
import logging
import os
import shutil

import ml_collections
import numpy as np
import pytest

from moe_jax.analysis import inputs, synthetic, tables
from moe_jax.pipeline import analyze as stage
from moe_jax.pipeline import registry
from moe_jax.analysis.synthetic import SyntheticSpec, language_arrays, write_demo
from moe_jax.data.languages import UnknownLanguageError
from moe_jax.artifacts import routing_store as store_lib
from tests.helpers.configs import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = SyntheticSpec(n_sequences=10)
TEMPLATE = {"chat_template": True, "exclude_template_tokens": True, "enable_thinking": False, "max_length": 256}


def _config(**analysis):
    c = ml_collections.ConfigDict()
    c.analysis = stage.default_config()
    c.analysis.bootstrap.n = 50
    c.analysis.consistency_pairs = 100
    for k, v in analysis.items():
        c.analysis[k] = v
    return c


def _edit_meta(store, **fields):
    meta = store_lib.read_meta(store)
    meta.update(fields)
    store_lib.atomic_write_json(os.path.join(store, store_lib.META), meta)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A synthetic workdir (6 languages, task store at tasks/math), collected like the collect stage would."""
    wd = str(tmp_path_factory.mktemp("demo"))
    paths = write_demo(wd, SPEC)
    for key in ("routing", "task_math"):
        _edit_meta(paths[key], template=dict(TEMPLATE), dtype="bfloat16", checkpoint_sha256="c" * 64)
    return wd, paths


@pytest.fixture
def work(demo, tmp_path):
    """A private copy of the demo workdir (tests edit metas)."""
    wd = str(tmp_path / "w")
    shutil.copytree(demo[0], wd)
    return wd, {k: os.path.join(wd, os.path.relpath(v, demo[0])) for k, v in demo[1].items()}


def _mean_freq(store, lang):
    return store_lib.read_store(store)[1][lang]["seq_topk_freq"].mean(0)


# -- task stores ---------------------------------------------------------------------------------------

def test_synthetic_task_store_is_found_where_collect_puts_it(demo):
    wd, paths = demo
    assert paths["task_math"] == os.path.join(wd, "tasks", "math")
    s = stage.run(_config(), wd)  # no analysis.task_stores: found under workdir/tasks
    assert s["task_experts"]["stores_from"] == os.path.join(wd, "tasks")
    delta = _mean_freq(paths["task_math"], "eng_Latn") - _mean_freq(paths["routing"], "eng_Latn")
    assert s["task_experts"]["tasks"]["math"]["n_task_experts"] == int((delta > 0.3).sum())
    assert all(delta[l, e] > 0.3 for l, e in SPEC.task_experts)  # the planted ones among them


@pytest.mark.parametrize("field,value,message", [
    ("template", dict(TEMPLATE, max_length=128), r"template.max_length: 128 in the task store, 256 in the main store"),
    ("template", dict(TEMPLATE, exclude_template_tokens=False),
     r"template.exclude_template_tokens: False in the task store, True in the main store"),
    ("dtype", "float32", r"dtype: 'float32' in the task store, 'bfloat16' in the main store"),
    ("num_experts", 8, r"num_experts: 8 in the task store, 16 in the main store"),
])
def test_task_store_collected_otherwise_is_an_error(work, field, value, message):
    wd, paths = work
    _edit_meta(paths["task_math"], **{field: value})
    with pytest.raises(ValueError, match=rf"task store 'math' \({paths['task_math']}\) and the main store "
                                         rf"{paths['routing']} were collected with different options \({message}"):
        stage.run(_config(), wd)


def test_task_store_of_another_checkpoint_is_an_error(work):
    wd, paths = work
    _edit_meta(paths["task_math"], checkpoint_sha256="d" * 64)
    with pytest.raises(ValueError, match="task store 'math' .* was collected from another checkpoint"):
        stage.run(_config(), wd)


def test_task_store_in_another_language_uses_that_languages_generic_data(work):
    wd, paths = work
    fra = os.path.join(wd, "tasks", "fra_math")
    store_lib.open_store(fra, {"fingerprint": "fra-task"})
    store_lib.write_language(fra, "fra_Latn", language_arrays(SPEC, "fra_Latn", False, content_stream=1,
                                                              extra_bias=SPEC.task_bias * SPEC.task_mask()), {})
    s = stage.run(_config(task_stores={"fra_math": fra}), wd)
    info = s["task_experts"]["tasks"]["fra_math"]
    assert info["language"] == "fra_Latn" and info["generic_language"] == "fra_Latn"
    delta = _mean_freq(fra, "fra_Latn") - _mean_freq(paths["routing"], "fra_Latn")  # Eq. 3, French vs French
    rows = [r for r in tables.read_table(os.path.join(wd, "analysis"), "experts_task") if r["task"] == "fra_math"]
    assert len(rows) == delta.size
    for r in rows:
        assert r["delta"] == pytest.approx(delta[r["layer"], r["expert"]], abs=1e-6)
        assert r["is_expert"] == bool(delta[r["layer"], r["expert"]] > 0.3)
    # a language outside the pool has no generic data to compare with
    _edit_meta(paths["routing"], requested_languages=["eng_Latn", "spa_Latn", "hin_Deva"])
    with pytest.raises(ValueError, match="holds 'fra_Latn' data, not the pivot 'eng_Latn'.* is not in the pool"):
        stage.run(_config(task_stores={"fra_math": fra}), wd)


# -- the pool of languages -----------------------------------------------------------------------------

def _direct_shares(store, pool, top_k):
    """Top-k-kept frequency shares over ``pool`` straight from the store: ``{lang: [L, E]}``."""
    _, data = store_lib.read_store(store)
    f = {l: data[l]["topk_counts"] / data[l]["token_totals"][:, None] for l in pool}
    kept = {}
    for l, v in f.items():
        thresh = np.sort(v, axis=-1)[:, -top_k][:, None]  # no ties in these float frequencies
        kept[l] = np.where(v >= thresh, v, 0.0)
    total = sum(kept.values())
    return {l: kept[l] / np.where(total > 0, total, 1) for l in pool}


def test_pool_is_the_requested_languages(work, caplog):
    wd, paths = work
    pool = ["eng_Latn", "fra_Latn", "hin_Deva", "tha_Thai"]
    _edit_meta(paths["routing"], requested_languages=pool)  # a rerun of collect with fewer languages
    with caplog.at_level(logging.WARNING):
        s = stage.run(_config(), wd)
    assert s["languages"] == pool
    assert s["language_pool"] == {"languages": pool, "source": "meta.requested_languages",
                                  "ignored": ["ben_Beng", "spa_Latn"], "missing": []}
    assert "ben_Beng" in caplog.text and "left out of the analysis" in caplog.text
    assert s["shared_exclusive"]["pool"] == pool and s["similarity"]["languages"] == pool
    assert {r["language"] for r in tables.read_table(os.path.join(wd, "analysis"), "divergence")} == set(pool[1:])
    shares = _direct_shares(paths["routing"], pool, s["shared_exclusive"]["top_k"])
    for r in tables.read_table(os.path.join(wd, "analysis"), "experts_pool"):
        assert r["share"] == pytest.approx(shares[r["language"]][r["layer"], r["expert"]], abs=1e-9)
    # an empty list means every language; config.data.languages wins over the meta
    _edit_meta(paths["routing"], requested_languages=[])
    assert stage.run(_config(), wd)["language_pool"]["source"] == "store (every language)"
    c = _config()
    c.data = ml_collections.ConfigDict({"languages": "eng_Latn,spa_Latn,ben_Beng,swh_Latn"})
    s = stage.run(c, wd)
    assert s["languages"] == ["eng_Latn", "ben_Beng", "spa_Latn"]
    assert s["language_pool"]["source"] == "config.data.languages" and s["language_pool"]["missing"] == ["swh_Latn"]


# -- accuracy language codes ----------------------------------------------------------------------------

def test_accuracy_with_a_mistyped_code_is_an_error(work):
    wd, _ = work
    acc = {"eng_Latn": 0.9, "fra_Latn": 0.8, "spa_Latn": 0.79, "hin_Deva": 0.66, "bn": 0.61, "tha_thai": 0.52}
    with pytest.raises(UnknownLanguageError, match="analysis.accuracy: unknown language code 'tha_thai'; "
                                                   "did you mean: tha_Thai"):
        stage.run(_config(accuracy=acc), wd)


def test_accuracy_iso_codes_map_to_the_store(work, caplog):
    wd, _ = work
    acc = {"eng_Latn": 0.9, "fr": 0.82, "es": 0.79, "hi": 0.66, "bn": 0.61, "th": 0.52, "sw": 0.4}
    with caplog.at_level(logging.WARNING):
        s = stage.run(_config(accuracy=acc), wd)
    langs = ["ben_Beng", "fra_Latn", "hin_Deva", "spa_Latn", "tha_Thai"]
    assert sorted(s["correlation"]["languages"]) == langs
    assert s["accuracy_coverage"]["not_analysed"] == ["swh_Latn"] and "swh_Latn" in caplog.text
    assert s["accuracy_coverage"]["renamed"]["bn"] == "ben_Beng"
    pts = {p["language"]: p["accuracy"] for p in tables.read_table(os.path.join(wd, "analysis"), "correlation_points")}
    assert pts == {"ben_Beng": 0.61, "fra_Latn": 0.82, "hin_Deva": 0.66, "spa_Latn": 0.79, "tha_Thai": 0.52}
    # pool languages without an accuracy are recorded too
    s = stage.run(_config(accuracy={"fr": 0.8, "es": 0.7, "hi": 0.6}), wd)
    assert s["accuracy_coverage"]["without_accuracy"] == ["ben_Beng", "tha_Thai"]


def test_accuracy_csv_with_a_duplicate_row(work):
    wd, _ = work
    path = os.path.join(wd, "acc.csv")
    with open(path, "w") as f:
        f.write("language,accuracy\nfr,0.8\nes,0.7\nhi,0.6\nfr,0.75\n")
    with pytest.raises(ValueError, match="acc.csv: language 'fr' has two rows"):
        stage.run(_config(accuracy=path), wd)
    with open(path, "w") as f:
        f.write("language,accuracy\nfr,0.8\nfra_Latn,0.75\nhi,0.6\n")
    with pytest.raises(ValueError, match="keys 'fr' and 'fra_Latn' both name language 'fra_Latn'"):
        stage.run(_config(accuracy=path), wd)


# -- config keys ------------------------------------------------------------------------------------------

def test_unknown_config_keys_are_errors(demo):
    wd, _ = demo
    with pytest.raises(ValueError, match=r"config.analysis.middle_bandd is not a known field \(did you mean config.analysis.middle_band\?\)"):
        stage.run(_config(middle_bandd=(2, 4)), wd)
    c = _config()
    c.analysis.experts.task_taux = 0.4
    with pytest.raises(ValueError, match=r"config.analysis.experts.task_taux is not a known field \(did you mean config.analysis.experts.task_tau\?\)"):
        stage.run(c, wd)
    with pytest.raises(ValueError, match=r"config.analysis.bootstrap.seeed is not a known field"):
        stage.options({"bootstrap": {"seeed": 1}})
    # mappings of the user's own keys stay free
    cfg = stage.options({"accuracy": {"fr": 0.5}, "task_stores": {"any_name": "/x"}})
    assert cfg.accuracy["fr"] == 0.5 and inputs.parse_task_stores(cfg.task_stores) == {"any_name": "/x"}


# -- the README's synthetic demo, through the launcher -----------------------------------------------------

@pytest.mark.slow  # analyze and report (plots) of the synthetic demo
def test_synthetic_demo_through_the_launcher(tmp_path, caplog):
    """In-process: the synthetic writer's main(argv) and the launcher's run_stages (what
    ``python -m moe_jax.launch`` runs once its flags are parsed; test_planted runs both as processes)."""
    wd = str(tmp_path / "demo")
    assert synthetic.main([wd]) == 0  # the README's `python -m moe_jax.analysis.synthetic WORKDIR`
    assert os.path.isdir(os.path.join(wd, "tasks", "math")) and not os.path.exists(os.path.join(wd, "task_math"))
    registry.run_stages(load_config(os.path.join(ROOT, "configs", "demo.py")), wd, "analyze,report")
    # configs/demo.py lists math and medicine: the medicine store is missing, which is only logged
    assert "no task store" in caplog.text and "medicine" in caplog.text
    with open(os.path.join(wd, "analysis", "summary.json")) as f:
        s = json.load(f)
    assert s["skipped"] == {} and list(s["task_experts"]["tasks"]) == ["math"]
    assert s["task_experts"]["tasks"]["math"]["n_task_experts"] == len(SyntheticSpec().task_experts)
    assert os.path.exists(os.path.join(wd, "report", "experts_task_math.png"))

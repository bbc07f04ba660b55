"""Task corpora: the shipped English task data, their collection into workdir/tasks/<name> (resume,
refusal of a foreign store, one model load for every store) and their use by the analyze stage."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import convert as convert_stage
from moe_jax.pipeline import analyze as analysis_stage
from moe_jax.analysis import tables
from moe_jax.data import corpora
from moe_jax.data.parallel import Turns
from moe_jax.data.defaults import task_data_config
from moe_jax.pipeline import options
from moe_jax.pipeline import collect as collect_stage
from moe_jax.artifacts import routing_store as store
from tests.helpers.configs import CONFIGS, demo_config, load_config

TASK_SENTENCES = {"math": 5, "medicine": 4}


def read_raw(task):
    with open(corpora.builtin_task_path(task), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------------ shipped corpora

@pytest.mark.parametrize("task", corpora.BUILTIN_TASKS)
def test_shipped_task_corpus_loads(task):
    c = corpora.load_corpus({"source": "builtin_task", "task": task})
    rows = read_raw(task)
    assert c.languages == ["eng_Latn"] and c.name == f"builtin_task:{task}" and c.dropped_ids == []
    texts = c.texts["eng_Latn"]  # prompt/response pairs: collected as two-turn chats
    assert c.two_turn and all(isinstance(t, Turns) for t in texts)
    prompts = [t.prompt for t in texts]
    assert len(texts) >= 40 and len(set(prompts)) == len(texts) and len(set(c.ids)) == len(c.ids)
    assert all(p and p == p.strip() for t in texts for p in t)
    assert [r["id"] for r in rows] == c.ids
    assert [(r["eng_Latn"]["prompt"], r["eng_Latn"]["response"]) for r in rows] == [tuple(t) for t in texts]
    assert all(set(r) == {"id", "eng_Latn"} and set(r["eng_Latn"]) == {"prompt", "response"} for r in rows)
    if task == "math":  # worked answers end with the number
        assert all(re.search(r"The answer is .*\d.*\.$", t.response) for t in texts)
    capped = corpora.load_corpus({"source": "builtin_task", "task": task, "max_sentences": 3})
    assert capped.texts["eng_Latn"] == texts[:3]


def test_task_corpora_differ_from_each_other_and_from_the_builtin_corpus():
    seen = set(corpora.load_builtin().texts["eng_Latn"])
    for task in corpora.BUILTIN_TASKS:
        texts = {s for t in corpora.load_builtin_task(task).texts["eng_Latn"] for s in t}
        assert not texts & seen, task
        seen |= texts


def test_builtin_task_errors():
    with pytest.raises(ValueError, match="no built-in task corpus 'physics'; built-in tasks: math, medicine"):
        corpora.load_corpus({"source": "builtin_task", "task": "physics"})
    with pytest.raises(ValueError, match="config.data.task must name the built-in task corpus"):
        corpora.load_corpus({"source": "builtin_task"})
    with pytest.raises(ValueError, match="single split"):
        corpora.load_corpus({"source": "builtin_task", "task": "math", "split": "dev"})
    with pytest.raises(corpora.MissingLanguageError, match="fra_Latn"):
        corpora.load_corpus({"source": "builtin_task", "task": "math", "languages": "eng_Latn,fra_Latn"})


# ------------------------------------------------------------------------------------------- configs

def test_task_data_config_takes_template_options_from_config_data():
    config = demo_config()
    config.data.max_length = 77
    config.data.exclude_template_tokens = False
    config.data.hf_token = "tok"
    t = task_data_config(config.data, "math", {"source": "builtin_task", "task": "math", "max_sentences": 3})
    assert (t.source, t.task, t.max_sentences, t.languages) == ("builtin_task", "math", 3, None)
    assert (t.max_length, t.exclude_template_tokens, t.hf_token) == (77, False, "tok")
    assert t.chat_template == config.data.chat_template and t.padding_side == config.data.padding_side
    with pytest.raises(ValueError, match="config.tasks.math: field\\(s\\) \\['max_length'\\] cannot be set per task"):
        task_data_config(config.data, "math", {"source": "builtin_task", "task": "math", "max_length": 9})
    with pytest.raises(ValueError, match="task name 'a/b'"):
        task_data_config(config.data, "a/b", {"source": "builtin_task", "task": "math"})
    with pytest.raises(ValueError, match="config.tasks.math must be a mapping"):
        task_data_config(config.data, "math", "builtin_task")


def test_check_config_checks_task_corpora():
    config = demo_config()
    config.tasks.math.source = "gsm8k"
    with pytest.raises(stages.StageError, match="tasks.math.source 'gsm8k'"):
        stages.check_config(config)
    config = demo_config()
    config.tasks.medicine.languages = "eng_latn"
    with pytest.raises(ValueError, match="eng_latn"):
        stages.check_config(config)
    assert stages.default_config().tasks.to_dict() == {}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_configs_collect_the_shipped_task_corpora(path):
    config = load_config(path)
    tasks = options.from_config(config).tasks
    assert set(tasks) == {"math", "medicine"}
    for name, data in tasks.items():
        assert data.source == "builtin_task" and data.task == name
        assert data.max_length == config.data.max_length and data.chat_template == config.data.chat_template
        assert corpora.load_corpus(data).languages == ["eng_Latn"]


# ------------------------------------------------------------------------------------------- collect

def task_config(tasks=TASK_SENTENCES, **analysis):
    config = demo_config()  # tiny random model, eng_Latn + fra_Latn, 6 sentences
    config.tasks = {n: {"source": "builtin_task", "task": n, "max_sentences": k} for n, k in tasks.items()}
    config.analysis.bootstrap.n = 50
    config.analysis.consistency_pairs = 100
    for k, v in analysis.items():
        config.analysis[k] = v
    return config


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A workdir after convert + collect with two task corpora; the collect stage's return value."""
    workdir = str(tmp_path_factory.mktemp("tasks"))
    convert_stage.run(task_config(), workdir)
    return workdir, collect_stage.run(task_config(), workdir)


@pytest.mark.slow
def test_collect_writes_one_store_per_task(collected):
    workdir, out = collected
    assert set(out) == {"routing", "tasks/math", "tasks/medicine"}
    assert set(out["routing"]) == {"eng_Latn", "fra_Latn"}
    main = store.read_meta(os.path.join(workdir, "routing"))
    fingerprints = {main["fingerprint"]}
    for task, n in TASK_SENTENCES.items():
        meta, data = store.read_store(os.path.join(workdir, "tasks", task))
        assert list(data) == ["eng_Latn"] and out[f"tasks/{task}"]["eng_Latn"]["sequences"] == n
        assert meta["task"] == task and meta["dataset"] == f"builtin_task:{task}"
        assert meta["data_source"]["task"] == task and meta["data_source"]["max_sentences"] == n
        assert data["eng_Latn"]["seq_ids"].tolist() == [r["id"] for r in read_raw(task)[:n]]
        assert meta["template"] == main["template"] and meta["tokenizer_sha256"] == main["tokenizer_sha256"]
        assert meta["data_source"]["count"] == "both"  # two-turn task data: the turns counted
        assert meta["checkpoint_sha256"] == main["checkpoint_sha256"] and meta["warning"] == main["warning"]
        np.testing.assert_allclose(data["eng_Latn"]["seq_topk_freq"].sum(-1), 3, atol=1e-5)  # top-3 model
        fingerprints.add(meta["fingerprint"])
    assert len(fingerprints) == 3
    assert "task" not in main and "task" not in main["data_source"] and "count" not in main["data_source"]


@pytest.mark.slow  # the collected module fixture (a tiny model, three stores)
def test_task_store_equals_a_main_store_of_the_same_corpus(collected, tmp_path):
    """A task corpus is collected exactly as config.data would be (same model, template, batching)."""
    workdir, _ = collected
    work = str(tmp_path / "w")
    shutil.copytree(wd.checkpoint_dir(workdir), wd.checkpoint_dir(work))
    shutil.copy(wd.convert_stamp(workdir), work)
    config = task_config({})
    config.data.source, config.data.task, config.data.max_sentences = "builtin_task", "math", 5
    config.data.languages = None
    config.collect.hidden_states = False  # task stores hold routing only (hidden states: the main corpus's)
    collect_stage.run(config, work)
    ref_meta, ref = store.read_store(os.path.join(work, "routing"))
    meta, got = store.read_store(os.path.join(workdir, "tasks", "math"))
    assert ref_meta["fingerprint"] == meta["fingerprint"]
    for key, v in ref["eng_Latn"].items():
        np.testing.assert_array_equal(got["eng_Latn"][key], v, err_msg=key)


@pytest.mark.slow
def test_rerun_resumes_every_store(collected, tmp_path):
    workdir, _ = collected
    work = str(tmp_path / "w")
    shutil.copytree(workdir, work)
    assert collect_stage.run(task_config(), work) == {}  # everything done: nothing loaded or collected

    shutil.rmtree(os.path.join(work, "tasks", "medicine"))
    math_npz = os.path.join(work, "tasks", "math", "eng_Latn.npz")
    kept = {p: os.stat(p).st_mtime_ns for p in (math_npz, os.path.join(work, "routing", "eng_Latn.npz"))}
    out = collect_stage.run(task_config(), work)
    assert list(out) == ["tasks/medicine"] and list(out["tasks/medicine"]) == ["eng_Latn"]
    assert {p: os.stat(p).st_mtime_ns for p in kept} == kept
    _, a = store.read_store(os.path.join(workdir, "tasks", "medicine"))
    _, b = store.read_store(os.path.join(work, "tasks", "medicine"))
    np.testing.assert_array_equal(a["eng_Latn"]["seq_topk_freq"], b["eng_Latn"]["seq_topk_freq"])


@pytest.mark.slow
def test_foreign_task_store_is_refused_before_loading(collected, tmp_path, monkeypatch):
    workdir, _ = collected
    work = str(tmp_path / "w")
    shutil.copytree(workdir, work)
    read = lambda p: open(os.path.join(work, p, "meta.json"), "rb").read()
    before = {p: read(p) for p in ("routing", "tasks/math", "tasks/medicine")}
    loads = []
    monkeypatch.setattr("moe_jax.convert.loader.load_params", lambda *a, **k: loads.append(a) or 1 / 0)
    match = "tasks/math holds routing statistics of another model or configuration"
    with pytest.raises(store.StoreMismatchError, match=match):
        collect_stage.run(task_config({"math": 6, "medicine": 4}), work)  # other sentences
    assert {p: read(p) for p in before} == before

    # template options come from config.data: changing them changes the task store's fingerprint too
    shutil.rmtree(os.path.join(work, "routing"))  # (the main store would be refused first)
    config = task_config()
    config.data.exclude_template_tokens = False
    with pytest.raises(store.StoreMismatchError, match=match):
        collect_stage.run(config, work)
    assert loads == [] and read("tasks/math") == before["tasks/math"]

    monkeypatch.undo()
    config = task_config({"math": 6, "medicine": 4})
    config.collect.overwrite = True
    out = collect_stage.run(config, work)
    assert set(out) == {"routing", "tasks/math"} and out["tasks/math"]["eng_Latn"]["sequences"] == 6
    assert read("tasks/medicine") == before["tasks/medicine"]


# ------------------------------------------------------------------------------------------- analyze

def direct_delta(workdir, task_store):
    """Eq. 3 straight from the stores: mean task frequency - mean generic (English) frequency."""
    _, main = store.read_store(os.path.join(workdir, "routing"))
    _, task = store.read_store(task_store)
    return task["eng_Latn"]["seq_topk_freq"].mean(0) - main["eng_Latn"]["seq_topk_freq"].mean(0)


def task_table(workdir):
    out = {}
    for r in tables.read_table(os.path.join(workdir, "analysis"), "experts_task"):
        out.setdefault(r["task"], {})[(r["layer"], r["expert"])] = (r["delta"], r["is_expert"])
    return out


@pytest.mark.slow
def test_analyze_uses_the_collected_task_stores(collected):
    workdir, _ = collected
    s = analysis_stage.run(task_config(), workdir)
    assert "task_experts" not in s["skipped"] and "experts_task" in s["tables"]
    info = s["task_experts"]
    assert info["stores_from"] == os.path.join(workdir, "tasks") and list(info["tasks"]) == ["math", "medicine"]
    rows = task_table(workdir)
    for task in TASK_SENTENCES:
        t = info["tasks"][task]
        assert t["dataset"] == f"builtin_task:{task}" and t["language"] == "eng_Latn"
        delta = direct_delta(workdir, os.path.join(workdir, "tasks", task))
        assert len(rows[task]) == delta.size
        for (l, e), (d, is_expert) in rows[task].items():
            assert d == pytest.approx(delta[l, e], abs=1e-6) and is_expert == (delta[l, e] > 0.3)
        assert t["n_task_experts"] == int((delta > 0.3).sum())


@pytest.mark.slow
def test_explicit_task_stores_win(collected, tmp_path):
    workdir, _ = collected
    path = os.path.join(workdir, "tasks", "medicine")
    s = analysis_stage.run(task_config(task_stores={"med_only": path}), workdir)
    assert s["task_experts"]["stores_from"] == "analysis.task_stores"
    assert list(s["task_experts"]["tasks"]) == ["med_only"]
    delta = direct_delta(workdir, path)
    for (l, e), (d, _) in task_table(workdir)["med_only"].items():
        assert d == pytest.approx(delta[l, e], abs=1e-6)


@pytest.mark.slow
def test_config_tasks_select_the_stores(collected, caplog):
    workdir, _ = collected
    s = analysis_stage.run(task_config({"medicine": 4, "law": 3}), workdir)  # math: not configured, law: not collected
    assert list(s["task_experts"]["tasks"]) == ["medicine"]
    assert "no task store" in caplog.text and "law" in caplog.text
    s = analysis_stage.run(task_config({}), workdir)
    assert "no task store in" in s["skipped"]["task_experts"] and "config.tasks" in s["skipped"]["task_experts"]
    assert not os.path.exists(os.path.join(workdir, "analysis", "experts_task.csv"))
    # the analysis section alone (no config.tasks): every store the collect stage wrote
    s = analysis_stage.run(task_config().analysis, workdir)
    assert list(s["task_experts"]["tasks"]) == ["math", "medicine"]


@pytest.mark.slow
def test_task_store_of_another_checkpoint_is_an_error(collected, tmp_path):
    workdir, _ = collected
    work = str(tmp_path / "w")
    shutil.copytree(workdir, work)
    meta_path = os.path.join(work, "tasks", "math", "meta.json")
    meta = store.read_meta(os.path.join(work, "tasks", "math"))
    meta["checkpoint_sha256"] = "0" * 64
    store.atomic_write_json(meta_path, meta)
    with pytest.raises(ValueError, match="task store 'math' .* was collected from another checkpoint"):
        analysis_stage.run(task_config(), work)
    os.remove(os.path.join(work, "tasks", "math", "eng_Latn.npz"))
    with pytest.raises(ValueError, match="tasks/math/eng_Latn.npz: language 'eng_Latn' is listed in meta.json but its "
                                         "file is missing; run the collect stage"):
        analysis_stage.run(task_config(), work)

"""Provenance chain: outputs record the digests of their inputs; a stale analysis is recomputed (the
registry runs the analyze stage first, said so in the log) or refused (a stage called directly), and a
report never shows another model's outputs (moe_jax.artifacts.lineage)."""

import json
import logging
import os
import shutil

import pytest

from moe_jax.artifacts import lineage
from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import analyze as analysis_stage
from moe_jax.io.storage import atomic_write_json, read_json
from moe_jax.pipeline import report as report_stage, steer as steer_stage
from tests.helpers.configs import small_config


def other_model():
    c = small_config()
    c.model.tiny.seed = 1
    return c


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A workdir through convert, collect, analyze and report for the tiny demo model (seed 0)."""
    work = str(tmp_path_factory.mktemp("prov") / "work")
    stages.run_stages(small_config(), work, "convert,collect,analyze,report")
    return work


@pytest.fixture
def work(reported, tmp_path):
    """A private copy of the reported workdir."""
    copy = str(tmp_path / "work")
    shutil.copytree(reported, copy)
    return copy


def test_analysis_and_report_record_their_inputs(reported):
    stamp = lineage.read_stamp(wd.analysis_dir(reported))
    assert stamp["inputs"] == {"routing store": {"path": "routing",
                                                 "digest": lineage.path_digest(wd.routing_dir(reported))}}
    meta = read_json(os.path.join(wd.routing_dir(reported), "meta.json"))
    assert stamp["inputs"]["routing store"]["digest"] == lineage.fingerprint(
        {"fingerprint": meta["fingerprint"], "files": {l: s["file_sha256"] for l, s in meta["languages"].items()}})
    assert analysis_stage.staleness(small_config(), reported) == []
    shown = lineage.read_stamp(wd.report_dir(reported))["inputs"]
    with open(os.path.join(wd.analysis_dir(reported), "summary.json"), "rb") as f:
        import hashlib
        assert shown["analysis summary"]["digest"] == hashlib.sha256(f.read()).hexdigest()
    assert shown["routing store"] == stamp["inputs"]["routing store"]
    assert shown["eval summary"] == {"path": "eval/summary.json", "digest": None}


@pytest.mark.slow  # collects another model
def test_report_after_the_store_changed_recomputes_the_analysis(work):
    """The probe: another model collected with overwrite, then --stages=report alone: the analysis of
    the previous model's store is computed again from the new store before the page is drawn."""
    old_table = open(os.path.join(wd.analysis_dir(work), "divergence.csv")).read()
    old_digest = lineage.path_digest(wd.routing_dir(work))
    c = other_model()
    c.collect.overwrite = True
    stages.run_stages(c, work, "convert,collect")
    new_digest = lineage.path_digest(wd.routing_dir(work))
    assert new_digest != old_digest
    assert analysis_stage.staleness(c, work) == ["routing store"]
    stages.run_stages(c, work, "report")
    assert lineage.read_stamp(wd.analysis_dir(work))["inputs"]["routing store"]["digest"] == new_digest
    assert open(os.path.join(wd.analysis_dir(work), "divergence.csv")).read() != old_table
    assert lineage.read_stamp(wd.report_dir(work))["inputs"]["routing store"]["digest"] == new_digest
    assert analysis_stage.staleness(c, work) == []


@pytest.mark.slow
def test_stale_analysis_refused_without_a_config_to_recompute_it(work):
    """report.run with no config (the analysis settings unknown) refuses a stale analysis, naming the
    changed input and the command; an analysis from before provenance was recorded is stale too."""
    stamp_path = os.path.join(wd.analysis_dir(work), lineage.STAMP)
    stamp = read_json(stamp_path)
    stamp["inputs"]["routing store"]["digest"] = "0" * 16  # computed from another store
    atomic_write_json(stamp_path, stamp)
    with pytest.raises(stages.StageError, match=r"computed from other inputs than the current ones \(changed: "
                                                r"routing store\); run the analyze stage again first: .*"
                                                r"--stages=analyze,report"):
        report_stage.run(None, work)
    os.remove(stamp_path)
    assert analysis_stage.staleness(None, work) == [f"no {lineage.STAMP} (computed before provenance was recorded)"]
    with pytest.raises(stages.StageError, match=r"run the analyze stage again first: .*--stages=analyze,report"):
        report_stage.run(small_config(), work)  # a whole config too: a stage never runs another
    stages.run_stages(small_config(), work, "report")  # the registry runs analyze first, then the report
    assert analysis_stage.staleness(None, work) == []


@pytest.mark.parametrize("stage", [report_stage, steer_stage], ids=["report", "steer"])
def test_a_stage_called_directly_refuses_a_stale_analysis(work, stage):
    """report.run / steer.run (steer.bands "auto") on an analysis of another routing store: a clear
    error naming the command, not a silent recompute (only the registry schedules the analyze stage)."""
    name = stage.__name__.rsplit(".", 1)[-1]
    stamp_path = os.path.join(wd.analysis_dir(work), lineage.STAMP)
    stamp = read_json(stamp_path)
    stamp["inputs"]["routing store"]["digest"] = "0" * 16  # computed from another store
    atomic_write_json(stamp_path, stamp)
    with pytest.raises(stages.StageError, match=r"computed from other inputs than the current ones \(changed: "
                                                r"routing store\); run the analyze stage again first: python -m "
                                                rf"moe_jax.launch .*--workdir={work} --stages=analyze,{name}"):
        stage.run(small_config(), work)
    assert read_json(stamp_path) == stamp  # not computed again


@pytest.mark.slow
def test_changed_analysis_settings_recompute_before_the_report(work, caplog):
    """--stages=report after the analysis settings changed: the registry's preflight decides it once and
    runs the analyze stage first, logged as such; the page shows the fresh analysis."""
    c = small_config()
    c.analysis.split_half_repeats = 3
    assert analysis_stage.staleness(c, work) == ["config"]
    with caplog.at_level(logging.INFO, logger="moe_jax"):
        stages.run_stages(c, work, "report")
    assert ("analyze: scheduled before report: its outputs were computed from other inputs than the current ones "
            "(changed: config)") in caplog.text
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")] == ["stage analyze",
                                                                                                "stage report"]
    assert read_json(os.path.join(wd.analysis_dir(work), "summary.json"))["config"]["split_half_repeats"] == 3
    assert analysis_stage.staleness(c, work) == []
    assert lineage.read_stamp(wd.report_dir(work))["inputs"]["analysis summary"]["digest"] == lineage.path_digest(
        os.path.join(wd.analysis_dir(work), "summary.json"))


def test_report_refuses_evaluation_records_of_another_model(work):
    """eval/ written for another model: the report (and its preflight) refuse, naming the directory,
    the differing field and the command that redoes the evaluation."""
    ident = {"model": "tiny-random-qwen2_moe", "model_source": {"tiny": other_model().model.tiny.to_dict()},
             "dtype": "float32", "options": {}}
    atomic_write_json(os.path.join(wd.eval_dir(work), "manifest.json"),
                      {"format": "moe_jax.eval_records/1", "identity": ident, "fingerprint": "x",
                       "files": {"belebele/eng_Latn": {}}})
    expected = (rf"{wd.eval_dir(work)} holds outputs of another model \(model_source.tiny.seed: 1 \(recorded\) != 0 "
                rf"\(now\)\)\n.*run: .*--stages=eval,report --config.eval.overwrite=True")
    with pytest.raises(stages.StageError, match=expected):
        report_stage.run(small_config(), work)
    with pytest.raises(stages.StageError, match=r"\[report\] " + expected):
        stages.run_stages(small_config(), work, "report")
    # eval running first in the same run redoes them (its own preflight then asks for eval.overwrite)
    with pytest.raises(stages.StageError) as e:
        stages.preflight(small_config(), work, ["eval", "report"])
    assert str(e.value).count("\n") == 1 and "[eval]" in str(e.value) and "eval.overwrite=True" in str(e.value)


def test_digests_follow_content_not_volatile_fields(work):
    """A store's digest changes with its data files' recorded sha256, not with timings or code version."""
    path = os.path.join(wd.routing_dir(work), "meta.json")
    meta = read_json(path)
    d0 = lineage.path_digest(wd.routing_dir(work))
    meta["code_version"] = "other"
    for s in meta["languages"].values():
        s["seconds"] = 0.0
    atomic_write_json(path, meta)
    assert lineage.path_digest(wd.routing_dir(work)) == d0
    meta["languages"]["fra_Latn"]["file_sha256"] = "f" * 64
    atomic_write_json(path, meta)
    assert lineage.path_digest(wd.routing_dir(work)) != d0
    assert lineage.path_digest(os.path.join(work, "nothing")) is None
    assert json.loads(json.dumps(lineage.describe({"x": path}, work))) == {
        "x": {"path": "routing/meta.json", "digest": lineage.file_sha256(path)}}

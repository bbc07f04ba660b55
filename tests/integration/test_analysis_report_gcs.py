"""The analyze and report stages with a ``gs://`` workdir (local GCS emulator): the same tables,
summary and figures as a local run of the same inputs; ``analysis/`` and ``report/`` trusted only
through their ``provenance.json`` (written last, recording each file's digest); staleness, damage
and an unfinished run detected on ``gs://`` as locally."""

import dataclasses
import json
import os

import ml_collections
import pytest

from moe_jax.artifacts import lineage, stage_outputs
from moe_jax.io import integrity, storage
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import analyze as analysis_stage
from moe_jax.analysis import tables
from moe_jax.analysis.synthetic import CONFIG_NAME, SyntheticSpec, write_demo, write_synthetic_store
from moe_jax.errors import StageError
from moe_jax.pipeline import registry as stages, report as report_stage

SPEC = SyntheticSpec(moe_layer_ids=tuple(range(1, 13)), n_sequences=12)
# the tests that damage or change a workdir each write their own: fewer languages, fewer objects to read
SMALL = SyntheticSpec(languages=tuple(l for l in SPEC.languages if l[0] in ("eng_Latn", "fra_Latn", "hin_Deva",
                                                                           "tha_Thai")),
                      moe_layer_ids=SPEC.moe_layer_ids, n_sequences=8)


# slow: the tests over the module's full-size run (~10 CPU s to build) and those that analyse twice; the
# fast lane keeps a damaged and a missing analysis on gs:// and the foreign-files refusal


def _config(paths):
    c = ml_collections.ConfigDict({"analysis": analysis_stage.default_config(), "report": report_stage.default_config()})
    c.analysis.bootstrap.n = 100
    c.analysis.consistency_pairs = 200
    c.analysis.accuracy = paths["accuracy"]  # on gs:// for the remote run
    return c  # task stores: found under <workdir>/tasks (a listing of gs:// for the remote run)


def _demo(workdir):
    paths = write_demo(workdir, SPEC)
    c = _config(paths)
    analysis_stage.run(c, workdir)
    return c, report_stage.run(c, workdir)


def _report(c, workdir):
    """``--stages=report`` as the registry runs it: a stale analysis makes it run the analyze stage
    first (``registry.schedule``); returns the stages run."""
    names, problems = stages.schedule(c, workdir, ["report"])
    assert not problems
    for name in names:
        stages.get_stage(name)(c, workdir)
    return names


def _files(workdir, sub):
    """{path under workdir/sub: bytes} of every file or object, the workdir written as <workdir> (and
    in HTML without the <wbr> break points the page puts into long tokens: they depend on its length)."""
    root = storage.join(workdir, sub)
    out = {}
    for rel in storage.walk_files(root):
        data = storage.read_bytes(storage.join(root, rel))
        out[rel] = (data.replace(b"<wbr>", b"") if rel.endswith(".html") else data).replace(workdir.encode(),
                                                                                           b"<workdir>")
    return out


@pytest.fixture(scope="module")
def runs(gcs_bucket, tmp_path_factory):
    """The same synthetic inputs analysed and reported in a local workdir and a gs:// one."""
    local = str(tmp_path_factory.mktemp("local"))
    remote = f"{gcs_bucket}/analysis-report-{os.getpid()}"
    _demo(local)
    config, page = _demo(remote)
    return local, remote, config, page


@pytest.mark.slow
def test_gcs_analysis_equals_local(runs):
    local, remote, _, _ = runs
    want, got = _files(local, wd.ANALYSIS), _files(remote, wd.ANALYSIS)
    assert sorted(got) == sorted(want)
    assert {f"{t}.{e}" for t in analysis_stage.TABLES for e in ("csv", "json")} | {"summary.json", lineage.STAMP} \
        == set(got)
    differ = [name for name in want if got[name] != want[name]]
    # the config fingerprint covers analysis.accuracy, a path: the only difference, in provenance.json
    assert differ == [lineage.STAMP]
    stamps = [json.loads(d[lineage.STAMP]) for d in (want, got)]
    assert stamps[0]["inputs"] == stamps[1]["inputs"]  # paths relative to the workdir, the same digests
    # summary.json names its workdir (its "store"), so its digest is the one that differs
    assert [n for n in stamps[0]["files"] if stamps[0]["files"][n] != stamps[1]["files"][n]] == ["summary.json"]
    assert sorted(stamps[1]["files"]) == sorted(set(got) - {lineage.STAMP})
    summary = stage_outputs.read_analysis(remote)
    assert summary["store"] == wd.routing_dir(remote) and summary["skipped"] == {}
    assert summary["accuracy_source"] == "analysis.accuracy" and "math" in summary["task_experts"]["tasks"]


@pytest.mark.slow
def test_gcs_report_equals_local(runs):
    local, remote, _, page = runs
    assert page == storage.join(wd.report_dir(remote), "index.html")
    want, got = _files(local, wd.REPORT), _files(remote, wd.REPORT)
    assert sorted(got) == sorted(want)
    pngs = [n for n in got if n.endswith(".png")]
    assert len(pngs) >= 10 and all(got[n].startswith(b"\x89PNG") for n in pngs)
    assert "csv/analysis_divergence.csv" in got and 'href="csv/analysis_divergence.csv"' in got["index.html"].decode()
    assert {n for n in want if got[n] != want[n]} <= {lineage.STAMP}
    stamp = json.loads(got[lineage.STAMP])
    assert sorted(stamp["files"]) == sorted(set(got) - {lineage.STAMP})  # written last, naming everything
    assert stamp["inputs"]["analysis summary"]["path"] == "analysis/summary.json"
    local_inputs = json.loads(want[lineage.STAMP])["inputs"]
    assert {k: v["path"] for k, v in stamp["inputs"].items()} == {k: v["path"] for k, v in local_inputs.items()}
    assert stamp["inputs"]["routing store"] == local_inputs["routing store"]


@pytest.mark.slow
def test_gcs_preflight_and_staleness_on_a_current_run(runs):
    _, remote, config, _ = runs
    assert analysis_stage.staleness(None, remote) == []
    assert analysis_stage.staleness(config, remote) == []
    assert analysis_stage.preflight(config, remote) == []
    assert report_stage.preflight(config, remote) == []
    assert lineage.stale(lineage.read_stamp(wd.report_dir(remote)), remote) == []


def test_gcs_preflight_names_what_is_missing(gcs_dir):
    c = _config({"accuracy": storage.join(gcs_dir, "none.json")})
    problems = analysis_stage.preflight(c, gcs_dir)
    assert any(f"analysis.accuracy '{gcs_dir}/none.json' is not a file" in p for p in problems)
    assert any(f"no routing store at {gcs_dir}/routing" in p for p in problems)
    assert any(f"no analysis at {gcs_dir}/analysis" in p for p in report_stage.preflight(c, gcs_dir))


@pytest.fixture
def analysed(gcs_dir):
    """A fresh gs:// workdir with a finished analysis (and its config)."""
    paths = write_demo(gcs_dir, SMALL)
    c = _config(paths)
    analysis_stage.run(c, gcs_dir)
    return gcs_dir, c


@pytest.mark.slow
def test_gcs_staleness_after_the_store_changes(analysed):
    work, c = analysed
    write_synthetic_store(wd.routing_dir(work), dataclasses.replace(SMALL, seed=1))
    assert analysis_stage.staleness(None, work) == ["routing store"]
    assert analysis_stage.staleness(c, work) == ["routing store"]
    with pytest.raises(StageError, match="changed: routing store"):
        report_stage.run(None, work)  # no config to compute it again: refused, never shown
    assert _report(c, work) == ["analyze", "report"]  # with the config: analysed again first
    assert analysis_stage.staleness(c, work) == []
    assert lineage.read_stamp(wd.report_dir(work))["inputs"]["routing store"]["digest"] == \
        lineage.path_digest(wd.routing_dir(work))


def test_gcs_damaged_outputs_are_not_trusted(analysed):
    work, c = analysed
    adir = wd.analysis_dir(work)
    summary = storage.join(adir, "summary.json")
    storage.atomic_write_bytes(summary, storage.read_bytes(summary).replace(b'"pivot"', b'"pivot" ', 1))
    assert analysis_stage.staleness(None, work) == ["analysis/summary.json (changed after it was written)"]
    with pytest.raises(StageError, match="summary.json"):
        report_stage.run(None, work)
    assert stages.schedule(c, work, ["report"]) == (["analyze", "report"], [])
    analysis_stage.run(c, work)  # computed again
    assert analysis_stage.staleness(c, work) == []
    table = storage.join(adir, "divergence.json")
    storage.atomic_write_bytes(table, storage.read_bytes(table)[:-10])
    with pytest.raises(integrity.DigestMismatchError, match=f"{table} has"):
        report_stage.run(c, work)
    storage.remove(table)
    with pytest.raises(integrity.DigestMismatchError, match=f"{table} is recorded in provenance.json but missing"):
        stage_outputs.read_analysis(work, "divergence.json")
    stamp = lineage.read_stamp(adir)  # an analysis from before files were recorded: read as it was then
    del stamp["files"]
    storage.atomic_write_json(storage.join(adir, lineage.STAMP), stamp)
    assert analysis_stage.staleness(c, work) == [] and stage_outputs.read_analysis(work)["pivot"] == "eng_Latn"


@pytest.mark.slow
def test_gcs_unfinished_analysis_is_not_trusted(analysed, monkeypatch):
    """A run killed after its first table: the old provenance.json was removed first and no new one
    was written, so no reader trusts analysis/ (the report refuses it or computes it again)."""
    work, c = analysed
    adir = wd.analysis_dir(work)
    written = []

    def dies_after_one(*args):
        if written:
            raise KeyboardInterrupt("killed")
        written.append(write(*args))
        return written[-1]

    write = tables.write_table
    monkeypatch.setattr(tables, "write_table", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        analysis_stage.run(c, work)
    monkeypatch.undo()
    assert written and not storage.exists(storage.join(adir, lineage.STAMP))
    assert analysis_stage.staleness(None, work) == [f"no {lineage.STAMP} (computed before provenance was recorded)"]
    with pytest.raises(integrity.UnpublishedError, match="did not finish"):
        stage_outputs.read_analysis(work)
    with pytest.raises(StageError, match="run the analyze stage again first"):
        report_stage.run(None, work)
    storage.atomic_write_bytes(storage.join(adir, "stray.csv"), b"a,b\n")  # no analysis wrote it
    assert _report(c, work) == ["analyze", "report"]  # computes it again, then shows it
    assert analysis_stage.staleness(c, work) == [] and lineage.read_stamp(adir)["files"]
    copied = storage.listdir(storage.join(wd.report_dir(work), "csv"))
    assert "analysis_divergence.csv" in copied and "analysis_stray.csv" not in copied


@pytest.mark.slow
def test_gcs_synthetic_demo_config_names_the_bucket(runs, tmp_path):
    _, remote, _, _ = runs
    text = storage.read_bytes(storage.join(remote, CONFIG_NAME)).decode()
    assert f"HERE = {remote!r}" in text and "__file__" not in text
    copy = tmp_path / CONFIG_NAME  # launch reads a local config: a copy works from anywhere
    copy.write_text(text)
    ns = {"__file__": str(copy)}
    exec(compile(text, str(copy), "exec"), ns)
    cfg = ns["get_config"]()
    assert cfg.analysis.accuracy == f"{remote}/accuracy.json" and storage.isfile(cfg.analysis.accuracy)
    assert cfg.analysis.task_stores["math"] == wd.task_store_dir(remote, "math")


def test_gcs_synthetic_demo_refuses_foreign_files(gcs_dir):
    storage.atomic_write_bytes(storage.join(gcs_dir, "accuracy.json"), b'{"eng_Latn": 1.0}')
    with pytest.raises(FileExistsError, match="does not hold the planted accuracies"):
        write_demo(gcs_dir, SMALL)
    assert storage.walk_files(gcs_dir) == ["accuracy.json"]  # nothing written before refusing

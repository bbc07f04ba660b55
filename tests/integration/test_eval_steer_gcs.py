"""Eval and steer outputs on a ``gs://`` workdir (local GCS emulator): the records / manifest layer
(same bytes as a local directory, resume after a kill between a record and its manifest, damage
named with the command that redoes it), task data and steering files read from ``gs://``."""

import json
import os

import pytest

from moe_jax.io import integrity, storage
from moe_jax.artifacts import eval_records as rec
from moe_jax.eval import steering_file, tasks
from moe_jax.artifacts.routing_store import StoreMismatchError
from moe_jax.steering.spec import SteeringSpec

# the test running the eval and steer stages on a gs:// workdir is slow; the records layer's tests are not

IDENT = {"model": "tiny", "options": {"limit": 2}}
PAIRS = [("belebele", "eng_Latn"), ("belebele", "fra_Latn"), ("mgsm", "eng_Latn")]


def _records(task, lang, salt=0):
    return [{"task": task, "language": lang, "lm_eval_task": f"{task}_{lang}", "doc_id": i,
             "extracted": "A", "target": "A" if (i + salt) % 2 else "B", "correct": bool((i + salt) % 2),
             "response": "ü\u2028é"}  # non-ASCII and a Unicode line separator stay inside one JSON line
            for i in range(3)]


def _fill(eval_dir):
    rec.open_records(eval_dir, IDENT, "fp1")
    for task, lang in PAIRS:
        records = _records(task, lang)
        rec.write_records(eval_dir, task, lang, records, rec.score(records))


@pytest.fixture
def local_and_gcs(tmp_path, gcs_dir):
    """The same records written under a local workdir and a ``gs://`` one."""
    local, remote = str(tmp_path / "work" / "eval"), storage.join(gcs_dir, "eval")
    _fill(local)
    _fill(remote)
    return local, remote


def test_same_objects_as_a_local_directory(local_and_gcs):
    local, remote = local_and_gcs
    names = storage.walk_files(local)
    assert names == storage.walk_files(remote) == sorted(
        ["manifest.json", "belebele/eng_Latn.jsonl", "belebele/fra_Latn.jsonl", "mgsm/eng_Latn.jsonl"])
    for name in names:
        assert storage.read_bytes(storage.join(remote, name)) == storage.read_bytes(os.path.join(local, name)), name
    for task, lang in PAIRS:
        assert rec.is_done(remote, task, lang)
        assert rec.read_records(remote, task, lang) == _records(task, lang)
    # a reopen with the same fingerprint keeps every finished pair
    rec.open_records(remote, IDENT, "fp1")
    assert all(rec.is_done(remote, t, l) for t, l in PAIRS)


def _kill_before_final_manifest(monkeypatch):
    """Makes the next ``write_records`` die after its record object, before the manifest that lists it."""
    real = integrity.atomic_write_json

    def write_json(p, obj):
        if obj["files"] and storage.exists(rec.record_path(os.path.dirname(p), "mgsm", "eng_Latn")) \
                and "mgsm/eng_Latn" in obj["files"]:
            raise KeyboardInterrupt("killed")  # the final manifest write of mgsm/eng_Latn
        real(p, obj)
    monkeypatch.setattr(integrity, "atomic_write_json", write_json)


def test_kill_between_record_and_manifest(gcs_dir, monkeypatch):
    eval_dir = storage.join(gcs_dir, "eval")
    rec.open_records(eval_dir, IDENT, "fp1")
    for task, lang in PAIRS[:2]:
        rec.write_records(eval_dir, task, lang, _records(task, lang), rec.score(_records(task, lang)))
    with monkeypatch.context() as m:
        _kill_before_final_manifest(m)
        with pytest.raises(KeyboardInterrupt):
            rec.write_records(eval_dir, "mgsm", "eng_Latn", _records("mgsm", "eng_Latn"), {"accuracy": 0.5})
    path = rec.record_path(eval_dir, "mgsm", "eng_Latn")
    assert storage.exists(path)  # the object is there, complete ...
    assert not rec.is_done(eval_dir, "mgsm", "eng_Latn")  # ... but unlisted: the rerun redoes it
    with pytest.raises(ValueError, match=f"{path}: .* is not finished in {eval_dir}/manifest.json; run the eval "
                                         f"stage again .*--workdir={gcs_dir} --stages=eval"):
        rec.read_records(eval_dir, "mgsm", "eng_Latn")
    assert all(rec.is_done(eval_dir, t, l) for t, l in PAIRS[:2])  # the finished pairs are kept

    # the rerun: reopen, redo the unlisted pair
    rec.open_records(eval_dir, IDENT, "fp1")
    rec.write_records(eval_dir, "mgsm", "eng_Latn", _records("mgsm", "eng_Latn"), {"accuracy": 0.5})
    assert rec.read_records(eval_dir, "mgsm", "eng_Latn") == _records("mgsm", "eng_Latn")


def test_a_rewrite_killed_midway_never_pairs_the_old_entry_with_new_bytes(gcs_dir, monkeypatch):
    eval_dir = storage.join(gcs_dir, "steer", "soft-x")
    _fill(eval_dir)
    with monkeypatch.context() as m:
        _kill_before_final_manifest(m)
        with pytest.raises(KeyboardInterrupt):  # new bytes (salt 1) for a listed pair
            rec.write_records(eval_dir, "mgsm", "eng_Latn", _records("mgsm", "eng_Latn", 1), {"accuracy": 0.1})
    assert "mgsm/eng_Latn" not in rec.read_manifest(eval_dir)["files"]  # dropped before the rewrite
    assert not rec.is_done(eval_dir, "mgsm", "eng_Latn")
    with pytest.raises(ValueError, match=f"not finished.*--workdir={gcs_dir} --stages=steer"):
        rec.read_records(eval_dir, "mgsm", "eng_Latn")


def test_damage_is_named_with_the_repairing_command(local_and_gcs):
    _, remote = local_and_gcs
    workdir = os.path.dirname(remote)
    path = rec.record_path(remote, "belebele", "fra_Latn")
    data = storage.read_bytes(path)
    storage.atomic_write_bytes(path, data.replace(b'"correct": true', b'"correct": fals'))  # same size
    assert not rec.is_done(remote, "belebele", "fra_Latn") and rec.is_done(remote, "belebele", "eng_Latn")
    with pytest.raises(ValueError, match=f"{path} has {len(data)} bytes with sha256 .* were written \\(changed "
                                         f"after writing\\); run the eval stage again to redo it: .*"
                                         f"--workdir={workdir} --stages=eval"):
        rec.read_records(remote, "belebele", "fra_Latn")
    storage.remove(path)
    with pytest.raises(ValueError, match=f"{path} is missing; run the eval stage"):
        rec.read_records(remote, "belebele", "fra_Latn")
    storage.atomic_write_bytes(storage.join(remote, "manifest.json"), b"{not json")
    with pytest.raises(ValueError, match=f"{remote}/manifest.json is not valid JSON.*delete it to evaluate"):
        rec.read_records(remote, "belebele", "eng_Latn")


def test_other_fingerprint_refused_then_replaced(local_and_gcs):
    _, remote = local_and_gcs
    with pytest.raises(StoreMismatchError, match="--config.eval.overwrite=True"):
        rec.open_records(remote, IDENT, "fp2")
    assert rec.is_done(remote, "mgsm", "eng_Latn")
    before = {p: storage.read_bytes(storage.join(remote, p)) for p in storage.walk_files(remote)}
    opened = rec.open_records(remote, IDENT, "fp2", overwrite=True)  # deletes nothing until a replacement is written
    assert {p: storage.read_bytes(storage.join(remote, p)) for p in storage.walk_files(remote)} == before
    rec.write_records(remote, "mgsm", "eng_Latn", _records("mgsm", "eng_Latn"), {"accuracy": 0.5}, opened=opened)
    assert list(rec.read_manifest(remote)["files"]) == ["mgsm/eng_Latn"]  # only the replacement is listed
    assert rec.read_manifest(remote)["fingerprint"] == "fp2"


def test_task_data_and_steering_files_on_gcs(gcs_dir, tmp_path, monkeypatch):
    from moe_jax.models.config import ModelConfig
    from moe_jax.convert.tiny import tiny_hf_config

    spec = tasks.get_task("belebele")
    demo = os.path.join(tasks.DEMO_DIR, "belebele")
    name = sorted(os.listdir(demo))[0]
    storage.upload_tree(demo, storage.join(gcs_dir, "data"))
    found = tasks.local_file(spec, name.rsplit(".", 1)[0], storage.join(gcs_dir, "data"))
    assert found == storage.join(gcs_dir, "data", name)
    assert tasks.read_rows(found) == tasks.read_rows(os.path.join(demo, name))
    assert tasks.check_local_file(spec, found) > 0
    monkeypatch.setenv("MOE_JAX_CACHE", str(tmp_path / "cache"))
    staged = tasks.local_data_file(found)
    assert staged.startswith(str(tmp_path / "cache")) and open(staged, "rb").read() == open(os.path.join(demo, name), "rb").read()
    code = name.rsplit(".", 1)[0]
    (cfg,) = tasks.task_configs(spec, code, found)  # what lm-eval's datasets loader is given: the staged copy
    assert cfg["dataset_kwargs"]["data_files"]["test"] == staged and cfg["dataset_path"] == "json"

    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))  # MoE layers (0, 2), 8 experts
    s = SteeringSpec("bias", ((0, 1, 1.0), (2, 3, 0.5)), lam=2.0, name="b")
    p = storage.join(gcs_dir, "steer.json")
    storage.atomic_write_bytes(p, s.to_json().encode())
    assert SteeringSpec.load(p) == s
    iv = steering_file.load_intervention(p, cfg)
    assert iv.bias[0, 1] == 2.0 and iv.bias[1, 3] == 1.0 and iv.bias.sum() == 3.0
    with pytest.raises(FileNotFoundError, match=f"steering file '{gcs_dir}/none.json' does not exist"):
        steering_file.load_intervention(storage.join(gcs_dir, "none.json"), cfg)
    storage.atomic_write_bytes(p, b"{bad")
    with pytest.raises(ValueError, match=f"steering file '{p}' is not valid JSON"):
        steering_file.load_intervention(p, cfg)


# -- the eval and steer stages with a gs:// workdir --------------------------------------------------

def _stage_config():
    from tests.helpers.configs import steer_config as _config

    c = _config()
    c.model.tiny.overrides = {}  # the default tiny model (3 layers): fast
    c.tasks = {"math": dict(c.tasks["math"])}
    c.data.max_sentences = 8
    c.data.languages = "eng_Latn,fra_Latn"  # the languages evaluated: a small store
    c.steer.update(methods="soft", controls="", bands="0-2")  # explicit band: no analyze stage needed
    c.steer.learned.enabled = False
    return c


@pytest.fixture
def stage_runs(gcs_bucket, tmp_path_factory):
    """A workdir converted and collected locally, uploaded to gs://, then eval + steer run on the gs://
    copy (killed once in the eval stage between a record and the manifest, resumed) and on the local
    one: ``(config, local workdir, gs:// workdir, pairs evaluated by the resumed run, cwd)``."""
    from moe_jax.pipeline import registry as stages
    from moe_jax.pipeline import evaluation

    config = _stage_config()
    base = tmp_path_factory.mktemp("stages")
    local, remote = str(base / "work"), f"{gcs_bucket}/stages-{os.getpid()}"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MOE_JAX_CACHE", str(base / "cache"))  # the staged tokenizer: not the user's cache
        m.chdir(base)  # a URL taken for a local path would show up here as ./gs:
        stages.run_stages(config, local, "convert,collect")
        storage.upload_tree(local, remote)
        with m.context() as k:  # the eval stage dies after its second record, before the manifest lists it
            k.setattr(integrity, "atomic_write_json", _dies_listing(integrity.atomic_write_json, "belebele/fra_Latn"))
            with pytest.raises(KeyboardInterrupt):
                stages.run_stages(config, remote, "eval")
        evaluated, real = [], evaluation.evaluate_pair
        m.setattr(evaluation, "evaluate_pair", lambda lm, it, *a: evaluated.append(it["language"]) or real(lm, it, *a))
        stages.run_stages(config, remote, "eval,steer")
        m.setattr(evaluation, "evaluate_pair", real)
        stages.run_stages(config, local, "eval,steer")
    return config, local, remote, evaluated, base


def _dies_listing(write_json, key):
    def write(p, obj):
        if key in obj.get("files", {}):
            raise KeyboardInterrupt(f"killed before {p} lists {key}")
        write_json(p, obj)
    return write


def _stages_on_gcs_write_what_a_local_workdir_holds(stage_runs):
    _, local, remote, evaluated, cwd = stage_runs
    # the resumed eval redid only the pair whose record the kill left unlisted; steer then ran its
    # baseline and one setting over both languages
    assert evaluated == ["fra_Latn"] + ["eng_Latn", "fra_Latn"] * 2
    for d in ("eval", "steer"):
        names = storage.walk_files(os.path.join(local, d))
        assert names == storage.walk_files(storage.join(remote, d))
        assert len([n for n in names if n.endswith(".jsonl")]) == (2 if d == "eval" else 4)
        for name in names:
            mine, theirs = storage.read_bytes(storage.join(remote, d, name)), storage.read_bytes(os.path.join(local, d, name))
            if name == "summary.json" and d == "steer":  # timing and compile counts differ between runs
                mine, theirs = ({k: v for k, v in json.loads(x).items() if k not in ("seconds", "compiles",
                                "settings_that_compiled")} for x in (mine, theirs))
            if name == "provenance.json" and d == "steer":  # records summary.json's sha256: differs with it
                mine, theirs = ({k: v for k, v in json.loads(x).items() if k != "files"} for x in (mine, theirs))
            assert mine == theirs, f"{d}/{name}"
    assert not os.path.exists(os.path.join(cwd, "gs:"))


def _damaged_record_on_gcs_is_named_and_redone(stage_runs):
    from moe_jax.pipeline import registry as stages
    from moe_jax.pipeline import evaluation

    config, local, remote, _, _ = stage_runs
    out = storage.join(remote, "eval")
    path = rec.record_path(out, "belebele", "eng_Latn")
    good = storage.read_bytes(path)
    storage.atomic_write_bytes(path, good[:-5])
    with pytest.raises(ValueError, match=f"{path} has .* were written .*--workdir={remote} --stages=eval"):
        rec.read_records(out, "belebele", "eng_Latn")
    evaluated, real = [], evaluation.evaluate_pair
    with pytest.MonkeyPatch.context() as m:
        m.setattr(evaluation, "evaluate_pair", lambda lm, it, *a: evaluated.append(it["language"]) or real(lm, it, *a))
        stages.run_stages(config, remote, "eval")
    assert evaluated == ["eng_Latn"] and storage.read_bytes(path) == good
    assert rec.read_records(out, "belebele", "eng_Latn") == rec.read_records(os.path.join(local, "eval"), "belebele",
                                                                             "eng_Latn")


def _lm_eval_model_from_a_gcs_checkpoint(stage_runs, tmp_path, monkeypatch):
    """``--model moe_jax --model_args pretrained=gs://...,steering=gs://...`` scores as the local checkpoint does."""
    from lm_eval.api.instance import Instance

    from moe_jax.artifacts import layout as wd
    from moe_jax.eval.harness import MoeJaxLM

    _, local, remote, _, _ = stage_runs
    monkeypatch.setenv("MOE_JAX_CACHE", str(tmp_path / "cache"))
    spec = json.loads(storage.read_bytes(storage.join(remote, "steer", "settings.json")))[0]  # the soft setting
    for work in (remote, local):
        storage.atomic_write_json(storage.join(work, "steer.json"), spec)
    reqs = [Instance("loglikelihood", {}, ("The answer is", " B"), 0)]
    scores = []
    for work in (remote, local):
        lm = MoeJaxLM(pretrained=wd.checkpoint_dir(work), steering=storage.join(work, "steer.json"), batch_size=1)
        scores.append(lm.loglikelihood(reqs, disable_tqdm=True))
    assert os.listdir(tmp_path / "cache")  # the remote tokenizer was staged into the test's cache
    assert scores[0] == scores[1]


def _preflight_on_gcs_refuses_other_options_and_missing_inputs(stage_runs):
    from moe_jax.pipeline import registry as stages

    config, _, remote, _, _ = stage_runs
    other = _stage_config()
    other.eval.max_gen_toks = 5  # other scoring options than the records on gs:// hold
    with pytest.raises(stages.PreflightError) as e:
        stages.preflight(other, remote, ["eval", "steer"])
    msg = str(e.value)
    assert f"[eval] {remote}/eval holds records of another model or scoring options" in msg
    assert f"[steer] {remote}/steer/baseline holds records" in msg and "--config.steer.overwrite=True" in msg
    other = _stage_config()
    other.eval.steering = storage.join(remote, "none.json")
    with pytest.raises(stages.PreflightError, match=f"eval.steering '{remote}/none.json' is not a file"):
        stages.preflight(other, remote, ["eval"])
    empty = storage.join(remote, "empty")  # no checkpoint, no stores: each named, nothing written
    with pytest.raises(stages.PreflightError) as e:
        stages.preflight(config, empty, ["steer"])
    assert f"({empty} was not created)" in str(e.value)
    assert f"no routing store at {empty}/routing;" in str(e.value) and f"no converted checkpoint at {empty}/checkpoint" \
        in str(e.value)
    assert not storage.exists(empty)


@pytest.mark.slow
def test_eval_and_steer_stages_on_a_gcs_workdir(stage_runs, tmp_path, monkeypatch):
    """One test over the module's stage runs (built once; tests of one module may run on two workers):
    outputs equal a local workdir's, preflight on gs://, lm-eval from a gs:// checkpoint, then a
    damaged record named and redone (last: it rewrites a record)."""
    _stages_on_gcs_write_what_a_local_workdir_holds(stage_runs)
    _preflight_on_gcs_refuses_other_options_and_missing_inputs(stage_runs)
    _lm_eval_model_from_a_gcs_checkpoint(stage_runs, tmp_path, monkeypatch)
    _damaged_record_on_gcs_is_named_and_redone(stage_runs)


def test_auto_band_read_only_as_the_analysis_publishes_it(gcs_dir):
    from moe_jax.artifacts import lineage
    from moe_jax.artifacts import layout as wd
    from moe_jax.errors import StageError
    from moe_jax.pipeline.steer import parse_bands

    adir = wd.analysis_dir(gcs_dir)
    with pytest.raises(StageError, match="has no middle band; run the 'analyze' stage first"):
        parse_bands("auto", gcs_dir)  # no analysis at all
    data = json.dumps({"middle_band": {"decoder_layers": [2, 5]}}).encode()
    storage.atomic_write_bytes(storage.join(adir, "summary.json"), data)
    with pytest.raises(integrity.UnpublishedError, match="provenance.json is missing"):
        parse_bands("auto", gcs_dir)  # an analyze run killed before its provenance.json
    lineage.write_stamp(adir, {}, "fp", {"summary.json": integrity.entry_of(data)})
    assert parse_bands("auto", gcs_dir) == ((2, 5),)
    storage.atomic_write_bytes(storage.join(adir, "summary.json"), data.replace(b"5", b"7"))
    with pytest.raises(integrity.DigestMismatchError, match=f"{adir}/summary.json has"):
        parse_bands("auto", gcs_dir)  # changed after the analysis published it

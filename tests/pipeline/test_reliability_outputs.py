"""Refused runs change nothing, and later stages read eval and steer outputs only through their verified
records: options (and the steering file's contents) checked before the first write, a refused
``overwrite`` that keeps every record, steer redoing exactly the pairs whose task data changed, a
refused sweep that keeps ``steer/settings.json``, a report that refuses deleted records or an edited
summary, naming the stage and the command."""

import hashlib
import json
import os
import shutil

import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import layout as wd
from moe_jax.io.storage import atomic_write_json
from moe_jax.artifacts import eval_records as rec, stage_outputs
from moe_jax.eval.tasks import DEMO_DIR
from moe_jax.errors import StageError
from moe_jax.pipeline import report as report_stage
from moe_jax.report import plots
from moe_jax.artifacts.routing_store import StoreMismatchError
from moe_jax.pipeline.steer import BASELINE
from tests.helpers.configs import demo_config
from tests.helpers.no_render import no_render
from tests.helpers.workdirs import snapshot

pytestmark = pytest.mark.slow  # one workdir through every stage (about 1.5 min on 2 cores), shared by the module
LANGS = ("eng_Latn", "fra_Latn")


def config():
    """The demo with the default 2-layer tiny model, one task store, Belebele in 2 languages x 2 items and a
    one-setting sweep (soft steering, no controls)."""
    c = demo_config()
    c.model.tiny.overrides = {}
    c.tasks = {"math": c.tasks.math}
    c.analysis.accuracy = {}
    c.eval.source, c.eval.tasks, c.eval.languages, c.eval.limit = "demo", "belebele", ",".join(LANGS), 2
    c.eval.max_gen_toks = 4
    c.steer.methods, c.steer.controls, c.steer.learned.enabled = "soft", "", False
    c.steer.n_boot, c.steer.probe_sentences = 100, 2
    return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A workdir through every stage."""
    work = str(tmp_path_factory.mktemp("reliable") / "work")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "png_bytes", no_render)  # the report's figures are not what these tests check
        stages.run_stages(config(), work, "convert,collect,eval,analyze,steer,report")
    return work


@pytest.fixture
def work(finished, tmp_path):
    copy = str(tmp_path / "work")
    shutil.copytree(finished, copy)
    return copy


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def bad_steering_files(root):
    """{what: path} of steering files that cannot be applied to any model."""
    out = {}
    for what, text in {"not JSON": "{bias: 1", "unknown field": json.dumps({"bais": 1.0}),
                       "unknown mode": json.dumps({"mode": "sometimes"}),
                       "non-finite bias": json.dumps({"bias": [[1.0, float("nan")]]})}.items():
        out[what] = os.path.join(root, what.replace(" ", "_") + ".json")
        with open(out[what], "w") as f:
            f.write(text)
    return out


# (1) a refused overwrite deletes nothing ---------------------------------------------------------------

@pytest.mark.parametrize("field,value", [("max_gen_toks", 0), ("limit", 0), ("limit", -1), ("batch_size", 0),
                                         ("steering", "not JSON"), ("steering", "unknown field"),
                                         ("steering", "unknown mode"), ("steering", "non-finite bias")])
def test_refused_overwrite_keeps_records_and_summary_byte_identical(finished, tmp_path, field, value):
    c = config()
    c.eval.overwrite = True
    c.eval[field] = bad_steering_files(str(tmp_path))[value] if field == "steering" else value
    before = snapshot(finished)
    with pytest.raises(stages.PreflightError, match=rf"\[eval\] eval.{field}"):
        stages.run_stages(c, finished, "eval")
    assert snapshot(finished) == before


def test_invalid_steer_limit_refused_before_anything_is_written(finished):
    c = config()
    c.steer.limit, c.steer.overwrite = 0, True
    before = snapshot(finished)
    with pytest.raises(stages.PreflightError, match=r"\[steer\] steer.limit is 0; give a whole number >= 1"):
        stages.run_stages(c, finished, "steer")
    assert snapshot(finished) == before


def test_overwrite_replaces_only_the_records_it_rewrites(work):
    """The replacement's first record replaces the manifest; until then the old one stands, and a record it
    does not rewrite stays on disk (unlisted) rather than being deleted up front."""
    out = wd.eval_dir(work)
    old = rec.read_manifest(out)
    opened = rec.open_records(out, dict(old["identity"], options={}), "another", overwrite=True)
    assert rec.read_manifest(out) == old and opened["files"] == {}
    assert not rec.is_done(out, "belebele", "eng_Latn", opened) and rec.is_done(out, "belebele", "eng_Latn")
    fra = open(rec.record_path(out, "belebele", "fra_Latn"), "rb").read()
    rec.write_records(out, "belebele", "eng_Latn", [{"correct": True}], {"accuracy": 1.0}, opened=opened)
    now = rec.read_manifest(out)
    assert now["fingerprint"] == "another" and list(now["files"]) == ["belebele/eng_Latn"]
    assert open(rec.record_path(out, "belebele", "fra_Latn"), "rb").read() == fra


# (6) invalid options refused before eval/manifest.json, so the corrected run is not blocked ---------------

@pytest.mark.parametrize("field,value,message", [
    ("max_gen_toks", 0, "eval.max_gen_toks is 0; give a whole number >= 1"),
    ("max_gen_toks", 10 ** 6, "eval.max_gen_toks 1000000 leaves no room for the prompt in the model's context of 256"),
    ("limit", 0, "eval.limit is 0; give a whole number >= 1 \\(or None for every item\\)"),
    ("limit", -1, "eval.limit is -1"),
    ("steering", "unknown field", "eval.steering: steering file .*unknown field\\(s\\) \\['bais'\\]"),
    ("steering", "not JSON", "eval.steering: steering file .* is not valid JSON")])
def test_invalid_eval_options_refused_before_the_manifest(work, tmp_path, field, value, message):
    shutil.rmtree(wd.eval_dir(work))
    c = config()
    c.eval.tasks, c.eval.languages = "belebele,mgsm", {"belebele": "en", "mgsm": "en"}  # mgsm generates
    c.eval[field] = bad_steering_files(str(tmp_path))[value] if field == "steering" else value
    with pytest.raises(stages.PreflightError, match=message):
        stages.run_stages(c, work, "eval")
    assert not os.path.exists(wd.eval_dir(work))
    stages.preflight(config(), work, ["eval"])  # the corrected run passes its checks without overwrite


def test_steering_file_of_the_wrong_shape_refused_against_the_checkpoint(work, tmp_path):
    path = str(tmp_path / "steer.json")
    with open(path, "w") as f:
        json.dump({"bias": [[0.0] * 3] * 2}, f)
    c = config()
    c.eval.steering = path
    with pytest.raises(stages.PreflightError, match=r"field 'bias' has shape \[2, 3\]; the model needs"):
        stages.preflight(c, work, ["eval"])


def test_manifest_of_a_failed_run_without_records_does_not_block_the_next(work):
    """A manifest listing no finished record (a run that failed before its first one) holds nothing to keep."""
    out = wd.eval_dir(work)
    shutil.rmtree(out)
    os.makedirs(out)
    atomic_write_json(os.path.join(out, rec.MANIFEST), {"format": rec.FORMAT, "fingerprint": "failed", "files": {},
                                                        "identity": {"options": {"max_gen_toks": 0}}})
    stages.preflight(config(), work, ["eval"])
    rec.open_records(out, {"options": {}}, "corrected")
    assert rec.read_manifest(out)["fingerprint"] == "corrected"


# (2) steer re-evaluates exactly the pairs scored on other task data --------------------------------------

def test_steer_reevaluates_exactly_the_stale_pairs(work, tmp_path, capsys):
    data = tmp_path / "belebele"
    shutil.copytree(os.path.join(DEMO_DIR, "belebele"), data)
    fra = next(p for p in data.iterdir() if p.name.startswith("fra_Latn"))
    rows = [json.loads(line) for line in fra.read_text(encoding="utf-8").splitlines() if line.strip()]
    for r in rows:  # other answers: the French baseline scored on the old file no longer holds
        r["correct_answer_num"] = str(1 + int(r["correct_answer_num"]) % 4)
    fra.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    c = config()
    c.eval.source, c.eval.data_dirs = "local", {"belebele": str(data)}
    steer_dir = wd.steer_dir(work)
    settings = [d for d in sorted(os.listdir(steer_dir)) if os.path.isdir(os.path.join(steer_dir, d))]
    assert BASELINE in settings and len(settings) == 2
    eng = {s: sha256(rec.record_path(os.path.join(steer_dir, s), "belebele", "eng_Latn")) for s in settings}
    capsys.readouterr()
    stages.run_stages(c, work, "steer")
    said = [line for line in capsys.readouterr().out.splitlines() if "scored on other task data" in line]
    assert sorted(said) == sorted(f"steer: {os.path.join(steer_dir, s)} belebele fra_Latn: scored on other task "
                                  f"data than {fra} holds now; evaluated again" for s in settings)
    for s in settings:
        sdir = os.path.join(steer_dir, s)
        assert sha256(rec.record_path(sdir, "belebele", "eng_Latn")) == eng[s]  # unchanged data: kept
        entry = rec.read_manifest(sdir)["files"]["belebele/fra_Latn"]
        assert entry["data_sha256"] == sha256(fra)
        targets = [r["target"] for r in rec.read_records(sdir, "belebele", "fra_Latn")]
        letters = "ABCD"
        assert targets == [letters[int(r["correct_answer_num"]) - 1] for r in rows[:len(targets)]]


# (3) a refused sweep leaves the earlier sweep as it was ---------------------------------------------------

def test_refused_steer_run_keeps_settings_and_the_report_inputs(work, monkeypatch):
    """The setting's records were written for other targets (as after a change of steer.statistic): the run
    is refused before ``settings.json`` (or anything else) is rewritten, and the report still shows the old sweep."""
    sdir = next(os.path.join(wd.steer_dir(work), d) for d in os.listdir(wd.steer_dir(work)) if d.startswith("soft-"))
    manifest = rec.read_manifest(sdir)
    atomic_write_json(os.path.join(sdir, rec.MANIFEST), dict(manifest, fingerprint="other targets"))
    before = snapshot(wd.steer_dir(work))
    with pytest.raises(StoreMismatchError, match=rf"steer setting {os.path.basename(sdir)}: .*steer.overwrite=True"):
        stages.run_stages(config(), work, "steer")
    assert snapshot(wd.steer_dir(work)) == before
    atomic_write_json(os.path.join(sdir, rec.MANIFEST), manifest)
    monkeypatch.setattr(plots, "png_bytes", no_render)
    stages.run_stages(config(), work, "report")


# (4) the report reads eval and steer outputs only through their verified records ---------------------------

def edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def append_line(path):
    with open(path, "a") as f:
        f.write("\n")


# what is done to a finished workdir -> (the problem named, the stage whose command redoes it)
DAMAGE = {
    "deleted eval record": (lambda w: os.remove(rec.record_path(wd.eval_dir(w), "belebele", "fra_Latn")),
                            r"fra_Latn.jsonl \(missing\)", "eval"),
    "edited eval summary": (lambda w: edit_json(os.path.join(wd.eval_dir(w), "summary.json"),
                                                lambda s: s["rows"][0].update(accuracy=0.99)),
                            r"summary.json has \d+ bytes with sha256 \w+, but \d+ bytes .* were written", "eval"),
    "changed steer record": (lambda w: append_line(rec.record_path(os.path.join(wd.steer_dir(w), BASELINE), "belebele",
                                                                   "eng_Latn")),
                             r"eng_Latn.jsonl \(changed after it was written\)", "steer"),
    "edited steer settings": (lambda w: edit_json(os.path.join(wd.steer_dir(w), "settings.json"),
                                                  lambda s: s[0].update(targets=s[0]["targets"][:1])),
                              r"settings.json has \d+ bytes", "steer"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_report_refuses_outputs_their_records_no_longer_support(work, damage):
    change, problem, stage = DAMAGE[damage]
    change(work)
    report = snapshot(wd.report_dir(work))
    expected = rf"{problem}.*; run the {stage} stage again to redo it: .*--workdir={work} --stages={stage}"
    with pytest.raises(stages.PreflightError, match=r"\[report\] .*" + expected):
        stages.run_stages(config(), work, "report")
    with pytest.raises(StageError, match=expected):  # also when the stage is called directly
        report_stage.run(config(), work)
    assert snapshot(wd.report_dir(work)) == report


def test_eval_summary_read_through_its_record(finished):
    summary = stage_outputs.read_eval(finished)
    assert [(r["task"], r["language"]) for r in summary["rows"]][:2] == [("belebele", l) for l in LANGS]

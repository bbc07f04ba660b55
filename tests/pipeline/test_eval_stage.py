"""The eval stage on the shipped demo sets with a tiny random model: records, summary and intervals,
resume after a SIGKILL, a damaged record file, a refused foreign workdir, truncated prompts."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import convert as convert_stage
from moe_jax.artifacts import eval_records as rec
from moe_jax.pipeline import eval as eval_stage, evaluation
from moe_jax.artifacts.routing_store import StoreMismatchError
from tests.helpers.configs import eval_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
Z = 1.959963984540054
PAIRS = [("belebele", "eng_Latn"), ("belebele", "deu_Latn"), ("mgsm", "eng_Latn"), ("mgsm", "fra_Latn")]


def files(eval_dir):
    return {k: open(rec.record_path(eval_dir, *k), "rb").read() for k in PAIRS}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("eval"))
    config = eval_config()
    convert_stage.run(config, work)
    summary = eval_stage.run(config, work)
    return work, config, summary


def wilson(k, n):
    p = k / n
    c = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    h = Z * (p * (1 - p) / n + Z * Z / (4 * n * n)) ** 0.5 / (1 + Z * Z / n)
    return c - h, c + h


@pytest.mark.slow  # convert + eval of the tiny model
def test_records_and_summary(evaluated):
    work, _, summary = evaluated
    out = wd.eval_dir(work)
    rows = list(csv.DictReader(open(os.path.join(out, "summary.csv"))))
    assert [(r["task"], r["language"], r["code"]) for r in rows] == [
        ("belebele", "eng_Latn", "eng_Latn"), ("belebele", "deu_Latn", "deu_Latn"), ("belebele", "mean_non_english", ""),
        ("mgsm", "eng_Latn", "en"), ("mgsm", "fra_Latn", "fr"), ("mgsm", "mean_non_english", "")]
    by = {(r["task"], r["language"]): r for r in rows}
    for task, lang in PAIRS:
        records = rec.read_records(out, task, lang)
        assert [r["doc_id"] for r in records] == [0, 1, 2]  # limit 3: the first three items
        assert all(r["task"] == task and r["language"] == lang and len(r["prompt_sha256"]) == 64 for r in records)
        k = sum(r["correct"] for r in records)
        row = by[(task, lang)]
        assert float(row["accuracy"]) == pytest.approx(k / 3) and row["n"] == "3" and row["data"] == "demo"
        assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx(wilson(k, 3), abs=1e-12)
        if task == "belebele":
            assert [r["choices"] for r in records] == [["A", "B", "C", "D"]] * 3 and all(len(r["loglikelihoods"]) == 4 for r in records)
            assert all(r["correct"] == (r["extracted"] == r["target"]) for r in records)
            assert [r["target"] for r in records] == ["C", "B", "C"]  # correct_answer_num 3, 2, 3 of the demo set
        else:
            assert [r["target"] for r in records] == ["7", "60", "12"] and all("response" in r for r in records)
    assert float(by[("mgsm", "mean_non_english")]["accuracy"]) == pytest.approx(float(by[("mgsm", "fra_Latn")]["accuracy"]))
    assert any("DEMO DATA" in w for w in summary["warnings"]) and any("RANDOM WEIGHTS" in w for w in summary["warnings"])
    assert summary["languages"]["mgsm/fra_Latn"] == "fr"


@pytest.mark.slow
def test_resume_after_kill_and_damaged_file(evaluated, tmp_path):
    work, config, _ = evaluated
    expected = files(wd.eval_dir(work))
    run = tmp_path / "run"
    shutil.copytree(wd.checkpoint_dir(work), wd.checkpoint_dir(str(run)))
    shutil.copy(wd.convert_stamp(work), run)
    # the child stops after its first (task, language) file, so that the kill lands mid-task
    script = (f"import sys, time; sys.path.insert(0, {ROOT!r})\n"
              "from tests.helpers.configs import eval_config\n"
              "from moe_jax.artifacts import eval_records as records\nfrom moe_jax.pipeline import eval as stage\n"
              "write = records.write_records\n"
              "def slow(*a, **k):\n    write(*a, **k); time.sleep(600)\n"
              "records.write_records = slow\n"
              f"stage.run(eval_config(), {str(run)!r})\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    out = wd.eval_dir(str(run))
    first = rec.record_path(out, *PAIRS[0])
    deadline = time.time() + 300
    while not (rec.read_manifest(out) or {}).get("files") and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list(rec.read_manifest(out)["files"]) == ["belebele/eng_Latn"], proc.stderr.read().decode()[-3000:]
    before = os.stat(first)
    eval_stage.run(eval_config(), str(run))
    after = os.stat(first)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not redone
    assert files(out) == expected  # equal to an uninterrupted run

    damaged = rec.record_path(out, *PAIRS[3])
    with open(damaged, "r+b") as f:
        f.truncate(10)
    assert not rec.is_done(out, *PAIRS[3]) and rec.is_done(out, *PAIRS[2])
    eval_stage.run(eval_config(), str(run))
    assert files(out) == expected

    other = eval_config()
    other.eval.max_gen_toks = 5  # other task options: refused, records untouched
    with pytest.raises(StoreMismatchError, match="--config.eval.overwrite=True"):
        eval_stage.run(other, str(run))
    assert files(out) == expected


def test_config_errors(tmp_path):
    c = eval_config()
    c.eval.batchsize = 4
    with pytest.raises(ValueError, match="config.eval.batchsize is not a known field .*did you mean config.eval.batch_size"):
        eval_stage.options(c)
    c = eval_config()
    c.eval.languages = {"belebele": "ko"}
    with pytest.raises(ValueError, match="task 'belebele': no local data for language 'kor_Hang' in .*demo/belebele"):
        evaluation.plan(eval_stage.options(c))  # belebele has kor_Hang, the demo set does not
    c.eval.tasks, c.eval.languages = "mgsm", {"mgsm": "ko"}
    with pytest.raises(ValueError, match="task 'mgsm' has no language 'ko' \\(kor_Hang\\); its languages: bn"):
        evaluation.plan(eval_stage.options(c))
    c.eval.source = "tape"
    with pytest.raises(ValueError, match="eval.source 'tape' is not one of"):
        eval_stage.options(c)


@pytest.mark.slow
def test_long_prompts_are_truncated_and_counted(evaluated, tmp_path):
    work, _, _ = evaluated
    shutil.copytree(wd.checkpoint_dir(work), wd.checkpoint_dir(str(tmp_path)))
    shutil.copy(wd.convert_stamp(work), tmp_path)
    c = eval_config()
    c.eval.tasks = "belebele"
    c.eval.languages = "eng_Latn"
    c.eval.limit = 2
    c.eval.max_length = 16  # every Belebele passage is longer: each of the 2 x 4 choice requests is cut
    summary = eval_stage.run(c, str(tmp_path))
    assert summary["rows"][0]["truncated"] == 8 and summary["rows"][0]["n"] == 2


def test_analysis_takes_belebele_accuracies_from_the_eval_stage(tmp_path):
    from moe_jax.pipeline import analyze as analysis_stage
    from moe_jax.analysis.synthetic import SyntheticSpec, write_demo

    spec = SyntheticSpec()
    write_demo(str(tmp_path), spec)
    acc = spec.accuracy()
    rows = [{"task": "belebele", "language": l, "accuracy": a} for l, a in acc.items()]
    rows += [{"task": "belebele", "language": "mean_non_english", "accuracy": 0.0},
             {"task": "mgsm", "language": "deu_Latn", "accuracy": 0.99}]
    os.makedirs(wd.eval_dir(str(tmp_path)))
    with open(os.path.join(wd.eval_dir(str(tmp_path)), "summary.json"), "w") as f:
        json.dump({"rows": rows}, f)
    summary = analysis_stage.run(None, str(tmp_path))  # no analysis.accuracy given
    assert summary["accuracy_source"].startswith("eval stage: belebele accuracies in ")
    assert sorted(summary["correlation"]["languages"]) == sorted(l for l in acc if l != "eng_Latn")
    points = {r["language"]: r["accuracy"] for r in json.load(open(os.path.join(wd.analysis_dir(str(tmp_path)), "correlation_points.json")))}
    assert points == {l: a for l, a in acc.items() if l != "eng_Latn"}
    summary = analysis_stage.run({"analysis": {"accuracy": {"fr": 0.5, "de": 0.4, "zh": 0.3}}}, str(tmp_path))
    assert summary["accuracy_source"] == "analysis.accuracy"

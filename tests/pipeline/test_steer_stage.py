"""The steer stage end to end on the tiny random model and the shipped demo eval sets: one compile
for the whole sweep, paired statistics recomputed from the records, resume after a kill."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import eval_records as rec
from moe_jax.errors import StageError
from moe_jax.steering import paired
from moe_jax.pipeline.steer import BASELINE, run as steer

pytestmark = pytest.mark.slow  # a whole steering sweep, killed in a subprocess and resumed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers.configs import OVERRIDES, steer_config
# the routing store of the sweep's two languages only (the demo collects twelve): the baseline, the language
# control and the learned fit read no other
LANGUAGES = "eng_Latn,fra_Latn"
CLI_OVERRIDES = [f"--config.{k}={v}" for k, v in OVERRIDES.items()] + [f"--config.data.languages={LANGUAGES}"]


def sweep_config():
    c = steer_config()
    c.data.languages = LANGUAGES
    return c


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A workdir after convert, collect and analyze (the inputs of steer), and the config."""
    work = str(tmp_path_factory.mktemp("steer") / "work")
    config = sweep_config()
    stages.run_stages(config, work, "convert,collect,analyze")
    return config, work


@pytest.fixture(scope="module")
def swept(prepared, tmp_path_factory):
    """The sweep, killed (SIGKILL) in a subprocess once the baseline and one setting are done, then
    resumed in this process: ``(summary, workdir, {finished setting: record mtime at the kill})``."""
    config, work = prepared
    killed = str(tmp_path_factory.mktemp("steer_run") / "work")
    shutil.copytree(work, killed)
    out = os.path.join(killed, "steer")
    cmd = [sys.executable, "-m", "moe_jax.launch", f"--config={os.path.join(ROOT, 'configs', 'demo.py')}",
           f"--workdir={killed}", "--stages=steer", *CLI_OVERRIDES]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished, deadline = {}, time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        dirs = [d for d in os.listdir(out) if os.path.isdir(os.path.join(out, d))] if os.path.isdir(out) else []
        done = [d for d in dirs if len((rec.read_manifest(os.path.join(out, d)) or {}).get("files", {})) == 2]
        if len(done) >= 2:
            proc.send_signal(signal.SIGKILL)
            finished = {d: os.stat(rec.record_path(os.path.join(out, d), "belebele", "eng_Latn")).st_mtime_ns
                        for d in done}
            break
        time.sleep(0.1)
    proc.wait()
    assert finished, "the sweep finished or stalled before it could be killed"
    return steer(config, killed), killed, finished


def test_sweep_compiles_once_for_every_setting(swept):
    summary = swept[0]
    settings = summary["settings"]
    assert settings[0] == BASELINE and len(settings) >= 7
    assert {s.split("-")[0] for s in settings[1:]} == {"soft", "hard", "mask", "learned"}  # method first
    for control in ("-random-", "-early-", "-language-"):  # the band ends at the last layer: no late band
        assert any(control in s for s in settings), control
    # the resumed run compiles for the first setting it evaluates, and never again
    compiled = [s for s in settings if summary["compiles"][s] > 0]
    assert len(compiled) == 1, summary["compiles"]


def test_paired_rows_recomputed_from_the_records(swept):
    summary, work, _ = swept
    out = os.path.join(work, "steer")
    with open(os.path.join(out, "summary.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(summary["rows"]) == (len(summary["settings"]) - 1) * 3  # 2 languages + the pool
    for row in rows:
        if row["language"] == "non_english":
            continue
        base = {r["doc_id"]: r["correct"] for r in rec.read_records(os.path.join(out, BASELINE), row["task"],
                                                                      row["language"])}
        mine = {r["doc_id"]: r["correct"] for r in rec.read_records(os.path.join(out, row["setting"]), row["task"],
                                                                      row["language"])}
        keys = sorted(base)
        b = np.array([base[k] for k in keys])
        s = np.array([mine[k] for k in keys])
        assert int(row["n"]) == len(keys) == 2
        assert float(row["delta"]) == pytest.approx(s.mean() - b.mean())
        assert (int(row["b"]), int(row["c"])) == (int(np.sum(s & ~b)), int(np.sum(b & ~s)))
        assert float(row["p_mcnemar"]) == pytest.approx(paired.mcnemar_exact(b, s)[2])
        assert float(row["ci_low"]) <= float(row["delta"]) <= float(row["ci_high"])


def test_settings_change_routing_and_are_recorded(swept):
    summary, work, _ = swept
    rows = {r["setting"]: r for r in summary["rows"]}
    for name, r in rows.items():
        if name.startswith(("hard", "mask")):
            assert r["topk_changed"] > 0.05, name  # forcing / masking must move the top-k
        assert 0.0 <= r["topk_changed"] <= 1.0
    with open(os.path.join(work, "steer", "settings.json")) as f:
        settings = json.load(f)
    assert [s["name"] for s in settings] == summary["settings"][1:]
    assert all(s["provenance"]["statistic"] == "topk_freq" for s in settings if s["provenance"]["rule"] != "learned")


def test_bad_input(prepared):
    config, work = prepared
    bad = config.copy_and_resolve_references()
    bad.steer.taus = (0.99,)
    with pytest.raises(StageError, match=r"no expert selected in band .* largest Delta there is"):
        steer(bad, work)
    bad = config.copy_and_resolve_references()
    bad.steer.bands = "3-x"
    with pytest.raises(StageError, match=r"bad band '3-x'"):
        steer(bad, work)
    bad = config.copy_and_resolve_references()
    bad.steer.task = "poetry"
    with pytest.raises(StageError, match=r"no routing store at .*tasks/poetry"):
        steer(bad, work)


def test_resume_after_kill_mid_sweep(swept):
    summary, work, finished = swept
    out = os.path.join(work, "steer")
    assert BASELINE in finished
    for d, mtime in finished.items():  # finished settings are not redone
        assert os.stat(rec.record_path(os.path.join(out, d), "belebele", "eng_Latn")).st_mtime_ns == mtime
        assert summary["compiles"][d] == 0
    assert not [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")]
    for name in summary["settings"]:
        assert len(rec.read_manifest(os.path.join(out, name))["files"]) == 2

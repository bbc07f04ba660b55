"""The offline demo end to end through the real command line: on a local workdir and, unchanged, on a
``gs://`` workdir (a local GCS emulator). The gs:// run is killed during the conversion, the collect
stage and the eval stage, and resumed: nothing half-published is ever visible, no temp object is left,
and its outputs equal the local run's bit for bit (JSON normalised as in test_faults). Then a local
rerun (in-process) finds everything done and a foreign model is refused. One test: the local run is both the demo
under test and the gs:// run's reference (the suite runs the demo once per workdir kind)."""

import json
import logging
import os
import uuid

import numpy as np
import pytest

from tests.helpers import cli_runs
from tests.helpers.configs import load_config
from tests.helpers.paths import REPO_ROOT
from moe_jax.errors import PreflightError
from moe_jax.io import storage
from moe_jax.artifacts import routing_store as store
from moe_jax.pipeline import registry as stages
from tests.helpers.workdirs import digests, strip_volatile

pytestmark = pytest.mark.slow  # the whole demo through the command line, local and on gs://, killed and resumed

DEMO = os.path.join(REPO_ROOT, "configs", "demo.py")
CACHE = []  # the test's Hugging Face home (the JAX compilation cache is the session's: conftest.py)


def start(workdir, *extra):
    """The demo (``configs/demo.py``) on ``workdir``; every launch of the test shares one Hugging Face
    home (outside the workdirs) and the session's compilation cache."""
    return cli_runs.start(["--config=configs/demo.py", f"--workdir={workdir}", *extra], {"HF_HOME": CACHE[0]})


def _npz_written(routing):
    return any(n.endswith(".npz") for n in storage.listdir(routing))


def check_demo_outputs(root, proc):
    """The demo's outputs under ``root`` (a local dir or a gs:// prefix) and its console output."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "WARNING: RANDOM WEIGHTS" in proc.stdout and "meaningless" in proc.stdout
    root = str(root)

    meta, data = store.read_store(storage.join(root, "routing"))
    langs = ["arb_Arab", "ben_Beng", "deu_Latn", "eng_Latn", "fra_Latn", "hin_Deva", "jpn_Jpan", "rus_Cyrl",
             "spa_Latn", "swh_Latn", "tha_Thai", "zho_Hans"]
    assert list(data) == langs
    assert meta["warning"].startswith("RANDOM WEIGHTS") and meta["model_type"] == "qwen2_moe"
    # configs/demo.py: 8 layers, layer 1 dense (mlp_only_layers), 8 experts top-3.
    assert meta["moe_layer_ids"] == [0, 2, 3, 4, 5, 6, 7] and meta["num_experts"] == 8 and meta["top_k"] == 3
    for key in ("checkpoint_sha256", "tokenizer_sha256", "template", "code_version", "fingerprint", "dataset"):
        assert meta[key], key
    for lang in langs:
        a, s = data[lang], meta["languages"][lang]
        assert a["seq_mean_probs"].shape == (42, len(meta["moe_layer_ids"]), 8) and s["sequences"] == 42
        assert a["token_totals"][0] == s["counted_tokens"] == a["seq_lengths"].sum() < s["tokens"]  # template excluded
        np.testing.assert_allclose(a["seq_topk_freq"].sum(-1), 3, atol=1e-5)
        assert a["seq_ids"].tolist() == data["eng_Latn"]["seq_ids"].tolist()
    assert "ILLUSTRATIVE PLACEHOLDERS" in meta["warning"]  # the demo's accuracies are invented
    assert meta["hidden_states"]["logit_lens"] and data["fra_Latn"]["seq_hidden"].shape[:2] == (42, 9)  # 8 layers + 1
    assert summary_path_has_representations(root)
    for task in ("math", "medicine"):  # the shipped English task corpora, collected like the main corpus
        tmeta, tdata = store.read_store(storage.join(root, "tasks", task))
        assert list(tdata) == ["eng_Latn"] and tmeta["task"] == task and tmeta["template"] == meta["template"]
        assert tdata["eng_Latn"]["seq_mean_probs"].shape[1:] == (len(meta["moe_layer_ids"]), 8)
        assert tmeta["languages"]["eng_Latn"]["sequences"] >= 40

    summary = storage.read_json(storage.join(root, "analysis", "summary.json"))
    assert summary["skipped"] == {}  # every analysis ran, so every report section is there
    assert list(summary["task_experts"]["tasks"]) == ["math", "medicine"]
    assert len(summary["correlation"]["languages"]) == 11  # the non-pivot languages with a (placeholder) accuracy
    assert summary["accuracy_source"] == "analysis.accuracy"  # the placeholders, not the eval stage's
    # the eval stage on the shipped DEMO sets (two languages per task), flagged as a random model on demo items
    ev = storage.read_json(storage.join(root, "eval", "summary.json"))
    assert [(r["task"], r["language"]) for r in ev["rows"]] == [
        ("mgsm", "eng_Latn"), ("mgsm", "zho_Hans"), ("mgsm", "mean_non_english"), ("gmmlu_medical", "eng_Latn"),
        ("gmmlu_medical", "deu_Latn"), ("gmmlu_medical", "mean_non_english"), ("belebele", "eng_Latn"),
        ("belebele", "fra_Latn"), ("belebele", "mean_non_english")]
    assert [r["n"] for r in ev["rows"] if r["language"] != "mean_non_english"] == [5, 5, 7, 7, 5, 5]
    assert any("DEMO DATA" in w for w in ev["warnings"]) and "evaluation accuracies are those of a random model" in proc.stdout
    # the steering sweep: baseline, soft, hard, mask, a random control and a learned bias, one compile
    st = storage.read_json(storage.join(root, "steer", "summary.json"))
    assert [n.split("-")[0] for n in st["settings"]] == ["baseline", "soft", "hard", "mask", "soft", "learned"]
    assert "-random-" in st["settings"][4] and st["settings_that_compiled"] == ["baseline"]
    assert "every accuracy change of this sweep is noise" in proc.stdout
    page = storage.read_bytes(storage.join(root, "report", "index.html")).decode()
    for section in ("Divergence from the pivot", "Routing entropy", "Token consistency", "Language similarity",
                    "Expert specialisation", "Evaluation accuracy", "Correlation with accuracy",
                    "Hidden representations", "Router steering",
                    "Downloads", "Run metadata"):
        assert f">{section}<" in page, section
    assert "DEMO DATA" in page
    for png in ("correlation_scatter", "correlation_by_layer", "experts_task_math", "experts_task_medicine",
                "accuracy_mgsm", "accuracy_gmmlu_medical", "accuracy_belebele", "steer_heatmap_belebele",
                "steer_controls_belebele", "steer_targets", "representation_alignment", "logit_lens"):
        assert storage.size(storage.join(root, "report", f"{png}.png")) > 0 and f"{png}.png" in page, png


def summary_path_has_representations(root):
    """The analysis measured hidden representations and their correlation with the placeholder accuracies."""
    rep = storage.read_json(storage.join(root, "analysis", "summary.json"))["representations"]
    return rep["states"] == 9 and len(rep["correlation"]["languages"]) == 11


def _leaves(x, key=""):
    """{path of a JSON leaf: value}."""
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else None
    if items is None:
        return {key: x}
    return {k: v for name, sub in items for k, v in _leaves(sub, f"{key}/{name}").items()}


def kill_and_resume(work, warm):
    """The demo on ``work`` (gs://) killed three times, then run to the end: ``(final run, what each kill left)``.
    ``warm()`` is called after the first kill (which compiles nothing) and before the runs that compile."""
    ckpt, routing, records = (storage.join(work, d) for d in ("checkpoint", "routing", "eval"))
    seen = {}
    # 1. killed while the conversion writes its objects (no moe_jax.json yet: nothing a reader trusts)
    cli_runs.kill_when(start(work), lambda: any(f.startswith("params/") for f in storage.walk_files(ckpt)),
              "the conversion's objects")
    seen["convert"] = storage.walk_files(ckpt)
    warm()
    # 2. killed once the collect stage has written its first language object
    cli_runs.kill_when(start(work), lambda: any(n.endswith(".npz") for n in storage.listdir(routing)),
              "the first routing language object")
    seen["collect"] = (sorted(n for n in storage.listdir(routing) if n.endswith(".npz")),
                       sorted((store.read_meta(routing) or {}).get("languages", {})))
    seen["collect_store"] = store.read_store(routing)  # what a reader sees after the kill: listed and intact
    # 3. killed once the eval stage has written its first record object
    cli_runs.kill_when(start(work), lambda: any(f.endswith(".jsonl") for f in storage.walk_files(records)),
              "the first eval record")
    return cli_runs.finish(start(work)), seen


def test_demo_end_to_end(tmp_path, gcs_bucket, caplog):
    CACHE[:] = [str(tmp_path / "hf_home")]
    ref, work = str(tmp_path / "demo"), f"{gcs_bucket}/demo-{uuid.uuid4().hex[:8]}"
    reference, local = start(ref), []  # its wall time is measured outside the test suite (README)
    # the local run ends before the gs:// runs compile: they load its programs from the session's
    # compilation cache (the same bits; ~3x less CPU than compiling them again side by side)
    final, seen = kill_and_resume(work, lambda: local.append(cli_runs.finish(reference)))
    check_demo_outputs(ref, local[0])
    check_demo_outputs(work, final)  # every assertion, read from the bucket

    # the kills left nothing a reader trusts half-written
    assert "moe_jax.json" not in seen["convert"]  # the conversion's record is written last
    npz, listed = seen["collect"]
    assert set(listed) <= {n[:-len(".npz")] for n in npz}  # the manifest (meta.json) names only complete objects
    meta, data = seen["collect_store"]
    assert sorted(data) == listed and all(a["seq_mean_probs"].size for a in data.values())

    # the resumed gs:// run wrote what the local run wrote
    want, got = digests(ref), digests(work)
    assert sorted(got) == sorted(want)
    names = [os.path.basename(f) for f in storage.walk_files(work)]
    assert not [n for n in names if n.startswith(".") and (".tmp" in n or ".old-" in n)
                or n in ("moe_jax.partial.json", ".moe_jax_shared_probe")]  # no temp, partial or probe objects
    differ = {k for k in want if got[k] != want[k]}
    # index.html and analysis/summary.json show where they were written (summary.json is equal once the
    # workdir is normalised; steer/summary.json once its wall time is left out); the records of their
    # digests differ with them, and on gs:// a conversion's
    # record also keeps each object's GCS md5 (its content check compares md5s from one listing)
    assert differ <= {"report/index.html", "analysis/provenance.json", "report/provenance.json",
                      "steer/provenance.json", "checkpoint/moe_jax.json"}, sorted(differ)
    for rel in differ - {"report/index.html"}:
        a = _leaves(strip_volatile(storage.read_json(storage.join(ref, rel)), ref))
        b = _leaves(strip_volatile(storage.read_json(storage.join(work, rel)), work))
        keys = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
        assert keys and {k.rsplit("/", 1)[1] for k in keys} <= {"sha256", "size", "digest", "md5"}, (rel, keys)

    # A rerun finds everything done; a different random model is refused and leaves the store as it was.
    # In-process (run_stages is what the CLI runs; a launch would add ~7 CPU s of imports each): the
    # command line itself was shown above.
    before = storage.read_bytes(storage.join(ref, "routing", "meta.json"))
    config = load_config(DEMO)
    with caplog.at_level(logging.INFO, logger="moe_jax"):
        stages.run_stages(config, ref, "convert,collect")
    assert "already holds every language" in caplog.text
    config.model.tiny.seed = 1
    with pytest.raises(PreflightError) as refused:  # the CLI exits 1 with this message
        stages.run_stages(config, ref, "convert,collect")
    assert "routing holds routing statistics of another model" in str(refused.value)  # preflight
    assert "--config.collect.overwrite=True" in str(refused.value)
    assert storage.read_bytes(storage.join(ref, "routing", "meta.json")) == before
    assert json.loads(before)["model_source"]["tiny"]["seed"] == 0

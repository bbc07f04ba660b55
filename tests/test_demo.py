"""The offline demo end to end through the real command line, plus a rerun and a foreign-model refusal."""

import json
import os
import subprocess
import sys
import time

import numpy as np

from moe_jax.routing import store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(workdir, *extra, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "moe_jax.launch", "--config=configs/demo.py", f"--workdir={workdir}",
                           *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def test_demo_end_to_end(tmp_path):
    proc, _ = launch(tmp_path)  # its wall time is measured outside the test suite (README)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "WARNING: RANDOM WEIGHTS" in proc.stdout and "meaningless" in proc.stdout

    meta, data = store.read_store(str(tmp_path / "routing"))
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
    for task in ("math", "medicine"):  # the shipped English task corpora, collected like the main corpus
        tmeta, tdata = store.read_store(str(tmp_path / "tasks" / task))
        assert list(tdata) == ["eng_Latn"] and tmeta["task"] == task and tmeta["template"] == meta["template"]
        assert tdata["eng_Latn"]["seq_mean_probs"].shape[1:] == (len(meta["moe_layer_ids"]), 8)
        assert tmeta["languages"]["eng_Latn"]["sequences"] >= 40

    summary = json.loads((tmp_path / "analysis" / "summary.json").read_text())
    assert summary["skipped"] == {}  # every analysis ran, so every report section is there
    assert list(summary["task_experts"]["tasks"]) == ["math", "medicine"]
    assert len(summary["correlation"]["languages"]) == 11  # the non-pivot languages with a (placeholder) accuracy
    assert summary["accuracy_source"] == "analysis.accuracy"  # the placeholders, not the eval stage's
    # the eval stage on the shipped DEMO sets (two languages per task), flagged as a random model on demo items
    ev = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [(r["task"], r["language"]) for r in ev["rows"]] == [
        ("mgsm", "eng_Latn"), ("mgsm", "zho_Hans"), ("mgsm", "mean_non_english"), ("gmmlu_medical", "eng_Latn"),
        ("gmmlu_medical", "deu_Latn"), ("gmmlu_medical", "mean_non_english"), ("belebele", "eng_Latn"),
        ("belebele", "fra_Latn"), ("belebele", "mean_non_english")]
    assert [r["n"] for r in ev["rows"] if r["language"] != "mean_non_english"] == [5, 5, 7, 7, 5, 5]
    assert any("DEMO DATA" in w for w in ev["warnings"]) and "evaluation accuracies are those of a random model" in proc.stdout
    # the steering sweep: baseline, soft, hard, mask, a random control and a learned bias, one compile
    st = json.loads((tmp_path / "steer" / "summary.json").read_text())
    assert [n.split("-")[0] for n in st["settings"]] == ["baseline", "soft", "hard", "mask", "soft", "learned"]
    assert "-random-" in st["settings"][4] and st["settings_that_compiled"] == ["baseline"]
    assert "every accuracy change of this sweep is noise" in proc.stdout
    page = (tmp_path / "report" / "index.html").read_text()
    for section in ("Divergence from the pivot", "Routing entropy", "Token consistency", "Language similarity",
                    "Expert specialisation", "Evaluation accuracy", "Correlation with accuracy", "Router steering",
                    "Downloads", "Run metadata"):
        assert f">{section}<" in page, section
    assert "DEMO DATA" in page
    for png in ("correlation_scatter", "correlation_by_layer", "experts_task_math", "experts_task_medicine",
                "accuracy_mgsm", "accuracy_gmmlu_medical", "accuracy_belebele", "steer_heatmap_belebele",
                "steer_controls_belebele", "steer_targets"):
        assert os.path.getsize(tmp_path / "report" / f"{png}.png") > 0 and f"{png}.png" in page, png

    # A rerun finds everything done; a different random model is refused and leaves the store as it was.
    before = (tmp_path / "routing" / "meta.json").read_bytes()
    proc, _ = launch(tmp_path, "--stages=convert,collect")
    assert proc.returncode == 0 and "already holds every language" in proc.stderr
    proc, _ = launch(tmp_path, "--stages=convert,collect", "--config.model.tiny.seed=1")
    assert proc.returncode != 0 and "routing holds routing statistics of another model" in proc.stderr  # preflight
    assert "--config.collect.overwrite=True" in proc.stderr
    assert (tmp_path / "routing" / "meta.json").read_bytes() == before
    assert json.loads(before)["model_source"]["tiny"]["seed"] == 0

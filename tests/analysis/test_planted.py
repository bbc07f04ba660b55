"""Planted structure in synthetic routing statistics must be recovered by the analysis functions:
the U shape and its middle band, language-exclusive experts in chosen layers, task experts, the
accuracy ordering (sign and size of the correlation), language families, Phi-3.5's first layer; and the
documented synthetic flow on the command line recovers the planted correlation."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy.cluster.hierarchy import cophenet
from scipy.spatial.distance import squareform

from moe_jax.analysis import (aggregate_divergence, band_similarity, cluster_languages, detect_middle_band,
                              divergence_accuracy_correlation, expert_overlap, language_experts, pivot_divergence,
                              shared_exclusive_experts, task_experts, token_consistency)
from moe_jax.analysis import synthetic
from moe_jax.analysis.synthetic import SyntheticSpec, language_arrays, write_demo
from moe_jax.artifacts import routing_store as store_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = SyntheticSpec()
PIVOT = SPEC.pivot


@pytest.fixture(scope="module")
def data():
    return {l: language_arrays(SPEC, l) for l in SPEC.codes}


@pytest.fixture(scope="module")
def div(data):
    return pivot_divergence({l: a["seq_mean_probs"] for l, a in data.items()}, PIVOT,
                            seq_ids={l: a["seq_ids"] for l, a in data.items()})


def test_u_shape_and_band(div):
    c = SPEC.n_layers // 2
    for lang, v in div.items():
        ends, centre = np.r_[v[:2], v[-2:]].mean(), v[c - 1: c + 1].mean()
        assert ends > 3 * centre, lang
        assert np.argmin(v) in range(c - 2, c + 2), lang
    s, e = detect_middle_band(div)
    assert 1 <= s <= 3 and SPEC.n_layers - 4 <= e <= SPEC.n_layers - 2 and s < c - 1 and e > c


def test_aggregate_path_shows_the_same_u(data):
    agg = aggregate_divergence({l: a["topk_counts"] for l, a in data.items()},
                               {l: a["token_totals"] for l, a in data.items()}, PIVOT)
    c = SPEC.n_layers // 2
    for lang, v in agg.items():
        assert np.r_[v[:2], v[-2:]].mean() > 2 * v[c - 1: c + 1].mean(), lang


def test_accuracy_ordering_gives_strong_negative_correlation(div):
    band = detect_middle_band(div)
    weights = {code: w for code, w, _, _ in SPEC.languages}
    band_div = {l: v[band[0]: band[1] + 1].mean() for l, v in div.items()}
    assert sorted(band_div, key=band_div.get) == sorted(band_div, key=weights.get)  # planted ordering
    r = divergence_accuracy_correlation(div, SPEC.accuracy(), band=band, n_boot=500, seed=0)
    for stat in ("pearson", "spearman"):
        c = r["band"][stat]
        assert c.r < -0.8 and c.ci_high < 0 and c.p < 0.05 and c.n == len(SPEC.codes) - 1, stat


def test_language_exclusive_experts_in_planted_layers(data):
    freqs = {l: a["topk_counts"] / a["token_totals"][:, None] for l, a in data.items()}
    r = shared_exclusive_experts(freqs, top_k=16, thr=0.5)
    for lang, layer, expert in SPEC.exclusive:
        assert expert in r.exclusive(lang)[layer]
        for other in SPEC.codes:
            if other != lang:
                assert expert not in r.exclusive(other)[layer]
    middle = slice(3, SPEC.n_layers - 3)  # language-specific routing is weak there: everything shared
    assert not r.exclusive_mask[:, middle].any()
    assert all(len(s) == SPEC.n_experts for s in r.shared()[middle])


def test_task_and_language_experts(data):
    freq = {l: a["seq_topk_freq"] for l, a in data.items()}
    lang = language_experts(freq, PIVOT, tau=0.3)
    for code, layer, expert in SPEC.exclusive:
        assert expert in lang[code].experts[layer] and lang[code].scores[layer, expert] > 0.5
    task_data = language_arrays(SPEC, PIVOT, content_stream=1, extra_bias=SPEC.task_bias * SPEC.task_mask())
    task = task_experts(task_data["seq_topk_freq"], freq[PIVOT], tau=0.3)
    np.testing.assert_array_equal(task.mask, SPEC.task_mask())
    assert task.scores[SPEC.task_mask()].min() > 0.5
    # as in the study: at tau >= 0.3 no expert is both task- and language-specialised
    any_lang = np.any([s.mask for s in lang.values()], axis=0)
    assert expert_overlap(task, any_lang)["n_both"].sum() == 0


def test_families_cluster_together(data):
    util = np.stack([data[l]["topk_counts"] / data[l]["token_totals"][:, None] for l in SPEC.codes])
    z = cluster_languages(band_similarity(util, (0, SPEC.n_layers - 1)))
    d = squareform(cophenet(z))
    idx = {l: i for i, l in enumerate(SPEC.codes)}
    for a, b in (("hin_Deva", "ben_Beng"), ("fra_Latn", "spa_Latn")):
        others = [idx[l] for l in SPEC.codes if l not in (a, b)]
        assert d[idx[a], idx[b]] < d[idx[a], others].min()


def test_phi_like_first_layer_collapse():
    spec = SyntheticSpec(first_layer_collapse=True, n_sequences=20)
    data = {l: language_arrays(spec, l) for l in spec.codes}
    div = pivot_divergence({l: a["seq_mean_probs"] for l, a in data.items()}, PIVOT)
    assert all(v[0] < 0.02 for v in div.values())  # every language sent to the same experts
    s, e = detect_middle_band(div)
    assert s >= 1 and s < spec.n_layers // 2 - 1 and e > spec.n_layers // 2
    a = data[PIVOT]
    cons = token_consistency(a["token_topk"], a["seq_lengths"], n_pairs=500)
    assert cons[0] == 1.0 and cons[1:].max() < 0.8


# -- the synthetic flow the README documents, on the command line ----------------------------------------

def _run(*args, cwd):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_synthetic_cli_help_and_missing_path_write_nothing(tmp_path, monkeypatch, capsys):
    """The CLI's main(argv) in-process (the documented flow below runs it as a process)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        synthetic.main(["--help"])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    assert out.out.startswith("usage: python -m moe_jax.analysis.synthetic") and "WORKDIR" in out.out
    with pytest.raises(SystemExit) as e:
        synthetic.main([])
    assert e.value.code == 2 and "the following arguments are required: WORKDIR" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # no directory named --help, nothing else


@pytest.mark.slow  # the README's two commands, each its own process
def test_documented_synthetic_flow_correlates_against_the_planted_accuracies(tmp_path):
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    commands = ["python -m moe_jax.analysis.synthetic DIR",
                "python -m moe_jax.launch --config=DIR/synthetic_config.py --workdir=DIR"]
    for cmd in commands:
        assert f"`{cmd}`" in readme  # the README documents exactly these commands
    wd = str(tmp_path / "syn")
    outs = [_run(*cmd.replace("DIR", wd).split()[2:], cwd=tmp_path) for cmd in commands]
    for out in outs:
        assert out.returncode == 0, out.stderr[-3000:]
    assert "RANDOM WEIGHTS" not in outs[1].stdout and "synthetic routing statistics" in outs[1].stdout
    with open(os.path.join(wd, "analysis", "summary.json")) as f:
        s = json.load(f)
    with open(os.path.join(wd, "accuracy.json")) as f:
        written = json.load(f)
    assert written == {code: acc for code, _, _, acc in SyntheticSpec().languages}
    with open(os.path.join(wd, "analysis", "accuracy.json")) as f:
        used = {r["language"]: r["accuracy"] for r in json.load(f)}
    assert used == written  # not the demo config's placeholders
    assert s["skipped"] == {}  # task experts found too
    assert s["correlation"]["band"]["pearson"]["r"] < -0.97  # the planted -0.99
    assert os.path.exists(os.path.join(wd, "report", "index.html"))


def test_synthetic_writer_refuses_what_it_did_not_write(tmp_path):
    store_lib.open_store(str(tmp_path / "a" / "routing"), {"model": "olmoe", "fingerprint": "f"})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "accuracy.json").write_text('{"eng_Latn": 0.5}')
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"routing holds the routing statistics of 'olmoe', not a synthetic"):
        write_demo(str(tmp_path / "a"))
    with pytest.raises(FileExistsError, match=r"accuracy.json exists and does not hold the planted accuracies"):
        write_demo(str(tmp_path / "b"))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    paths = write_demo(str(tmp_path / "c"))
    assert write_demo(str(tmp_path / "c")) == paths  # its own earlier output is replaced

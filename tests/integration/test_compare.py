"""python -m moe_jax.compare on three tiny random models of 4, 6 and 8 layers collected on the same
small corpus (one with a masking sweep): curves on relative depth, the steering and masking tables,
and the refusals (another corpus, an unfinished analysis, a single workdir)."""

import importlib.util
import json
import os
import shutil

import numpy as np
import pytest

from moe_jax import compare
from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import layout as wd
from moe_jax.report import html
from moe_jax.steering import sweep as sweep_lib

pytestmark = pytest.mark.slow  # three tiny models converted, collected and analysed, one steered

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LANGUAGES = "eng_Latn,fra_Latn,deu_Latn,spa_Latn,zho_Hans"


def _config(layers: int):
    spec = importlib.util.spec_from_file_location("demo_config", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.tiny.overrides = {"num_hidden_layers": layers, "mlp_only_layers": []}
    c.data.languages = LANGUAGES
    c.data.max_sentences = 6
    c.tasks = {}
    c.collect.token_topk = False
    c.eval.limit = 2
    c.steer.update(dict(rule="exclusive", exclusive_top_k=3, exclusive_thr=0.3, methods="mask",
                        bands="0-1,2-3", controls="", languages="eng_Latn,fra_Latn"))
    c.steer.learned.enabled = False
    return c


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for layers in (4, 6, 8):
        work = str(root / f"L{layers}")
        stages.run_stages(_config(layers), work, "convert,collect,analyze" + (",steer" if layers == 4 else ""))
        out[layers] = work
    return out


def test_curves_on_relative_depth_and_tables(workdirs, tmp_path):
    dirs = [workdirs[n] for n in (4, 6, 8)]
    path = compare.compare(dirs, str(tmp_path / "out"))
    page = open(path).read()
    runs = [compare.load_run(w) for w in dirs]
    compare._labels(runs)
    div, ent, bands = compare.depth_data(runs)
    for run, layers, work in zip(runs, (4, 6, 8), dirs):
        x, y = div[run.label]
        np.testing.assert_allclose(x, (np.arange(layers) + 1) / layers)  # every layer routes; depth ends at 1
        with open(os.path.join(wd.analysis_dir(work), "divergence.json")) as f:
            rows = [r for r in json.load(f) if r["metric"] == "entropy_normalized_js"]
        want = [np.mean([r["mean"] for r in rows if r["decoder_layer"] == l]) for l in range(layers)]
        np.testing.assert_allclose(y, want)
        assert ent[run.label][0].shape == (layers,) and run.label in bands
        assert f"({layers} layers)" in run.label and run.meta["checkpoint_sha256"] in page
    assert len({r.meta["checkpoint_sha256"] for r in runs}) == 3
    for name in ("compare_divergence", "compare_entropy", "compare_alignment", "compare_masking_0"):
        assert f'data-file="{name}"' in page, name
    steer = json.load(open(os.path.join(workdirs[4], "steer", "summary.json")))
    table = sweep_lib.band_table(steer["rows"])  # the published masking table's shape: languages x ranges
    assert table["languages"] == ["eng_Latn", "fra_Latn", "non_english"] and table["bands"] == [(0, 1), (2, 3)]
    assert table["delta"].shape == (3, 2) and np.isfinite(table["delta"]).all()
    row = next(r for r in steer["rows"] if r["language"] == "fra_Latn")
    assert f"{row['p_mcnemar']:.3g}" in page and html.text(row["setting"]) in page and "Pearson r" in page


def test_refuses_another_corpus_an_unfinished_analysis_and_one_workdir(workdirs, tmp_path):
    other = str(tmp_path / "other")
    shutil.copytree(workdirs[6], other, ignore=shutil.ignore_patterns("steer"))
    c = _config(6)
    c.data.languages = "eng_Latn,fra_Latn,deu_Latn,spa_Latn"  # the same store, a smaller analysed pool
    stages.run_stages(c, other, "analyze")
    with pytest.raises(compare.CompareError, match=r"analysed different corpora: languages only in .*L4: "
                                                   r"\['zho_Hans'\]; only in .*other: \[\]"):
        compare.compare([workdirs[4], other], str(tmp_path / "out"))
    runs = [compare.load_run(workdirs[4]), compare.load_run(workdirs[8])]
    runs[1].meta = dict(runs[1].meta, languages=dict(runs[1].meta["languages"]))
    runs[1].meta["languages"]["deu_Latn"] = dict(runs[1].meta["languages"]["deu_Latn"], text_sha256="0000")
    with pytest.raises(compare.CompareError, match=r"other texts for deu_Latn \(text_sha256 \w+ != 0000\)"):
        compare.check_corpora(runs)
    os.remove(os.path.join(wd.analysis_dir(other), "provenance.json"))  # as an analyze run killed mid-write
    with pytest.raises(compare.CompareError, match=r"other: the analysis is unfinished or damaged.*--stages=analyze"):
        compare.compare([workdirs[4], other], str(tmp_path / "out"))
    assert compare.main([f"--workdirs={workdirs[4]}", f"--out={tmp_path / 'out'}"]) == 2
    assert not os.path.exists(tmp_path / "out")

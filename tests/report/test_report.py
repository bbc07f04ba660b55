"""The report stage renders a self-contained HTML page: every plot embedded, none empty or blank.
Tests about the page's text alone (the language pool) skip the PNG rendering."""

import base64
import io
import json
import os
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from moe_jax.pipeline import analyze as analysis_stage  # noqa: E402
from moe_jax.analysis.synthetic import SyntheticSpec, write_demo, write_synthetic_store  # noqa: E402
from moe_jax.pipeline import report as report_stage  # noqa: E402
from moe_jax.report import plots  # noqa: E402
from tests.helpers.no_render import no_render  # noqa: E402

SPEC = SyntheticSpec(moe_layer_ids=tuple(range(1, 13)), warning="random weights: numbers mean nothing")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.tags, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(a)
        for key in ("src", "href"):
            if key in a:
                self.links.append(a[key])


def _parse(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    p = _Collect()
    p.feed(text)
    return text, p


def _config():
    c = ml_collections.ConfigDict({"analysis": analysis_stage.default_config(), "report": report_stage.default_config()})
    c.analysis.bootstrap.n = 200
    c.analysis.consistency_pairs = 300
    return c


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("report"))
    paths = write_demo(wd, SPEC)
    c = _config()
    c.analysis.accuracy = paths["accuracy"]
    c.analysis.task_stores = {"math": paths["task_math"]}
    analysis_stage.run(c, wd)
    return wd, report_stage.run(c, wd)


def _check_images(path):
    """Every embedded PNG decodes, is not tiny, not blank, and equals a PNG file beside the HTML."""
    _, p = _parse(path)
    rdir = os.path.dirname(path)
    files = sorted(f for f in os.listdir(rdir) if f.endswith(".png"))
    names = []
    for img in p.imgs:
        src = img["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        arr = mpimg.imread(io.BytesIO(data), format="png")
        h, w = arr.shape[:2]
        assert h >= 200 and w >= 300, img["data-file"]
        rgb = arr[..., :3]
        non_white = np.mean(np.any(rgb < 0.95, axis=-1))
        assert non_white > 0.02 and rgb.std() > 0.05, f"{img['data-file']} looks blank"
        with open(os.path.join(rdir, img["data-file"]), "rb") as f:
            assert f.read() == data
        names.append(img["data-file"])
    assert sorted(names) == files  # the HTML references every plot and nothing else
    return names


@pytest.mark.slow  # renders every plot (matplotlib: most of this file's time)
def test_full_report_has_every_plot(full):
    _, path = full
    assert path.endswith(os.path.join("report", "index.html"))
    names = _check_images(path)
    for expected in ("divergence_curves", "divergence_heatmap", "divergence_js_divergence", "divergence_aggregate",
                     "entropy_curves", "utilization_entropy", "consistency_curves", "similarity_all",
                     "similarity_middle", "experts_exclusive", "experts_language", "experts_task_math",
                     "correlation_scatter", "correlation_by_layer"):
        assert f"{expected}.png" in names


@pytest.mark.slow
def test_report_is_self_contained_and_shows_metadata(full):
    wd, path = full
    text, p = _parse(path)
    assert "script" not in p.tags
    assert not [l for l in p.links if l.startswith(("http:", "https:", "//"))]  # opens offline
    assert 'class="warning"' in text and "random weights: numbers mean nothing" in text
    assert text.index("random weights") < text.index("<nav>")  # shown at the top
    s = analysis_stage.tables.read_json(os.path.join(wd, "analysis", "summary.json"))
    b = s["middle_band"]
    assert f"decoder layers {b['start'] + 1}-{b['end'] + 1}" in text  # labelled with decoder-layer ids
    assert "synthetic-parallel" in text and "Pearson r = -0.9" in text and "moe_layer_ids" in text


@pytest.mark.slow
def test_report_with_missing_pieces(tmp_path):
    write_synthetic_store(str(tmp_path / "routing"), SyntheticSpec(n_sequences=8), with_token_topk=False)
    analysis_stage.run(_config(), str(tmp_path))
    path = report_stage.run(_config(), str(tmp_path))
    names = _check_images(path)
    assert "divergence_curves.png" in names and "correlation_scatter.png" not in names
    text, _ = _parse(path)
    assert "Skipped analyses" in text and "token_topk" in text


def test_report_needs_analysis_first(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the analyze stage first"):
        report_stage.run(None, str(tmp_path))


def test_report_shows_the_language_pool(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "png_bytes", no_render)  # the page's text is the point
    write_demo(str(tmp_path), SyntheticSpec(n_sequences=8))
    meta_path = tmp_path / "routing" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["requested_languages"] = ["eng_Latn", "fra_Latn", "hin_Deva"]  # spa, ben, tha: left from an earlier run
    meta_path.write_text(json.dumps(meta))
    analysis_stage.run(_config(), str(tmp_path))
    text, _ = _parse(report_stage.run(_config(), str(tmp_path)))
    section = text[text.index("Language pool"):text.index("Routing store metadata")]
    assert "<td>analysed languages</td><td>eng_Latn, fra_Latn, hin_Deva</td>" in section
    assert "<td>store languages left out</td><td>ben_Beng, spa_Latn, tha_Thai</td>" in section
    assert "<td>meta.requested_languages</td>" in section
    assert "<tr><td>tha_Thai</td><td>no</td>" in text and "<tr><td>fra_Latn</td><td>yes</td>" in text


def test_report_config_typo_is_an_error(tmp_path):
    c = _config()
    c.report.titel = "x"
    with pytest.raises(ValueError, match=r"config.report.titel is not a known field \(did you mean config.report.title\?\)"):
        report_stage.run(c, str(tmp_path))  # refused before any input is read

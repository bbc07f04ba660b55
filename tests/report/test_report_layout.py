"""Report layout: the statistics box hides no point, lines of close accuracies stay distinguishable and
are labelled at their ends, curves break over dense layers, no long token widens the page, and the
captions carry the formulas of docs/methods.md (never a file outside the repository)."""

import html as html_lib
import os
import re
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import ml_collections  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.text import Text  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from moe_jax.pipeline import analyze as analysis_stage  # noqa: E402
from moe_jax.analysis.synthetic import SyntheticSpec, write_demo  # noqa: E402
from moe_jax.models.config import ModelConfig  # noqa: E402
from moe_jax.report import plots  # noqa: E402
from moe_jax.pipeline import report as report_stage  # noqa: E402
from moe_jax.artifacts.routing_store import read_meta  # noqa: E402
from moe_jax.convert.tiny import tiny_hf_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Qwen2-MoE's layout: decoder layer 1 is dense (mlp_only_layers=[1]), so the MoE layers are 0, 2, 3, ...
QWEN2_LAYERS = ModelConfig.from_hf(tiny_hf_config("qwen2_moe", num_hidden_layers=8)).moe_layer_ids
MAX_TOKEN = 32  # longest run of characters without a line-break opportunity that the page may hold


def test_qwen2_layout_has_a_dense_layer():
    assert QWEN2_LAYERS == (0, 2, 3, 4, 5, 6, 7)


# -- the correlation scatter's statistics box ------------------------------------------------------------

def _stats_box_hits(fig):
    """Points and point labels that the statistics box covers (display coordinates)."""
    ax = fig.axes[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    stats = [t for t in ax.texts if "languages" in t.get_text()]
    assert len(stats) == 1
    box = stats[0].get_bbox_patch().get_window_extent(r)
    pts = ax.collections[0]
    xy = ax.transData.transform(pts.get_offsets())
    rad = np.sqrt(pts.get_sizes().max()) / 2 * fig.dpi / 72
    covered = [i for i, (px, py) in enumerate(xy)
               if box.x0 - rad < px < box.x1 + rad and box.y0 - rad < py < box.y1 + rad]
    labels = [t.get_text() for t in ax.texts if t is not stats[0] and t.get_window_extent(r).overlaps(box)]
    return covered, labels


STATS = {"pearson": {"r": -0.23, "p": 0.49, "ci_low": -0.78, "ci_high": 0.35, "n": 11},
         "spearman": {"r": -0.45, "p": 0.17, "ci_low": -0.88, "ci_high": 0.27, "n": 11}}


@pytest.mark.parametrize("case", ["demo", "every_corner"])
def test_statistics_box_hides_no_point(case):
    if case == "demo":  # the demo report's points: swh_Latn (lowest accuracy, small divergence) sat under the box
        x = [0.069, 0.0757, 0.0873, 0.085, 0.0881, 0.106, 0.108, 0.0909, 0.0975, 0.0911, 0.0762]
        y = [0.75, 0.76, 0.77, 0.71, 0.70, 0.66, 0.60, 0.56, 0.53, 0.48, 0.42]
    else:  # a point in each corner and one in the middle: no corner is free
        x, y = [0.0, 1.0, 0.0, 1.0, 0.5, 0.1, 0.9], [0.0, 0.0, 1.0, 1.0, 0.5, 0.1, 0.9]
    fig = plots.correlation_scatter(x, y, [f"l{i}" for i in range(len(x))], STATS, title="t", xlabel="x",
                                    ylabel="y")
    covered, labels = _stats_box_hits(fig)
    assert covered == [] and labels == []
    plots.plt.close(fig)


# -- lines of close accuracies ---------------------------------------------------------------------------

def _language_lines(ax, langs):
    return {l.get_label().split(" ")[0]: l for l in ax.lines if l.get_label().split(" ")[0] in langs}


def test_close_accuracies_get_distinct_markers_and_end_labels():
    x = np.arange(10)
    langs = [f"lang{i:02d}" for i in range(14)]
    rng = np.random.default_rng(0)
    curves = {l: rng.uniform(0.1, 0.3, len(x)) for l in langs}
    acc = {l: 0.700 + 0.001 * i for i, l in enumerate(langs)}  # colours indistinguishable on the scale
    fig = plots.layer_curves(x, curves, title="t", ylabel="y", color_values=acc)
    ax = fig.axes[0]
    lines = _language_lines(ax, langs)
    assert sorted(lines) == langs
    assert len({(l.get_marker(), l.get_linestyle()) for l in lines.values()}) == len(langs)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    labels = {t.get_text().split(" ")[0]: t for t in ax.texts if t.get_text().split(" ")[0] in langs}
    assert sorted(labels) == langs  # every line labelled directly ...
    ends = {}
    for lang, t in labels.items():
        xd, yd = lines[lang].get_data()
        assert t.xy == (xd[-1], yd[-1])  # ... joined to its last point ...
        box = Text.get_window_extent(t, r)  # the text alone, without its connector
        assert box.x0 > ax.get_window_extent(r).x1  # ... right of the axes
        ends[lang] = (yd[-1], box)
    order = sorted(langs, key=lambda l: ends[l][0])
    boxes = [ends[l][1] for l in order]
    assert all(a.y1 <= b.y0 + 0.5 for a, b in zip(boxes, boxes[1:]))  # in the order of the ends, none overlapping
    plots.plt.close(fig)


# -- dense layers ----------------------------------------------------------------------------------------

def _spans_a_gap(xs, ys, dense):
    """Whether a drawn segment of the polyline ``(xs, ys)`` crosses one of the ``dense`` layers."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    ok = np.isfinite(xs) & np.isfinite(ys)
    return any(ok[i] and ok[i + 1] and min(xs[i], xs[i + 1]) < d < max(xs[i], xs[i + 1])
               for i in range(len(xs) - 1) for d in dense)


def _gap_checks(fig, layers):
    """(polylines checked, polylines / ribbons that cross a dense layer) of every axes of ``fig``."""
    dense = sorted(set(range(min(layers), max(layers) + 1)) - set(layers))
    checked, crossing = 0, []
    for ax in fig.axes:
        for line in ax.lines:
            xs, ys = line.get_data()
            if line.get_transform() != ax.transData or len(xs) < 2 or not set(layers) <= set(np.asarray(xs, float)):
                continue
            checked += 1
            if _spans_a_gap(xs, ys, dense):
                crossing.append(line.get_label())
        for coll in ax.collections:  # ribbons (fill_between): one polygon per run of layers
            if not isinstance(coll, PolyCollection):
                continue
            for path in coll.get_paths():
                vx = path.vertices[:, 0]
                if len(vx) > 2 and any(vx.min() < d < vx.max() for d in dense):
                    crossing.append(f"ribbon of {coll}")
    return checked, crossing


def test_curves_break_over_a_dense_layer():
    x = np.array(QWEN2_LAYERS)
    curves = {"a": np.linspace(0.1, 0.5, len(x)), "b": np.linspace(0.5, 0.1, len(x))}
    sem = {l: np.full(len(x), 0.02) for l in curves}
    base = (np.full(len(x), 0.1), np.full(len(x), 0.2), np.full(len(x), 0.3))
    figs = [plots.layer_curves(x, curves, title="t", ylabel="y", errors=sem, baseline=base, band=(2, 4),
                               color_values={"a": 0.5, "b": 0.6}),
            plots.correlation_by_layer(x, {"pearson": (curves["a"], curves["a"] - 0.1, curves["a"] + 0.1)}, title="t")]
    for fig in figs:
        checked, crossing = _gap_checks(fig, list(x))
        assert checked >= 1 and crossing == []
        plots.plt.close(fig)
    # the point of the layer before the gap is still drawn
    fig = plots.layer_curves(x, curves, title="t", ylabel="y")
    line = _language_lines(fig.axes[0], curves)["a"]
    assert 0.0 in np.asarray(line.get_data()[0], float) and line.get_marker() not in (None, "", "None")
    plots.plt.close(fig)


# -- the whole report on a Qwen2-layout store -------------------------------------------------------------

SPEC = SyntheticSpec(n_layers=len(QWEN2_LAYERS), moe_layer_ids=QWEN2_LAYERS, n_sequences=12,
                     exclusive=(("tha_Thai", 5, 3), ("hin_Deva", 1, 7)), task_experts=((2, 5), (3, 5), (3, 9)))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report of a synthetic workdir with a dense layer, and every figure it drew."""
    wd = str(tmp_path_factory.mktemp("layout"))
    paths = write_demo(wd, SPEC)
    c = ml_collections.ConfigDict({"analysis": analysis_stage.default_config(),
                                   "report": report_stage.default_config()})
    c.analysis.bootstrap.n = 100
    c.analysis.consistency_pairs = 200
    c.analysis.accuracy = paths["accuracy"]
    analysis_stage.run(c, wd)
    figs, render = {}, plots.png_bytes

    def keep(fig, path=None, *args, **kw):
        checked, crossing = _gap_checks(fig, list(QWEN2_LAYERS))
        figs[os.path.basename(path)] = (checked, crossing)
        return render(fig, path, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "png_bytes", keep)
        path = report_stage.run(c, wd)
    with open(path, encoding="utf-8") as f:
        return wd, f.read(), figs


@pytest.mark.slow  # the report of a synthetic workdir (the module fixture)
def test_report_curves_break_over_the_dense_layer(report):
    _, _, figs = report
    curves = {n: v for n, v in figs.items() if v[0]}
    assert {"divergence_curves.png", "entropy_curves.png", "consistency_curves.png",
            "correlation_by_layer.png"} <= set(curves)
    assert {n: v[1] for n, v in curves.items() if v[1]} == {}


class _Text(HTMLParser):
    """Text of the page's elements, with <wbr> as a break; table structure; figure captions."""

    def __init__(self):
        super().__init__()
        self.chunks, self.stack, self.captions, self.tables_in_scroll, self.tables = [], [], [], 0, 0
        self.in_caption = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "wbr":
            self.chunks.append(" ")
            return
        if tag == "table":
            self.tables += 1
            self.tables_in_scroll += bool(self.stack and self.stack[-1] == ("div", "scroll"))
        if tag == "figcaption":
            self.in_caption = True
            self.captions.append("")
        self.stack.append((tag, a.get("class")))

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.in_caption = False
        while self.stack and self.stack.pop()[0] != tag:
            pass
        self.chunks.append(" ") if tag in ("td", "th", "p", "div", "li", "summary", "figcaption") else None

    def handle_data(self, data):
        if self.stack and self.stack[-1][0] in ("style", "title"):
            return
        self.chunks.append(data)
        if self.in_caption:
            self.captions[-1] += data


def _parse(text):
    p = _Text()
    p.feed(text)
    return p


@pytest.mark.slow
def test_no_long_token_widens_the_page(report):
    wd, text, _ = report
    p = _parse(text)
    words = "".join(p.chunks).split()
    assert max(len(w) for w in words) <= MAX_TOKEN, sorted(words, key=len)[-3:]
    assert p.tables > 3 and p.tables_in_scroll == p.tables  # wider tables scroll in their own box
    assert "overflow-wrap:anywhere" in text
    meta = read_meta(os.path.join(wd, "routing"))
    digests = [v for d in meta["languages"].values() for k, v in d.items() if k.endswith("sha256")]
    assert len(digests) == len(SPEC.codes) and all(f'title="{d}"' in text for d in digests)  # full value kept
    assert wd in "".join(p.chunks).replace(" ", "").replace("\n", "")  # long paths wrapped, not cut


def _methods_headings():
    with open(os.path.join(ROOT, "docs", "methods.md"), encoding="utf-8") as f:
        doc = f.read()
    return doc, {m.strip() for m in re.findall(r"^#+ (.+)$", doc, flags=re.M)}


# figure -> (text its caption shows, the same formula in docs/methods.md)
FORMULAS = {
    "divergence_curves.png": [("D(p, q) = JSD(p, q) / max(log E − (H(p) + H(q))/2, 10−6)",
                               "D(p, q) = JSD(p, q) / max(log E - (H(p) + H(q)) / 2, 1e-6)"),
                              ("Div(x, l) = (1/N) Σi D(", "Div(x, l) = (1/N) sum_i D(")],
    "divergence_js_divergence.png": [("JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m)", "JSD(p, q) = KL(p || m) / 2 + KL(q || m) / 2")],
    "entropy_curves.png": [("H(p) = −Σe pe log pe", "H(p) = -sum_e p_e log p_e")],
    "consistency_curves.png": [("|A ∩ B| / (|A| + |B| − |A ∩ B|)", "|A ∩ B| / (|A| + |B| - |A ∩ B|)")],
    "experts_exclusive.png": [("px[l, e] = keptx[l, e] / Σx' keptx'[l, e]", "p_x[l, e] = kept_x[l, e] / sum_x' kept_x'[l, e]")],
    "experts_language.png": [("Δ[l, e] = (1/Nt) Σi ∈ target fi[l, e] − (1/Nr) Σi ∈ reference fi[l, e]",
                              "Delta[l, e] = (1/N_t) sum_{i in target} f_i[l, e] - (1/N_r) sum_{i in reference} f_i[l, e]")],
    "correlation_scatter.png": [("ρ = r of the ranks", "Spearman `rho` (Pearson of average ranks)")],
}


@pytest.mark.slow
def test_captions_carry_the_formulas_of_docs_methods(report):
    _, text, _ = report
    p = _parse(text)
    doc, headings = _methods_headings()
    names = re.findall(r'<figure id="fig-([^"]+)"', text)
    captions = dict(zip(names, (" ".join(c.split()) for c in p.captions)))
    for name, pairs in FORMULAS.items():
        for shown, documented in pairs:
            assert shown in captions[name], (name, captions[name])
            assert documented in doc, documented
    assert len(re.findall(r'<span class="math">', text)) >= len(names)  # every figure shows its math
    for name, cap in captions.items():
        refs = re.findall(r"docs/methods\.md, sections? (.+?)\.$", cap)
        assert refs, (name, cap)  # each caption names the section that explains it ...
        for section in re.findall(r"“(.+?)”", refs[0]):
            assert section in headings, (name, section)  # ... and that section exists


@pytest.mark.slow
def test_report_cites_no_file_outside_the_repository(report):
    _, text, _ = report
    page = html_lib.unescape(re.sub(r'src="data:[^"]*"', "", text))
    for banned in ("METHODS", "../shared", "DESIGN.md", "EVALUATION.md", "ARCHITECTURES.md"):
        assert banned not in page
    for ref in set(re.findall(r"\b[\w./-]+\.(?:md|py)\b", "".join(_parse(text).chunks))):
        assert os.path.exists(os.path.join(ROOT, ref)), ref

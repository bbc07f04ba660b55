"""Report figures from plain arrays (matplotlib, Agg backend). Every function returns a Figure;
``png_bytes`` renders and closes it."""

from __future__ import annotations

import io
import textwrap
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy.cluster import hierarchy  # noqa: E402

from moe_jax.io.storage import atomic_write_bytes  # noqa: E402

BAND_COLOR = "#cfe3f7"
# viridis without its palest yellow, which vanishes on white
ACCURACY_CMAP = mcolors.LinearSegmentedColormap.from_list("viridis_dark", plt.get_cmap("viridis")(np.linspace(0, 0.85, 256)))
BASELINE_COLOR = "#9a9a9a"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "d")
LINESTYLES = ("-", "--", "-.", ":")


def png_bytes(fig, path: str | None = None, dpi: int = 110, stamp: str | None = None) -> bytes:
    """Renders ``fig`` as PNG (also to ``path`` when given) and closes it; ``stamp`` (e.g. the run's
    "random weights" warning) is written in red under the plot so a copied PNG keeps it."""
    if stamp:
        fig.text(0.01, -0.01, textwrap.fill(f"WARNING: {stamp}", 110), color="#c0392b", fontsize=9,
                 fontweight="bold", va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:  # local or gs:// (no savefig to a path: matplotlib writes local files only)
        atomic_write_bytes(path, data)
    return data


def _band_span(ax, x: np.ndarray, band: tuple[int, int] | None, label: str = "middle band") -> None:
    """Shades MoE-layer positions ``band`` (inclusive) on an axis whose x values are ``x [layers]``."""
    if band is None:
        return
    s, e = band
    ax.axvspan(x[s] - 0.5, x[e] + 0.5, color=BAND_COLOR, zorder=0, label=f"{label} ({x[s]}-{x[e]})")


def layer_gaps(x) -> np.ndarray:
    """Indices ``i`` where ``x[i + 1] - x[i]`` exceeds the regular step of ``x [layers]`` (its smallest
    difference): decoder layers without a router (a dense layer) lie between, with no data."""
    d = np.diff(np.asarray(x, float))
    return np.flatnonzero(d > d.min() + 1e-9) if d.size else np.zeros(0, int)


def with_gaps(x, *ys):
    """``(x, *ys)`` ``[layers]`` with a NaN point inserted in every gap (``layer_gaps``), so that lines and
    ribbons break there instead of joining the layers on either side of a dense layer."""
    x = np.asarray(x, float)
    g = layer_gaps(x)
    return (np.insert(x, g + 1, (x[g] + x[g + 1]) / 2),
            *(np.insert(np.asarray(y, float), g + 1, np.nan) for y in ys))


def _gap_spans(ax, x: np.ndarray) -> None:
    """Hatches the layers inside each gap of ``x`` (no router, hence no point)."""
    x = np.asarray(x, float)
    g = layer_gaps(x)
    step = np.diff(x).min() if len(x) > 1 else 1.0
    for k, i in enumerate(g):
        ax.axvspan(x[i] + step / 2, x[i + 1] - step / 2, facecolor="none", edgecolor="0.75", hatch="///", lw=0,
                   zorder=0, label="no router (dense layer)" if k == 0 else None)


def _spread(targets, gap: float, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Positions near ``targets [n]`` (same order), at least ``gap`` apart, inside ``[lo, hi]``."""
    t = np.asarray(targets, float)
    order = np.argsort(t, kind="stable")
    gap = min(gap, (hi - lo) / max(len(t) - 1, 1))
    y = np.clip(t[order], lo, hi)
    for i in range(1, len(y)):
        y[i] = max(y[i], y[i - 1] + gap)
    if len(y) and y[-1] > hi:
        y[-1] = hi
        for i in range(len(y) - 2, -1, -1):
            y[i] = min(y[i], y[i + 1] - gap)
    out = np.empty_like(y)
    out[order] = y
    return out


def end_labels(ax, lines, fontsize: float = 8) -> None:
    """Direct labels: each line's label (and marker) just right of the axes at the height of its last point,
    pushed apart so that none overlaps, joined to the point by a thin connector. ``lines``: ``Line2D``s
    whose ``get_label()`` is the text. Freezes the axis limits (call after everything is drawn)."""
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ylo, yhi = ax.set_ylim(ax.get_ylim())
    ends = []
    for line in lines:
        x, y = (np.asarray(v, float) for v in line.get_data())
        ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if ok.size:
            ends.append((line, x[ok[-1]], y[ok[-1]]))
    height_pt = ax.get_position().height * ax.figure.get_figheight() * 72
    fontsize = max(4.0, min(fontsize, 0.8 * height_pt / max(len(ends), 1)))  # many lines: smaller labels
    pos = _spread([(y - ylo) / (yhi - ylo) for _, _, y in ends], 1.25 * fontsize / height_pt, 0.02, 0.98)
    for (line, xe, ye), yf in zip(ends, pos):
        c = line.get_color()
        ax.plot([1.02], [yf], transform=ax.transAxes, clip_on=False, ls="none", marker=line.get_marker(), ms=5,
                color=c, gid="end-label-marker")
        ax.annotate(line.get_label(), xy=(xe, ye), xytext=(1.035, yf), textcoords="axes fraction", va="center",
                    fontsize=fontsize, color=c, annotation_clip=False, gid="end-label",
                    arrowprops=dict(arrowstyle="-", color=c, lw=0.6, alpha=0.5, shrinkA=0, shrinkB=9))


def line_style(i: int) -> dict:
    """Marker and line style of the ``i``-th line: distinct for the first len(MARKERS) * len(LINESTYLES)."""
    return dict(marker=MARKERS[i % len(MARKERS)], ls=LINESTYLES[(i // len(MARKERS)) % len(LINESTYLES)])


def _legend_above(ax, title: str) -> None:
    """The legend of the non-line artists (band, baseline, dense layers) in rows above the axes."""
    handles, labels = ax.get_legend_handles_labels()
    keep = [(h, l) for h, l in zip(handles, labels) if not str(h.get_gid() or "").startswith("language:")]
    rows = 0
    if keep:
        ncol = min(len(keep), 3)
        rows = -(-len(keep) // ncol)
        ax.legend(*zip(*keep), loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=ncol, fontsize=8, frameon=False)
    ax.set_title(title, pad=6 + 13 * rows)


def layer_curves(x, curves: Mapping[str, np.ndarray], *, title: str, ylabel: str,
                 xlabel: str = "decoder layer", color_values: Mapping[str, float] | None = None,
                 color_label: str = "accuracy", baseline: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 baseline_label: str = "split-half baseline", band: tuple[int, int] | None = None,
                 errors: Mapping[str, np.ndarray] | None = None, highlight: str | None = None):
    """One line per language over layers ``x [layers]``.

    ``color_values`` colours lines on a viridis scale (e.g. accuracy; languages without a value are
    grey); ``baseline = (low, mid, high)`` ``[layers]`` is drawn as a grey band; ``band``
    (MoE-layer positions) is shaded; ``errors`` ``{language: [layers]}`` as a thin ribbon;
    ``highlight`` draws one language in black. Every line has its own marker and dash and is labelled
    at its end (``end_labels``); lines break over dense layers (gaps in ``x``, ``with_gaps``).
    """
    x = np.asarray(x)
    xg = with_gaps(x)[0]
    fig, ax = plt.subplots(figsize=(10, 5.2))
    _band_span(ax, x, band)
    _gap_spans(ax, x)
    if baseline is not None:
        _, lo, mid, hi = with_gaps(x, *baseline)
        ax.fill_between(xg, lo, hi, color=BASELINE_COLOR, alpha=0.2, lw=0, label=f"{baseline_label} (range)")
        ax.plot(xg, mid, color=BASELINE_COLOR, ls="--", lw=1.5, label=f"{baseline_label} (median)")
    cmap, norm = ACCURACY_CMAP, None
    vals = {l: v for l, v in (color_values or {}).items() if l in curves}
    if vals:
        lo_v, hi_v = min(vals.values()), max(vals.values())
        norm = mcolors.Normalize(lo_v, hi_v if hi_v > lo_v else lo_v + 1e-9)
    order = sorted(curves, key=lambda l: (l not in vals, -vals.get(l, 0.0), l))
    palette = plt.get_cmap("tab20")
    lines = []
    for i, lang in enumerate(order):
        y = with_gaps(x, curves[lang])[1]
        if lang == highlight:
            style = dict(color="black", lw=2.6, zorder=5)
        elif norm is not None and lang in vals:
            style = dict(color=cmap(norm(vals[lang])), lw=2.0)
        elif norm is not None:
            style = dict(color="0.55", lw=1.3)
        else:
            style = dict(color=palette(i % 20), lw=1.8)
        label = f"{lang} ({vals[lang]:.3g})" if lang in vals else lang
        # colour alone cannot tell close accuracies apart: every line also gets its own marker / dash
        lines += ax.plot(xg, y, ms=4.5, label=label, gid=f"language:{lang}", **line_style(i), **style)
        if errors is not None and lang in errors:
            e = with_gaps(x, errors[lang])[1]
            ax.fill_between(xg, y - e, y + e, color=style["color"], alpha=0.15, lw=0)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_xlim(x.min() - 0.6, x.max() + 0.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if norm is not None:
        width = max(len(l.get_label()) for l in lines) * 8 * 0.55 / 72 + 0.3  # end labels, inches
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=ax, pad=width / (0.78 * fig.get_figwidth()), fraction=0.04).set_label(color_label)
    end_labels(ax, lines)
    _legend_above(ax, title)
    return fig


def heatmap(matrix, row_labels: Sequence, col_labels: Sequence, *, title: str, cbar_label: str,
            xlabel: str = "decoder layer", ylabel: str = "", cmap: str = "magma_r", center: float | None = None,
            annotate: bool = False, marks: np.ndarray | None = None, mark_label: str = ""):
    """A ``[rows, cols]`` heatmap; ``center`` makes a diverging scale symmetric around it;
    ``marks`` ``[rows, cols]`` bool draws a dot on marked cells (e.g. experts above a threshold)."""
    m = np.asarray(matrix, float)
    h = min(10.0, max(2.6, 0.32 * m.shape[0] + 1.6))  # 128 experts get thin rows, not a 40-inch figure
    w = min(16.0, max(6.0, 0.32 * m.shape[1] + 3.0))
    fig, ax = plt.subplots(figsize=(w, h))
    kw = {}
    if center is not None:
        lim = np.nanmax(np.abs(m - center)) or 1.0
        kw = dict(vmin=center - lim, vmax=center + lim)
    im = ax.imshow(m, aspect="auto", cmap=cmap, interpolation="nearest", **kw)
    fig.colorbar(im, ax=ax, pad=0.01, fraction=0.04).set_label(cbar_label)
    step_c = max(1, int(np.ceil(len(col_labels) / 40)))
    step_r = max(1, int(np.ceil(len(row_labels) / 60)))
    ax.set_xticks(np.arange(0, len(col_labels), step_c), [str(c) for c in col_labels][::step_c], fontsize=8)
    ax.set_yticks(np.arange(0, len(row_labels), step_r), [str(r) for r in row_labels][::step_r], fontsize=8)
    if annotate and m.size <= 600:
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v) and v != 0:
                r, g, b, _ = im.cmap(im.norm(v))
                dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # luminance of the cell
                ax.text(j, i, f"{v:.0f}" if float(v).is_integer() else f"{v:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if dark else "black")
    if marks is not None and np.any(marks):
        r, c = np.nonzero(marks)
        ax.scatter(c, r, s=14, facecolors="none", edgecolors="black", linewidths=1.0, label=mark_label)
        ax.legend(loc="upper right", bbox_to_anchor=(1.0, 1.0 + 0.35 / h), fontsize=8, frameon=False)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig


def similarity_dendrogram(sim, labels: Sequence[str], linkage, *, title: str, metric: str = "cosine"):
    """Dendrogram (left) and the similarity matrix ``[X, X]`` in dendrogram order (right)."""
    sim = np.asarray(sim, float)
    n = len(labels)
    fig, (ax_d, ax_h) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.38 * n + 1.5)),
                                     gridspec_kw={"width_ratios": [1, 1.35]})
    dn = hierarchy.dendrogram(np.asarray(linkage), labels=list(labels), orientation="left", ax=ax_d,
                              color_threshold=0.7 * np.max(np.asarray(linkage)[:, 2]) if n > 2 else None)
    ax_d.set(title="hierarchical clustering", xlabel=f"1 - {metric} similarity")
    order = dn["leaves"][::-1]  # top-to-bottom order of the left dendrogram
    im = ax_h.imshow(sim[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    ax_h.set_xticks(range(n), [labels[i] for i in order], rotation=90, fontsize=8)
    ax_h.set_yticks(range(n), [labels[i] for i in order], fontsize=8)
    fig.colorbar(im, ax=ax_h, fraction=0.046, pad=0.02).set_label(f"{metric} similarity")
    ax_h.set_title("similarity (dendrogram order)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def correlation_scatter(x, y, labels: Sequence[str], stats: Mapping[str, Mapping], *, title: str,
                        xlabel: str, ylabel: str):
    """Scatter of ``x [n]`` against ``y [n]`` with language labels, a least-squares line and the
    statistics ``{name: {r, p, ci_low, ci_high, n}}`` in a box placed where it covers no point and no
    label (``place_clear``)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    points = ax.scatter(x, y, s=40, color="#1f77b4", zorder=3)
    names = [ax.annotate(lab, (xi, yi), xytext=(4, 3), textcoords="offset points", fontsize=8)
             for xi, yi, lab in zip(x, y, labels)]
    if np.ptp(x) > 0:
        a, b = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        ax.plot(xs, a * xs + b, color="#d62728", lw=1.5, label="least-squares fit")
    lines = []
    for name, s in stats.items():
        r, p, lo, hi = (s.get(k) for k in ("r", "p", "ci_low", "ci_high"))
        fmt = lambda v, f: "n/a" if v is None or not np.isfinite(v) else format(v, f)
        lines.append(f"{name}: r = {fmt(r, '.3f')}, p = {fmt(p, '.2g')}, CI [{fmt(lo, '.2f')}, {fmt(hi, '.2f')}]")
    n = next(iter(stats.values())).get("n", len(x)) if stats else len(x)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    place_clear(ax, "\n".join(lines + [f"n = {n} languages"]), points, names, fontsize=9, gid="stats")
    return fig


CORNERS = ((0.02, 0.02, "left", "bottom"), (0.98, 0.02, "right", "bottom"), (0.98, 0.98, "right", "top"),
           (0.02, 0.98, "left", "top"))


def place_clear(ax, text: str, points, avoid: Sequence = (), **kw):
    """A boxed ``text`` in the first corner of ``ax`` where it covers no marker of the scatter ``points``
    and no artist of ``avoid`` (e.g. point labels); outside the axes, right of them, when every corner is
    taken. Freezes the axis limits. Returns the Text."""
    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    xy = ax.transData.transform(points.get_offsets())
    radius = np.sqrt(np.max(points.get_sizes())) / 2 * fig.dpi / 72  # marker radius in pixels
    others = [a.get_window_extent(renderer) for a in avoid]
    style = dict(bbox=dict(boxstyle="round", fc="white", ec="0.7"), multialignment="left", **kw)
    for cx, cy, ha, va in CORNERS:
        t = ax.text(cx, cy, text, transform=ax.transAxes, ha=ha, va=va, zorder=4, **style)
        box = text_box(t, renderer)
        hit = ((xy[:, 0] > box.x0 - radius) & (xy[:, 0] < box.x1 + radius)
               & (xy[:, 1] > box.y0 - radius) & (xy[:, 1] < box.y1 + radius)).any()
        if not hit and not any(box.overlaps(o) for o in others):
            return t
        t.remove()
    return ax.text(1.02, 1.0, text, transform=ax.transAxes, ha="left", va="top", **style)


def text_box(t, renderer):
    """Display extent (pixels) of a Text with its bbox patch."""
    t.update_bbox_position_size(renderer)
    patch = t.get_bbox_patch()
    return patch.get_window_extent(renderer) if patch is not None else t.get_window_extent(renderer)


def correlation_by_layer(x, per_stat: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *, title: str,
                         band: tuple[int, int] | None = None, xlabel: str = "decoder layer"):
    """Correlation coefficient per layer with its bootstrap interval: ``{stat: (r, low, high)}`` ``[layers]``;
    lines break over dense layers (gaps in ``x``)."""
    x = np.asarray(x)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    _band_span(ax, x, band)
    _gap_spans(ax, x)
    for i, ((name, series), color) in enumerate(zip(per_stat.items(), ("#1f77b4", "#ff7f0e", "#2ca02c"))):
        xg, r, lo, hi = with_gaps(x, *series)
        ax.plot(xg, r, ms=4.5, color=color, label=name, **line_style(i))
        ax.fill_between(xg, lo, hi, color=color, alpha=0.18, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(title=title, xlabel=xlabel, ylabel="correlation with accuracy", ylim=(-1.05, 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def counts_with_bars(counts, row_labels: Sequence, x_labels: Sequence, bars, *, title: str, cbar_label: str,
                     bar_label: str, xlabel: str = "decoder layer"):
    """A counts heatmap ``[rows, layers]`` above a bar chart ``[layers]`` sharing the layer axis."""
    m = np.asarray(counts, float)
    fig, (ax, axb) = plt.subplots(2, 1, figsize=(min(16.0, max(7.0, 0.32 * m.shape[1] + 3.5)),
                                                  min(12.0, max(4.0, 0.32 * m.shape[0] + 3.0))),
                                  sharex=True, gridspec_kw={"height_ratios": [max(m.shape[0], 2), 2.2]})
    im = ax.imshow(m, aspect="auto", cmap="Blues", interpolation="nearest", vmin=0)
    fig.colorbar(im, ax=[ax, axb], pad=0.01, fraction=0.04).set_label(cbar_label)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    for (i, j), v in np.ndenumerate(m):
        if v and m.size <= 800:
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * m.max() else "black")
    axb.bar(np.arange(len(x_labels)), bars, color="#7f7f7f")
    step = max(1, int(np.ceil(len(x_labels) / 40)))
    axb.set_xticks(np.arange(0, len(x_labels), step), [str(v) for v in x_labels][::step], fontsize=8)
    axb.set(xlabel=xlabel, ylabel=bar_label)
    axb.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    return fig


def accuracy_bars(labels: Sequence[str], acc, low, high, *, title: str, ylabel: str = "accuracy",
                  mean: float | None = None, mean_label: str = "mean over non-English languages"):
    """One bar per language ``acc [n]`` with its interval ``[low, high]`` as error bars; ``mean`` as a
    dashed line."""
    acc, low, high = (np.asarray(v, float) for v in (acc, low, high))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(labels) + 2.5), 4.2))
    x = np.arange(len(labels))
    ax.bar(x, acc, color="#4c72b0", zorder=2)
    ax.errorbar(x, acc, yerr=np.clip([acc - low, high - acc], 0, None), fmt="none", ecolor="black", capsize=3, lw=1, zorder=3)
    if mean is not None:
        ax.axhline(mean, color="#c44e52", ls="--", lw=1.2, label=f"{mean_label} ({mean:.3f})")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
    ax.set_xticks(x, labels, rotation=60 if len(labels) > 8 else 0, ha="right" if len(labels) > 8 else "center",
                  fontsize=8)
    ax.set(title=title, ylabel=ylabel, ylim=(0, 1.05))
    ax.grid(axis="y", alpha=0.3)
    return fig


def delta_bars(labels: Sequence[str], delta, low, high, *, title: str, xlabel: str = "accuracy change",
               groups: Sequence[str] | None = None, significant: Sequence[bool] | None = None):
    """Accuracy changes ``delta [n]`` with intervals ``[low, high]``, one horizontal bar per setting
    (long names stay readable), coloured by ``groups`` (main rule vs controls); ``significant`` bars get a star."""
    delta, low, high = (np.asarray(v, float) for v in (delta, low, high))
    fig, ax = plt.subplots(figsize=(8.5, max(2.8, 0.36 * len(labels) + 1.6)))
    y = np.arange(len(labels))[::-1]  # first setting on top
    names = list(dict.fromkeys(groups)) if groups is not None else [""]
    colours = plt.get_cmap("tab10")
    for gi, g in enumerate(names):
        sel = np.array([groups is None or groups[i] == g for i in range(len(labels))])
        ax.barh(y[sel], delta[sel], color=colours(gi), label=g or None, zorder=2, height=0.6)
    ax.errorbar(delta, y, xerr=np.clip([delta - low, high - delta], 0, None), fmt="none", ecolor="black", capsize=3,
                lw=1, zorder=3)
    if significant is not None:
        for i in np.flatnonzero(np.asarray(significant, bool)):
            ax.text(high[i], y[i], " *", ha="left", va="center", fontsize=12)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    if groups is not None:
        ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def delta_vs_lambda(series: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]], *, title: str,
                    ylabel: str = "accuracy change"):
    """Per method ``(lambdas, delta, low, high)``: the change against the steering strength."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, (lam, d, lo, hi) in series.items():
        order = np.argsort(lam)
        lam, d, lo, hi = (np.asarray(v, float)[order] for v in (lam, d, lo, hi))
        ax.plot(lam, d, marker="o", label=name)
        ax.fill_between(lam, lo, hi, alpha=0.15)
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set(title=title, xlabel="lambda", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def masking_grid(languages: Sequence[str], bands: Sequence[tuple[int, int]], delta, low, high, *, title: str,
                 p=None):
    """The masking table: accuracy change ``delta [languages, bands]`` (rows: languages; columns: the
    masked layer ranges), each cell annotated with its paired interval ``[low, high]`` (and McNemar
    ``p [languages, bands]`` when given); diverging colours around 0, grey where a cell has no value."""
    d, lo, hi = (np.asarray(v, float) for v in (delta, low, high))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(bands) + 2.5), max(2.6, 0.55 * len(languages) + 1.6)))
    lim = np.nanmax(np.abs(d)) if np.isfinite(d).any() and np.nanmax(np.abs(d)) > 0 else 1.0
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(d), aspect="auto", cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
    fig.colorbar(im, ax=ax, pad=0.01, fraction=0.05).set_label("accuracy change (masked - baseline)")
    for (i, j), v in np.ndenumerate(d):
        if not np.isfinite(v):
            continue
        text = f"{v:+.3f}\n[{lo[i, j]:+.3f}, {hi[i, j]:+.3f}]"
        if p is not None and np.isfinite(np.asarray(p, float)[i, j]):
            text += f"\np={float(np.asarray(p)[i, j]):.2g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                color="white" if abs(v) > 0.6 * lim else "black")
    ax.set_xticks(np.arange(len(bands)), [f"layers {a}-{b}" for a, b in bands], fontsize=8)
    ax.set_yticks(np.arange(len(languages)), list(languages), fontsize=8)
    ax.set(title=title, xlabel="masked layer range (decoder layers, inclusive)", ylabel="language")
    return fig


def depth_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str, ylabel: str,
                 bands: Mapping[str, tuple[float, float]] | None = None, xlabel: str = "relative depth"):
    """One line per model over relative depth: ``curves {model: (x [layers] in (0, 1], y [layers])}``;
    ``bands {model: (lo, hi)}`` (relative depth) shaded in the model's colour, so models of different
    depths share one axis."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    palette = plt.get_cmap("tab10")
    for i, (name, (x, y)) in enumerate(curves.items()):
        colour = palette(i % 10)
        ax.plot(x, y, color=colour, lw=2.0, ms=5, label=name, gid=f"model:{name}", **line_style(i))
        if bands and name in bands:
            lo, hi = bands[name]
            ax.axvspan(lo, hi, color=colour, alpha=0.12, lw=0, label=f"{name}: middle band")
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2)
    ax.set_title(title, pad=8 + 13 * -(-2 * len(curves) // 2))
    return fig


def alignment_panels(panels: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str], str]], *, title: str,
                     xlabel: str = "middle-band divergence from English", ylabel: str = "accuracy"):
    """One scatter per model: ``panels {model: (divergence [n], accuracy [n], language labels, note)}``,
    the note (r and its interval) under the model's name."""
    n = max(len(panels), 1)
    fig, axes = plt.subplots(1, n, figsize=(4.4 * n, 4.0), squeeze=False)
    for ax, (name, (x, y, labels, note)) in zip(axes[0], panels.items()):
        x, y = np.asarray(x, float), np.asarray(y, float)
        ax.scatter(x, y, color="#4c72b0", zorder=3)
        for xi, yi, lab in zip(x, y, labels):
            ax.annotate(lab, (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7)
        if len(x) >= 2 and np.ptp(x) > 0:
            slope, icept = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 10)
            ax.plot(xs, slope * xs + icept, color="#c44e52", lw=1, ls="--")
        ax.set_title(f"{name}\n{note}", fontsize=9)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def stacked_layer_panels(panels: Sequence[tuple[np.ndarray, Mapping[str, np.ndarray], str]], *, title: str,
                         band: tuple[float, float] | None = None, xlabel: str = "decoder layer"):
    """Panels stacked on one shared decoder-layer axis, one line per language in each:
    ``panels [(x [points], {language: [points]}, ylabel)]`` (each panel its own x, e.g. MoE layers for
    routing and every layer for hidden states); ``band`` (decoder layers, inclusive) shaded in all.
    A language keeps its colour and marker in every panel."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 2.9 * len(panels)), sharex=True, squeeze=False)
    langs = sorted({l for _, curves, _ in panels for l in curves})
    palette = plt.get_cmap("tab20")
    for ax, (x, curves, ylabel) in zip(axes[:, 0], panels):
        if band is not None:
            ax.axvspan(band[0] - 0.5, band[1] + 0.5, color=BAND_COLOR, zorder=0)
        for lang in sorted(curves):
            i = langs.index(lang)
            xg, y = with_gaps(x, curves[lang])  # no line across a layer without a value (a dense layer)
            ax.plot(xg, y, ms=4, lw=1.6, color=palette(i % 20), label=lang, gid=f"language:{lang}", **line_style(i))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    handles = {h.get_label(): h for ax in axes[:, 0] for h in ax.get_lines()}
    axes[0, 0].legend([handles[l] for l in langs if l in handles], [l for l in langs if l in handles], fontsize=8,
                      frameon=False, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(langs), 6))
    axes[0, 0].set_title(title, pad=8 + 13 * -(-len(langs) // 6))
    return fig

"""Several models in one report: ``python -m moe_jax.compare --workdirs=A,B,... --out=DIR`` writes
``DIR/compare.html`` (self-contained: inline CSS, figures as base64 PNG):

* divergence from the pivot (mean over the non-pivot languages, the analysis' primary metric) and
  normalised routing entropy (mean over languages) of every model on relative depth, ``(decoder
  layer + 1) / number of decoder layers``, so models of different depths share one axis, each
  with its middle band;
* alignment against accuracy per model (middle-band divergence vs accuracy per language) with the
  band's Pearson r and its bootstrap interval;
* the steering table per model x setting x task x language: baseline, steered, change with its
  paired interval and the McNemar p (and, for masking runs of the exclusive rule, the languages x
  masked ranges table);
* each model's identity: model, checkpoint digest, store fingerprint, analysis settings.

Only published outputs are read, each checked against the digest its stage recorded: the analysis
through its ``provenance.json`` (an unfinished or stale analysis is refused, naming the command
that redoes it), the steering sweep through ``steer/provenance.json``. Workdirs whose corpora differ
(languages, or the texts of a language by their ``text_sha256``) are refused, naming the difference.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import Any, Sequence

import numpy as np

from moe_jax.io import integrity, storage
from moe_jax.artifacts import layout as wd
from moe_jax.artifacts.stage_outputs import ANALYSIS_SUMMARY, analysis_staleness, read_analysis, read_steer
from moe_jax.io.storage import atomic_write
from moe_jax.errors import StageError
from moe_jax.report import html, plots
from moe_jax.artifacts.routing_store import read_meta
from moe_jax.steering import sweep as sweep_lib

log = logging.getLogger(__name__)

OUTPUT = "compare.html"


class CompareError(ValueError):
    """The workdirs cannot be compared (the message names the workdir and why)."""


@dataclasses.dataclass
class ModelRun:
    """What the report shows of one workdir (all read from published outputs)."""

    workdir: str
    label: str
    summary: dict  # analysis/summary.json
    divergence: list[dict]
    entropy: list[dict]
    points: list[dict]  # correlation_points (empty without accuracies)
    meta: dict  # the routing store's meta.json (identity, corpus)
    steer: dict | None  # steer/summary.json, None without a sweep

    @property
    def num_layers(self) -> int:
        return int(self.meta.get("num_layers") or max(self.summary["moe_layer_ids"]) + 1)

    def depth(self, decoder_layers) -> np.ndarray:
        return (np.asarray(decoder_layers, float) + 1) / self.num_layers

    def corpus(self) -> dict[str, str | None]:
        """``{language: text_sha256}`` of the analysed pool."""
        langs = self.meta.get("languages") or {}
        return {l: (langs.get(l) or {}).get("text_sha256") for l in self.summary["languages"]}


def _published(workdir: str, name: str) -> Any:
    """``analysis/<name>`` as its provenance publishes it; CompareError naming the redo command otherwise."""
    try:
        return read_analysis(workdir, name)
    except (integrity.UnpublishedError, integrity.DigestMismatchError) as e:
        raise CompareError(f"{workdir}: the analysis is unfinished or damaged ({e}); run it again: python -m "
                           f"moe_jax.launch --config=<its config> --workdir={workdir} --stages=analyze") from None


def load_run(workdir: str) -> ModelRun:
    """One workdir's published analysis (current with its routing store) and steering sweep."""
    if not storage.exists(storage.join(wd.analysis_dir(workdir), ANALYSIS_SUMMARY)):
        raise CompareError(f"{workdir} has no analysis; run: python -m moe_jax.launch --config=<its config> "
                           f"--workdir={workdir} --stages=analyze")
    summary = _published(workdir, ANALYSIS_SUMMARY)
    stale = analysis_staleness(workdir)
    if stale:
        raise CompareError(f"{workdir}: the analysis was computed from other inputs than the workdir holds now "
                           f"({', '.join(stale)}); run the analyze stage again")
    tables = set(summary.get("tables", []))
    read = lambda name: _published(workdir, f"{name}.json") if name in tables else []
    meta = read_meta(wd.routing_dir(workdir)) or {}
    steer = None
    if storage.exists(storage.join(wd.steer_dir(workdir), "summary.json")):
        try:
            steer = read_steer(workdir)
        except (StageError, OSError, ValueError) as e:  # unfinished or changed: the message names the command
            raise CompareError(f"{workdir}: the steering sweep cannot be read as published: {e}") from None
    return ModelRun(workdir, str(meta.get("model") or workdir), summary, read("divergence"), read("entropy"),
                    read("correlation_points"), meta, steer)


def check_corpora(runs: Sequence[ModelRun]) -> None:
    """Refuses runs whose analysed corpora differ, naming the languages or texts that differ."""
    first = runs[0]
    ref = first.corpus()
    for run in runs[1:]:
        mine = run.corpus()
        problems = []
        only_a, only_b = sorted(set(ref) - set(mine)), sorted(set(mine) - set(ref))
        if only_a or only_b:
            problems.append(f"languages only in {first.workdir}: {only_a}; only in {run.workdir}: {only_b}")
        texts = [f"{l} (text_sha256 {ref[l]} != {mine[l]})" for l in sorted(set(ref) & set(mine))
                 if ref[l] != mine[l] or ref[l] is None]
        if texts:
            problems.append(f"other texts for {', '.join(texts)}")
        if problems:
            raise CompareError(f"{first.workdir} and {run.workdir} analysed different corpora: {'; '.join(problems)}; "
                               "compare models collected on the same config.data")


def _labels(runs: Sequence[ModelRun]) -> None:
    """Unique model labels: the model name, then its depth, then the workdir's position."""
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = f"{r.label} ({r.num_layers} layers)"
    names = [r.label for r in runs]
    for i, r in enumerate(runs):
        if names.count(r.label) > 1:
            r.label = f"{r.label} #{i + 1}"


def _mean_curve(rows: list[dict], value: str, where: dict, exclude: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(decoder layers, mean over languages of value)`` of the rows matching ``where``."""
    sel = [r for r in rows if all(r.get(k) == v for k, v in where.items()) and r["language"] != exclude]
    layers = sorted({int(r["decoder_layer"]) for r in sel})
    return (np.asarray(layers), np.asarray([np.mean([r[value] for r in sel if int(r["decoder_layer"]) == l])
                                            for l in layers]))


def _band(run: ModelRun) -> tuple[float, float] | None:
    band = run.summary.get("middle_band")
    if not band:
        return None
    lo, hi = band["decoder_layers"]
    step = 0.5 / run.num_layers
    return float(run.depth(lo) - step), float(run.depth(hi) + step)


def depth_data(runs: Sequence[ModelRun]) -> tuple[dict, dict, dict]:
    """``(divergence, entropy, bands)``: ``{model: (relative depth [layers], mean over languages [layers])}``
    of the primary divergence (non-pivot languages) and of the normalised token entropy (every
    language), and ``{model: (lo, hi)}`` the middle band in relative depth (half a layer either side)."""
    div, ent, bands = {}, {}, {}
    for r in runs:
        metric, pivot = r.summary.get("primary_metric"), r.summary.get("pivot")
        if r.divergence:
            x, y = _mean_curve(r.divergence, "mean", {"metric": metric}, exclude=pivot)
            div[r.label] = (r.depth(x), y)
        if r.entropy:
            x, y = _mean_curve(r.entropy, "token_entropy_norm", {})
            ent[r.label] = (r.depth(x), y)
        if _band(r):
            bands[r.label] = _band(r)
    return div, ent, bands


def depth_sections(runs: Sequence[ModelRun]) -> list[str]:
    blocks, (div, ent, bands) = [], depth_data(runs)
    if div:
        metric = runs[0].summary.get("primary_metric")
        blocks.append(html.figure(plots.png_bytes(plots.depth_curves(
            div, bands=bands, title=f"Divergence from English ({metric}), mean over languages",
            ylabel=str(metric))), "compare_divergence",
            "Each model's divergence curve on relative depth (decoder layer + 1) / number of decoder layers; "
            "shaded: each model's middle band."))
    if ent:
        blocks.append(html.figure(plots.png_bytes(plots.depth_curves(
            ent, bands=bands, title="Routing entropy / log E, mean over languages", ylabel="normalised entropy")),
            "compare_entropy", "Mean token routing entropy, normalised by log(number of experts), on relative depth."))
    return blocks


def alignment_sections(runs: Sequence[ModelRun]) -> list[str]:
    panels, rows = {}, []
    for r in runs:
        pts = [p for p in r.points if "band_divergence" in p]
        corr = ((r.summary.get("correlation") or {}).get("band") or {}).get("pearson")
        if not pts or not corr:
            rows.append([r.label, "", "", "", "no accuracies or no middle band: no correlation"])
            continue
        note = f"Pearson r = {corr['r']:.2f} [{corr['ci_low']:.2f}, {corr['ci_high']:.2f}], n = {corr['n']}"
        panels[r.label] = ([p["band_divergence"] for p in pts], [p["accuracy"] for p in pts],
                           [p["language"] for p in pts], note)
        rows.append([r.label, f"{corr['r']:.3f}", f"[{corr['ci_low']:.3f}, {corr['ci_high']:.3f}]",
                     f"{corr['p']:.3g}", corr["n"]])
    blocks = []
    if panels:
        blocks.append(html.figure(plots.png_bytes(plots.alignment_panels(
            panels, title="Middle-band alignment with English against accuracy")), "compare_alignment",
            "Per model: each language's middle-band divergence from English against its accuracy; r: Pearson over "
            "the languages, with its bootstrap 95% interval."))
    blocks.append(html.table(rows, ["model", "Pearson r", "95% interval", "p", "languages"]))
    return blocks


def steering_sections(runs: Sequence[ModelRun]) -> list[str]:
    rows, blocks = [], []
    for r in runs:
        for s in (r.steer or {}).get("rows", []):
            rows.append([r.label, s["setting"], s["task"], s["language"], s["n"], f"{s['baseline']:.3f}",
                         f"{s['steered']:.3f}", f"{s['delta']:+.3f}", f"[{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]",
                         f"{s['p_mcnemar']:.3g}"])
        table = sweep_lib.band_table((r.steer or {}).get("rows", []))
        if table["bands"]:
            blocks.append(html.figure(plots.png_bytes(plots.masking_grid(
                table["languages"], table["bands"], table["delta"], table["low"], table["high"], p=table["p"],
                title=f"{r.label}: masking the exclusive experts ({table['task']})")), f"compare_masking_{len(blocks)}",
                "Accuracy change per language (rows) when the exclusive experts are masked in each layer range "
                "(columns), with the paired bootstrap 95% interval and the McNemar p."))
    if not rows:
        return [html.paragraph("No workdir holds a steering sweep.", "note")]
    return [html.table(rows, ["model", "setting", "task", "language", "n", "baseline", "steered", "change",
                              "95% interval (paired)", "McNemar p"])] + blocks


def identity_section(runs: Sequence[ModelRun]) -> list[str]:
    rows = [[r.label, r.workdir, r.meta.get("model", ""), r.meta.get("model_type", ""), r.num_layers,
             r.summary.get("n_experts"), r.summary.get("top_k"), r.meta.get("checkpoint_sha256", ""),
             r.meta.get("fingerprint", ""), r.meta.get("dtype", "")] for r in runs]
    blocks = [html.table(rows, ["label", "workdir", "model", "type", "layers", "experts", "top-k",
                                "checkpoint sha256", "store fingerprint", "dtype"])]
    for r in runs:
        blocks.append(f"<details><summary>{html.text(r.label)}: analysis settings</summary>"
                      f"{html.mapping_table(r.summary.get('config') or {})}</details>")
    return blocks


def render(runs: Sequence[ModelRun]) -> str:
    warnings = sorted({str(r.meta.get("warning")) for r in runs if r.meta.get("warning")})
    corpus = runs[0].corpus()
    intro = [html.paragraph(f"{len(runs)} models on the same corpus: {len(corpus)} languages "
                            f"({', '.join(corpus)}).")]
    sections = [("Routing across depth", "depth", depth_sections(runs)),
                ("Alignment and accuracy", "alignment", alignment_sections(runs)),
                ("Steering", "steering", steering_sections(runs)),
                ("Models", "models", identity_section(runs))]
    return html.page("moe_jax: model comparison", sections, warning=" ".join(warnings) or None, intro=intro)


def compare(workdirs: Sequence[str], out: str) -> str:
    """Writes ``out/compare.html`` for ``workdirs``; returns its path."""
    if len(workdirs) < 2:
        raise CompareError(f"--workdirs names {len(workdirs)} workdir(s); give two or more, comma-separated")
    runs = [load_run(w) for w in workdirs]
    check_corpora(runs)
    _labels(runs)
    page = render(runs)
    storage.makedirs(out)
    path = storage.join(out, OUTPUT)
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moe_jax.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdirs", required=True, help="comma-separated workdirs (local or gs://)")
    parser.add_argument("--out", required=True, help="directory of compare.html")
    args = parser.parse_args(argv)
    try:
        path = compare([w.strip() for w in args.workdirs.split(",") if w.strip()], args.out)
    except CompareError as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    print(f"model comparison written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

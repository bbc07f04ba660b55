"""The ``report`` stage: ``workdir/analysis`` tables -> ``workdir/report/index.html`` + PNGs.

Called by ``moe_jax.launch`` as ``run(config, workdir)`` after ``analyze``; ``config`` is the full run
config (its ``report`` section is used) or the section itself. The page is static and
self-contained (figures embedded as base64 PNG); the same figures are saved next to it as PNG.

The workdir may be local or ``gs://`` (``moe_jax.io.storage``). The page reads ``analysis/`` only as
its ``provenance.json`` records it (``moe_jax.artifacts.stage_outputs``). ``report/`` is published the same
way: the old ``report/provenance.json`` is removed first, then the PNGs, CSV copies and
``index.html`` are written, and ``provenance.json`` LAST, recording what the page shows and each
file's size and sha256.
"""

from __future__ import annotations

import logging
from typing import Callable

import ml_collections
import numpy as np

from moe_jax.artifacts import lineage
from moe_jax.artifacts.stage_outputs import (ANALYSIS_SUMMARY, EVAL_SUMMARY_FILES, STEER_OUTPUT_FILES, read_analysis,
                                             read_eval, read_steer, require_current_analysis)
from moe_jax.pipeline import model_identity
from moe_jax.io import integrity, storage
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import options as options_lib
from moe_jax.errors import StageError
from moe_jax.pipeline.common import collect_problems
from moe_jax.report import formulas, html, plots
from moe_jax.io.storage import read_json
from moe_jax.artifacts.routing_store import read_meta
from moe_jax.steering import sweep as sweep_lib

log = logging.getLogger(__name__)

PAGE = "index.html"
METRIC_LABELS = {"entropy_normalized_js": "entropy-normalised JS divergence", "js_divergence": "JS divergence (nats)",
                 "kl_divergence": "KL divergence (nats)", "cosine_distance": "cosine distance"}


def default_config() -> ml_collections.ConfigDict:
    """The ``config.report`` section (fields and defaults: ``options.ReportOptions``)."""
    return options_lib.section_config(options_lib.ReportOptions)


class _Report:
    """Reads the analysis output once; each ``_section_*`` method returns page blocks."""

    def __init__(self, workdir: str, cfg):
        self.workdir = workdir
        self.adir = wd.analysis_dir(workdir)
        self.rdir = wd.report_dir(workdir)
        path = storage.join(self.adir, ANALYSIS_SUMMARY)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} does not exist: run the analyze stage first")
        self.s = read_analysis(workdir)
        self.meta = read_meta(self.s["store"]) or read_meta(wd.routing_dir(workdir)) or {}
        self.cfg = cfg
        self.x = np.asarray(self.s["moe_layer_ids"])
        self.band = (self.s["middle_band"]["start"], self.s["middle_band"]["end"]) if "middle_band" in self.s else None
        self.primary = self.s["primary_metric"]
        acc = self.table("accuracy") or []
        self.accuracy = {r["language"]: r["accuracy"] for r in acc}
        self.eval_dir = wd.eval_dir(workdir)
        self.steer_dir = wd.steer_dir(workdir)
        # None without an eval / steer stage; else read only through their verified records
        self.eval, self.steer = (reader(workdir) if shown else None for shown, reader in zip(
            stage_outputs(workdir), (read_eval, read_steer)))
        self.files: dict[str, dict] = {}  # {path under report/: integrity.entry_of} for provenance.json

    def table(self, name: str):
        """Records of a table the last analyze run wrote (None for skipped analyses)."""
        return read_analysis(self.workdir, f"{name}.json") if name in self.s.get("tables", []) else None

    def curves(self, records, value: str, key: str = "language", **where) -> dict[str, np.ndarray]:
        """``{key value: [layers]}`` of ``value`` from layer records matching ``where``."""
        out: dict[str, np.ndarray] = {}
        for r in records:
            if all(r.get(k) == v for k, v in where.items()):
                out.setdefault(r[key], np.full(len(self.x), np.nan))[r["layer"]] = np.nan if r[value] is None else r[value]
        return out

    def fig(self, fig, name: str, caption: str, math: tuple[str, ...] = ()) -> str:
        """Saves and embeds ``fig``; ``math`` names the formulas (``formulas.FORMULAS``) shown in the caption."""
        png = plots.png_bytes(fig, storage.join(self.rdir, f"{name}.png"), self.cfg.dpi,
                              stamp=self.meta.get("warning") or None)
        self.files[f"{name}.png"] = integrity.entry_of(png)
        return html.figure(png, f"{name}.png", caption, formulas.block(*math) if math else "")

    def band_text(self) -> str:
        if self.band is None:
            return "no middle band"
        b = self.s["middle_band"]
        return (f"middle band: decoder layers {b['decoder_layers'][0]}-{b['decoder_layers'][1]} "
                f"(MoE-layer positions {b['start']}-{b['end']}, {b['source']})")

    # -- sections ---------------------------------------------------------------------------------

    def divergence(self) -> list[str]:
        rows = self.table("divergence")
        if rows is None:
            return []
        pivot, label = self.s["pivot"], METRIC_LABELS.get(self.primary, self.primary)
        mean = self.curves(rows, "mean", metric=self.primary)
        sem = self.curves(rows, "sem", metric=self.primary)
        base = self.curves(self.table("baseline") or [], "mean", metric=self.primary, mode="pairs")
        bl = None
        if base:
            b = np.stack(list(base.values()))
            bl = (b.min(0), np.median(b, 0), b.max(0))
        acc = {l: a for l, a in self.accuracy.items() if l in mean}
        blocks = [self.fig(
            plots.layer_curves(self.x, mean, title=f"Routing divergence from {pivot} by layer", ylabel=label,
                               color_values=acc or None, baseline=bl, band=self.band, errors=sem,
                               baseline_label="split-half same-language"),
            "divergence_curves",
            f"Mean {label} between aligned sequence pairs (language vs {pivot}), per layer, with +-1 SEM ribbons"
            + (", coloured by accuracy" if acc else "") + ". Grey: split-half baseline, the same per-pair estimator "
            "between two different sequences of one language (range and median over languages): a curve above it "
            "means language identity separates routing more than content does; below it, translations route more "
            f"alike than two sentences of one language. Shaded: the {self.band_text()}.",
            ("divergence", self.primary, "split_half"))]
        order = sorted(mean, key=lambda l: np.nanmean(mean[l]))
        blocks.append(self.fig(
            plots.heatmap(np.stack([mean[l] for l in order]), order, self.x, title=f"{label} from {pivot}",
                          cbar_label=label, ylabel="language"),
            "divergence_heatmap", "Language x layer divergence from the pivot (languages sorted by mean divergence).",
            ("divergence", self.primary)))
        for metric in self.s.get("metrics", [])[1:]:
            m = self.curves(rows, "mean", metric=metric)
            blocks.append(self.fig(
                plots.layer_curves(self.x, m, title=f"{METRIC_LABELS.get(metric, metric)} from {pivot}",
                                   ylabel=METRIC_LABELS.get(metric, metric), color_values=acc or None, band=self.band),
                f"divergence_{metric}",
                f"Unnormalised comparison ({metric}); raw divergences also track the fall of routing entropy with depth.",
                ("divergence", metric)))
        agg = self.table("divergence_aggregate")
        if agg:
            a = self.curves(agg, "value", metric=self.primary)
            mb = self.curves(self.table("baseline") or [], "mean", metric=self.primary, mode="means")
            blm = (lambda b: (b.min(0), np.median(b, 0), b.max(0)))(np.stack(list(mb.values()))) if mb else None
            blocks.append(self.fig(
                plots.layer_curves(self.x, a, title=f"Aggregate routing divergence from {pivot}", ylabel=label,
                                   color_values=acc or None, baseline=blm, band=self.band,
                                   baseline_label="split-half (half means)"),
                "divergence_aggregate",
                "Divergence between language-level top-k utilisation (aggregate counts) of each language and the "
                "pivot. Grey: divergence between the utilisation of two random halves of one language (sampling noise).",
                ("aggregate", self.primary)))
        return blocks

    def entropy(self) -> list[str]:
        rows = self.table("entropy")
        if rows is None:
            return []
        pivot = self.s["pivot"]
        hl = pivot if pivot in self.s["languages"] else None
        return [self.fig(plots.layer_curves(self.x, self.curves(rows, "token_entropy_norm"),
                                            title="Router entropy per token", ylabel="H(softmax(z)) / log E",
                                            band=self.band, highlight=hl),
                         "entropy_curves", f"Mean token-level router entropy, normalised by log E (pivot {pivot} in "
                         "black). In trained models it falls with depth, faster for non-English.", ("token_entropy",)),
                self.fig(plots.layer_curves(self.x, self.curves(rows, "utilization_entropy_norm"),
                                            title="Expert utilisation entropy", ylabel="H(c / sum c) / log E",
                                            band=self.band, highlight=hl),
                         "utilization_entropy", "Entropy of each language's aggregate top-k utilisation; low values "
                         "mean a language concentrates on few experts.", ("utilization_entropy",))]

    def consistency(self) -> list[str]:
        rows = self.table("consistency")
        if rows is None:
            return []
        c = self.s.get("consistency", {})
        return [self.fig(plots.layer_curves(self.x, self.curves(rows, "jaccard"), title="Token-to-token consistency",
                                            ylabel="mean Jaccard of top-k sets", band=self.band),
                         "consistency_curves", f"Jaccard overlap of the top-k expert sets of {c.get('pairs')} sampled "
                         f"token pairs per language (scope: {c.get('scope')}, seed {c.get('seed')}).", ("consistency",))]

    def similarity(self) -> list[str]:
        rows, clus = self.table("similarity_bands"), self.table("clustering")
        if rows is None or clus is None:
            return []
        info = self.s["similarity"]
        langs = info["languages"]
        idx = {l: i for i, l in enumerate(langs)}
        blocks = []
        for band, (s, e) in info["bands"].items():
            sim = np.zeros((len(langs), len(langs)))
            for r in rows:
                if r["band"] == band:
                    sim[idx[r["language_a"]], idx[r["language_b"]]] = r["similarity"]
            z = np.array([[r["left"], r["right"], r["distance"], r["size"]] for r in clus if r["band"] == band], float)
            blocks.append(self.fig(
                plots.similarity_dendrogram(sim, langs, z, metric=info["metric"],
                                            title=f"Language similarity, {band} layers ({self.x[s]}-{self.x[e]})"),
                f"similarity_{band}",
                f"{info['metric']} similarity of top-k utilisation vectors averaged over decoder layers "
                f"{self.x[s]}-{self.x[e]}, and {info['cluster_method']}-linkage clustering of languages.",
                (f"similarity_{info['metric']}",)))
        return blocks

    def experts(self) -> list[str]:
        blocks = []
        pool, info = self.table("experts_pool"), self.s.get("shared_exclusive")
        if pool and info:
            langs = info["pool"]
            cnt = np.zeros((len(langs), len(self.x)))
            shared = np.zeros(len(self.x))
            seen_shared = set()
            for r in pool:
                if r["label"] == "exclusive":
                    cnt[langs.index(r["language"]), r["layer"]] += 1
                elif r["label"] == "shared" and (r["layer"], r["expert"]) not in seen_shared:
                    seen_shared.add((r["layer"], r["expert"]))
                    shared[r["layer"]] += 1
            blocks.append(self.fig(
                plots.counts_with_bars(cnt, langs, self.x, shared, title="Language-exclusive experts per layer",
                                       cbar_label="exclusive experts", bar_label="shared experts"),
                "experts_exclusive",
                f"Top: experts exclusive to a language (its share of the pool's top-{info['top_k']} mass > "
                f"{info['thr']}); bottom: experts shared by the pool. Labels depend on the pool: {', '.join(langs)}.",
                ("exclusive",)))
        lang = self.table("experts_language")
        if lang:
            li = self.s["language_experts"]
            langs = list(li["count"])
            cnt = np.zeros((len(langs), len(self.x)))
            for r in lang:
                cnt[langs.index(r["language"]), r["layer"]] += bool(r["is_expert"])
            blocks.append(self.fig(
                plots.heatmap(cnt, langs, self.x, title=f"Language experts (Delta > {li['tau']}) per layer",
                              cbar_label="experts", cmap="Blues", annotate=True, ylabel="language"),
                "experts_language",
                f"Experts whose activation frequency in a language exceeds the pivot's by more than {li['tau']} "
                "(target: the language's sequences, reference: the pivot's).", ("delta",)))
        task = self.table("experts_task")
        if task:
            ti = self.s["task_experts"]
            overlap = self.table("expert_overlap") or []
            n_e = self.s["n_experts"]
            for name in ti["tasks"]:
                delta = np.zeros((n_e, len(self.x)))
                mark = np.zeros((n_e, len(self.x)), bool)
                for r in task:
                    if r["task"] == name:
                        delta[r["expert"], r["layer"]] = r["delta"]
                        mark[r["expert"], r["layer"]] = r["is_expert"]
                both = sum(r["n_both"] for r in overlap if r["task"] == name and r["language"] == "any")
                blocks.append(self.fig(
                    plots.heatmap(delta, np.arange(n_e), self.x, title=f"Task experts: {name}",
                                  cbar_label="Delta (task - generic frequency)", cmap="RdBu_r", center=0.0,
                                  ylabel="expert", marks=mark, mark_label=f"task expert (Delta > {ti['tau']})"),
                    f"experts_task_{name}",
                    f"Delta of every expert between {name} data and the generic corpus "
                    f"({ti['tasks'][name].get('generic_language', self.s['pivot'])} data of the main store); "
                    f"circled: task experts. {both} task expert(s) are also language experts.", ("delta",)))
        return blocks

    def evaluation(self) -> list[str]:
        if not self.eval or not self.eval.get("rows"):
            return []
        rows = self.eval["rows"]
        blocks = [html.paragraph(w, cls="note") for w in self.eval.get("warnings", [])]
        for task in dict.fromkeys(r["task"] for r in rows):
            per = [r for r in rows if r["task"] == task and r["language"] != "mean_non_english"]
            mean = next((r["accuracy"] for r in rows if r["task"] == task and r["language"] == "mean_non_english"), None)
            blocks.append(self.fig(
                plots.accuracy_bars([f"{r['language']} ({r['code']})" if r["code"] != r["language"] else r["language"]
                                     for r in per], [r["accuracy"] for r in per], [r["ci_low"] for r in per],
                                    [r["ci_high"] for r in per], mean=mean, title=f"{task}: accuracy per language"),
                f"accuracy_{task}",
                f"{task}: accuracy per language with 95% intervals ({self.eval.get('interval', '')}); items per "
                f"language: {', '.join(str(r['n']) for r in per)}; data: {per[0]['data'] if per else ''}; "
                f"prompts truncated: {sum(r['truncated'] for r in per)}. Per-item records in {self.eval_dir}.", ("wilson",)))
        return blocks

    def steering(self) -> list[str]:
        if not self.steer or not self.steer.get("rows"):
            return []
        rows, s = self.steer["rows"], self.steer
        specs = {d["name"]: d for d in read_steer(self.workdir, "settings.json") or []}
        blocks = [html.paragraph(w, cls="note") for w in s.get("warnings", [])]
        blocks.append(html.paragraph(
            f"{len(specs)} settings and the baseline, evaluated on the same items; compiled programs per setting: "
            + ", ".join(f"{k} {v}" for k, v in s["compiles"].items()) + f"; sweep wall time {s['seconds']:.0f} s. "
            "Change = steered - baseline accuracy; interval: paired bootstrap 95% (items resampled, the same "
            "for both runs); p: exact McNemar test on the discordant items."))

        def kind(name: str) -> str:
            prov = specs.get(name, {}).get("provenance", {})
            return prov.get("control") or ("learned" if prov.get("rule") == "learned" else "main")
        for task in dict.fromkeys(r["task"] for r in rows):
            tr = [r for r in rows if r["task"] == task]
            names = list(dict.fromkeys(r["setting"] for r in tr))
            langs = list(dict.fromkeys(r["language"] for r in tr))
            at = {(r["setting"], r["language"]): r for r in tr}
            delta = np.array([[at[(n, l)]["delta"] if (n, l) in at else np.nan for l in langs] for n in names])
            sig = np.array([[(n, l) in at and at[(n, l)]["p_mcnemar"] < 0.05 for l in langs] for n in names])
            blocks.append(self.fig(
                plots.heatmap(delta, names, langs, title=f"{task}: accuracy change by setting and language",
                              cbar_label="accuracy change", xlabel="language", cmap="RdBu", center=0.0,
                              annotate=True, marks=sig, mark_label="McNemar p < 0.05"),
                f"steer_heatmap_{task}",
                f"{task}: steered minus baseline accuracy per language (non_english: the non-English items pooled); "
                "circled cells differ from the baseline at p < 0.05 (exact McNemar).", ("paired",)))
            pooled = [r for r in tr if r["language"] == "non_english"] or [r for r in tr if r["language"] == langs[0]]
            blocks.append(self.fig(
                plots.delta_bars([r["setting"] for r in pooled], [r["delta"] for r in pooled],
                                 [r["ci_low"] for r in pooled], [r["ci_high"] for r in pooled],
                                 groups=[kind(r["setting"]) for r in pooled],
                                 significant=[r["p_mcnemar"] < 0.05 for r in pooled],
                                 title=f"{task}: change over {pooled[0]['language']}, main settings beside the controls"),
                f"steer_controls_{task}",
                "Each bar a setting, coloured by kind (main rule, random experts, early / late band, language "
                "experts, learned bias), with its paired 95% interval; * p < 0.05. Also shown per setting in the "
                f"table below: the fraction of tokens whose top-k changed in the steered layers.", ("paired",)))
            series: dict[str, list] = {}
            for r in pooled:
                d = specs.get(r["setting"], {})
                if kind(r["setting"]) == "main" and d.get("method") in ("soft", "proportional", "bias"):
                    series.setdefault(d["method"], []).append((d["lam"], r["delta"], r["ci_low"], r["ci_high"]))
            series = {m: tuple(np.array(v).T) for m, v in series.items() if len({x[0] for x in v}) > 1}
            if series:
                blocks.append(self.fig(plots.delta_vs_lambda(series, title=f"{task}: change against lambda"),
                                       f"steer_lambda_{task}", "Accuracy change of the main rule against the "
                                       "steering strength, per method, with paired 95% intervals (shaded).",
                                       ("paired",)))
            masked = sweep_lib.band_table(tr, task=task)  # rule "exclusive", one mask setting per layer range
            if masked["bands"]:
                blocks.append(self.fig(
                    plots.masking_grid(masked["languages"], masked["bands"], masked["delta"], masked["low"],
                                       masked["high"], p=masked["p"],
                                       title=f"{task}: masking the exclusive experts, per layer range"),
                    f"steer_masking_{task}", "Accuracy change per language (rows) with the exclusive experts "
                    "masked in each layer range (columns): paired bootstrap 95% interval and exact McNemar p.",
                    ("paired",)))
        if specs:
            layers = sorted({t[0] for d in specs.values() for t in d["targets"]})
            counts = np.array([[sum(t[0] == l for t in d["targets"]) for l in layers] for d in specs.values()])
            blocks.append(self.fig(
                plots.heatmap(counts, list(specs), layers, title="Steering targets per layer", cbar_label="experts",
                              cmap="Blues", annotate=True),
                "steer_targets", "Number of target experts of each setting per decoder layer."))
            blocks.append(html.table(
                ([n, d["method"], d["lam"], len(d["targets"]), kind(n),
                  ", ".join(f"{k}={v}" for k, v in d["provenance"].items() if k in ("rule", "tau", "band", "seed")),
                  next((f"{r['topk_changed']:.3f}" for r in rows if r["setting"] == n), "")]
                 for n, d in specs.items()),
                ["setting", "method", "lambda", "targets", "kind", "selection", "top-k changed"]))
        return blocks

    def downloads(self) -> list[str]:
        links = self.csv_files()
        if not links:
            return []
        items = "".join(f'<li><a href="{html.esc(rel)}">{html.text(name)}</a></li>' for name, rel in links)
        return [html.paragraph("Tables as CSV, copied beside this page (relative links):"), f"<ul>{items}</ul>"]

    def write(self, name: str, data: bytes) -> bytes:
        """Writes ``report/<name>`` (``name`` relative, "/"-separated) and records it; returns ``data``."""
        storage.atomic_write_bytes(storage.join(self.rdir, *name.split("/")), data)
        self.files[name] = integrity.entry_of(data)
        return data

    def csv_files(self) -> list[tuple[str, str]]:
        """``(label, path relative to report/)`` of every analysis, eval and steer CSV, copied to report/csv."""
        stamp = lineage.read_stamp(self.adir) or {}
        names = sorted(stamp.get("files") or storage.listdir(self.adir))  # the analysis' own, when recorded
        found = [(f"analysis/{n}", lineage.read_output(self.adir, n)) for n in names if n.endswith(".csv")]
        for sub, shown, reader in zip(("eval", "steer"), stage_outputs(self.workdir),
                                      (read_eval, read_steer)):
            if shown:
                found.append((f"{sub}/summary.csv", reader(self.workdir, "summary.csv")))
        out = []
        for label, data in found:
            rel = "csv/" + label.replace("/", "_")
            self.write(rel, data)
            out.append((label, rel))
        return out

    def correlation(self) -> list[str]:
        rows, pts, info = self.table("correlation"), self.table("correlation_points"), self.s.get("correlation")
        if not rows or not info:
            return []
        blocks = []
        label = METRIC_LABELS.get(info["metric"], info["metric"])
        if info.get("band") and pts and "band_divergence" in pts[0]:
            blocks.append(self.fig(
                plots.correlation_scatter([p["band_divergence"] for p in pts], [p["accuracy"] for p in pts],
                                          [p["language"] for p in pts], info["band"],
                                          title=f"Middle-band divergence vs accuracy (decoder layers "
                                                f"{self.x[self.band[0]]}-{self.x[self.band[1]]})",
                                          xlabel=f"mean {label} over the middle band", ylabel="accuracy"),
                "correlation_scatter",
                f"Each point a language; Pearson and Spearman correlation with two-sided p-values and "
                f"{info['bootstrap']['n']}-resample bootstrap {100 * info['bootstrap']['ci']:.0f}% intervals.",
                ("correlation",)))
        per = {}
        for stat in ("pearson", "spearman"):
            rr = [r for r in rows if r["scope"] == "layer" and r["statistic"] == stat]
            if rr:
                per[stat] = tuple(self.curves(rr, k, key="statistic")[stat] for k in ("r", "ci_low", "ci_high"))
        if per:
            blocks.append(self.fig(
                plots.correlation_by_layer(self.x, per, band=self.band,
                                           title="Correlation of divergence with accuracy, per layer"),
                "correlation_by_layer", "Per-layer correlation coefficients with bootstrap intervals (shaded).",
                ("correlation_layer",)))
        return blocks

    def representations(self) -> list[str]:
        rows, info = self.table("representations"), self.s.get("representations")
        if not rows or not info:
            return []
        pivot, label = self.s["pivot"], METRIC_LABELS.get(self.primary, self.primary)

        def by_state(value: str, languages=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            """x = decoder layer after which the state is taken (-1: the embeddings), {language: [states]}."""
            out: dict[str, np.ndarray] = {}
            for r in rows:
                if r[value] is not None and (languages is None or r["language"] in languages):
                    out.setdefault(r["language"], np.full(info["states"], np.nan))[r["state"]] = r[value]
            return np.arange(info["states"]) - 1, out

        band = None
        if self.band is not None:
            band = (self.x[self.band[0]], self.x[self.band[1]])
        x_states, sim = by_state("similarity")
        panels = [(x_states, sim, "similarity"), (x_states, by_state("retrieval_to_pivot")[1], f"retrieval -> {pivot}")]
        div = self.curves(self.table("divergence") or [], "mean", metric=self.primary)
        if div:
            panels.insert(0, (self.x, div, f"routing {label}"))
        blocks = [self.fig(
            plots.stacked_layer_panels(panels, band=band,
                                       title=f"Routing and hidden representations against {pivot}, per layer"),
            "representation_alignment",
            (f"Top: routing divergence from {pivot} (MoE layers). Below: for the hidden state after each decoder layer "
             f"(-1: the embeddings), the mean cosine of parallel sentences with {pivot} after per-language "
             f"mean-centring, and the share of sentences whose nearest {pivot} sentence is their translation. "
             f"States: mean over counted tokens, randomly projected to {info['dim']} dimensions. "
             f"Shaded: the {self.band_text()}."), ("representation_similarity", "retrieval"))]
        _, to_pivot = by_state("lens_pivot_mass")
        _, own = by_state("lens_own_mass", [l for l in sim])
        blocks += [] if not to_pivot else [self.fig(
            plots.stacked_layer_panels([(x_states, to_pivot, f"mass on {pivot} tokens"),
                                        (x_states, own, "mass on own tokens")], band=band,
                                       title="Logit lens: which language each layer decodes to"),
            "logit_lens",
            f"Each layer's residual stream through the final norm and unembedding: the mean probability on tokens of "
            f"{pivot} and on tokens of the sentence's own language (a token belongs to a language when at least "
            f"{(info.get('hidden_states') or {}).get('lens_token_share', 0.5)} of its corpus occurrences are there).",
            ("logit_lens",))]
        corr = self.table("representation_correlation")
        if corr:
            c = info["correlation"]
            blocks += [html.paragraph(
                f"Which alignment goes with accuracy, over {len(c['languages'])} languages, middle band (hidden states "
                f"{c['band_states'][0]}-{c['band_states'][-1]}): routing alignment is {c['routing_alignment']}, "
                f"representation alignment {c['representation_alignment']}; the partial rows hold the other fixed."),
                html.table([[r["alignment"], r["statistic"], r["r"], r["ci_low"], r["ci_high"], r["p"], r["n"]]
                            for r in corr], ["alignment", "statistic", "r", "CI low", "CI high", "p", "languages"])]
        elif info.get("correlation_skipped"):
            blocks.append(html.paragraph(f"No correlation with accuracy: {info['correlation_skipped']}"))
        return blocks

    def metadata(self) -> list[str]:
        meta = {k: v for k, v in self.meta.items() if k != "languages"}
        langs = self.meta.get("languages", {})
        keys = sorted({k for v in langs.values() if isinstance(v, dict) for k in v})
        pool = self.s.get("language_pool") or {"languages": self.s["languages"]}
        analysed = set(pool["languages"])
        blocks = [html.paragraph("Language pool (shared/exclusive labels, band and similarities depend on it)"),
                  html.mapping_table({"analysed languages": ", ".join(pool["languages"]),
                                      "chosen from": pool.get("source", "store"),
                                      "store languages left out": ", ".join(pool.get("ignored", [])) or "none",
                                      "requested but not in the store": ", ".join(pool.get("missing", [])) or "none"}),
                  html.paragraph("Routing store metadata"), html.mapping_table(meta)]
        if langs:
            blocks += [html.paragraph("Per-language summary"),
                       html.table(([l, "yes" if l in analysed else "no"]
                                   + [langs[l].get(k, "") if isinstance(langs[l], dict) else "" for k in keys]
                                   for l in langs), ["language", "analysed"] + keys)]
        blocks += [html.paragraph("Analysis configuration"), html.mapping_table(self.s.get("config", {})),
                   html.paragraph("Tables (CSV and JSON in " + self.adir + "): " + ", ".join(self.s.get("tables", [])))]
        return blocks

    def intro(self) -> list[str]:
        s = self.s
        facts = {"model": self.meta.get("model", "unknown"), "dataset": self.meta.get("dataset", "unknown"),
                 "store": s["store"], "pivot": s["pivot"], "languages": ", ".join(s["languages"]),
                 "MoE layers x experts (top-k)": f"{s['n_layers']} x {s['n_experts']} (top-{s['top_k']})",
                 "primary metric": self.primary, "middle band": self.band_text().removeprefix("middle band: ")}
        if s.get("correlation", {}).get("band"):
            c = s["correlation"]["band"]
            facts["middle-band correlation with accuracy"] = (
                f"Pearson r = {c['pearson']['r']:.3f} (p = {c['pearson']['p']:.2g}), "
                f"Spearman rho = {c['spearman']['r']:.3f} (p = {c['spearman']['p']:.2g}), n = {c['pearson']['n']}")
        if s.get("accuracy_source"):
            facts["accuracies of the correlation"] = s["accuracy_source"]
        out = [html.mapping_table(facts)]
        if s.get("skipped"):
            out.append(html.paragraph("Skipped analyses: " + "; ".join(f"{k}: {v}" for k, v in s["skipped"].items()),
                                      cls="note"))
        return out


SECTIONS: tuple[tuple[str, str, Callable[[_Report], list[str]]], ...] = (
    ("Divergence from the pivot", "divergence", _Report.divergence),
    ("Routing entropy", "entropy", _Report.entropy),
    ("Token consistency", "consistency", _Report.consistency),
    ("Language similarity", "similarity", _Report.similarity),
    ("Expert specialisation", "experts", _Report.experts),
    ("Evaluation accuracy", "accuracy", _Report.evaluation),
    ("Correlation with accuracy", "correlation", _Report.correlation),
    ("Hidden representations", "representations", _Report.representations),
    ("Router steering", "steering", _Report.steering),
    ("Downloads", "downloads", _Report.downloads),
    ("Run metadata", "metadata", _Report.metadata),
)


def run(config, workdir: str) -> str:
    """Renders ``workdir/report/index.html`` (and the PNGs beside it); returns the HTML path.

    First the inputs are checked (``moe_jax.artifacts.lineage``): outputs of another model than ``config.model``
    are refused (``model_problems``), and so is an analysis that is unfinished, damaged or computed from
    other inputs than the current ones (``stage_outputs.require_current_analysis``: the registry runs the
    analyze stage first when it is stale). ``report/provenance.json`` records the digests of what the page shows.
    ``config``: the run's Options (``moe_jax.pipeline.options``), a config, or its report section alone."""
    config = options_lib.of_section(config, "report")
    cfg = config.report
    problems = model_problems(config, workdir)
    if problems:
        raise StageError("the report would show outputs of another model than config.model:\n  "
                         + "\n  ".join(problems))
    problems = output_problems(workdir)  # before the analysis, which may take accuracies from eval/summary.json
    if problems:
        raise StageError("the report would show outputs that their records no longer support:\n  "
                         + "\n  ".join(problems))
    require_current_analysis(workdir, "report")  # the registry runs analyze first when it is stale
    rep = _Report(workdir, cfg)
    lineage.unpublish(rep.rdir)  # from here until the last write, no reader trusts report/
    storage.makedirs(rep.rdir)
    sections = []
    for title, anchor, fn in SECTIONS:
        blocks = fn(rep)
        if blocks:
            sections.append((title, anchor, blocks))
    warning = rep.meta.get("warning")
    doc = html.page(cfg.title, sections, warning=str(warning) if warning else None, intro=rep.intro())
    rep.write(PAGE, doc.encode("utf-8"))
    pngs = [n for n in rep.files if n.endswith(".png")]
    for name in storage.listdir(rep.rdir):  # figures of an earlier run that this one did not draw
        if name.endswith(".png") and name not in rep.files:
            storage.remove(storage.join(rep.rdir, name))
    lineage.write_stamp(rep.rdir, lineage.describe(shown_inputs(workdir), workdir), files=rep.files)  # last
    path = storage.join(rep.rdir, PAGE)
    log.info("report: wrote %s with %d figures", path, len(pngs))
    return path


# -- provenance and preflight ------------------------------------------------------------------------

def shown_inputs(workdir: str) -> dict[str, str]:
    """``{name: path}`` of what the page shows (recorded in ``report/provenance.json``)."""
    return {"analysis summary": storage.join(wd.analysis_dir(workdir), "summary.json"),
            "analysis provenance": storage.join(wd.analysis_dir(workdir), lineage.STAMP),
            "routing store": wd.routing_dir(workdir), "eval records": wd.eval_dir(workdir),
            "eval summary": storage.join(wd.eval_dir(workdir), "summary.json"),
            "steer summary": storage.join(wd.steer_dir(workdir), "summary.json")}


def stage_outputs(workdir: str) -> tuple[bool, bool]:
    """Whether the eval and the steer stage left outputs for the page (a summary or its record)."""
    return tuple(any(storage.exists(storage.join(d, n)) for n in ("summary.json", lineage.STAMP))
                 for d in (wd.eval_dir(workdir), wd.steer_dir(workdir)))


def output_problems(workdir: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Eval and steer outputs (not those of the stages in ``skip``) that the page cannot show: an
    unfinished or edited summary, or records changed, damaged or deleted since it was written."""
    problems = []
    for stage, shown, reader, names in zip(("eval", "steer"), stage_outputs(workdir),
                                           (read_eval, read_steer), (EVAL_SUMMARY_FILES, STEER_OUTPUT_FILES)):
        if shown and stage not in skip:
            problems += collect_problems([lambda: [reader(workdir, n) for n in names]])
    return problems


def model_problems(config, workdir: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """Outputs the page would show (routing store, evaluation, steering sweep; not those of the stages
    in ``skip``) that record another model than ``config.model``, and the command that redoes them
    (``model_identity.model_problems``)."""
    model = options_lib.of_section(config, "report").get("model")  # None: no model section to compare with
    return model_identity.model_problems(model, workdir, "report", [
        (stage, where(workdir), manifest, key) for stage, where, manifest, key in model_identity.MODEL_OUTPUTS
        if stage not in skip])


def reads(config) -> tuple[str, ...]:
    """The upstream outputs the page shows that must be current (``registry.READS``: the registry runs
    a stale one's stage first): the analysis."""
    return ("analyze",)


def preflight(config, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The report stage's problems, found without reading tables: no analysis to show (when analyze
    does not run first), and outputs of another model than ``config.model`` (those of stages not running
    first). A stale analysis is the registry's to decide: it runs the analyze stage first (``schedule``)."""
    config = options_lib.of_section(config, "report")  # unknown report fields: refused here

    def analysis():
        if "analyze" in before:
            return None
        if read_json(storage.join(wd.analysis_dir(workdir), "summary.json"), invalid_ok=True) is None:
            return (f"no analysis at {wd.analysis_dir(workdir)}; run the analyze stage first "
                    "(e.g. --stages=analyze,report)")
    return collect_problems([analysis, lambda: model_problems(config, workdir, before),
                             lambda: output_problems(workdir, before)])

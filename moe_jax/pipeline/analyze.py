"""The ``analyze`` stage: routing store -> tables (CSV + JSON) and ``summary.json`` under ``workdir/analysis``.

Called by ``moe_jax.launch`` as ``run(config, workdir)``; ``config`` is the full run config (its
``analysis`` section is used) or the section itself. Reads the store at ``workdir/routing`` and,
for task experts, the stores of ``analysis.task_stores`` or else those the collect stage wrote under
``workdir/tasks/<name>`` for ``config.tasks`` (see ``resolve_task_stores``).

The pool of languages is the requested one, not every language a store has accumulated over
reruns: ``config.data.languages`` when set, else the store's ``meta["requested_languages"]``
(what the last collect asked for), else the whole store (``select_languages``). The pool is
recorded in the summary (``language_pool``): shared/exclusive labels, the band and similarities
depend on it.

Analyses whose inputs are missing (a store collected without the pivot, fewer than 3 languages, no
``token_topk``, no accuracies, no task stores) are skipped with a logged message and listed in the
summary's ``skipped``; bad inputs (mismatched shapes, negative distributions) raise a clear error,
and so does a missing essential: the pivot requested in ``config.data.languages`` but not in the
store, or any store file listed in its ``meta.json`` missing or damaged (naming the file and the
collect command that repairs it).

Layer positions (``layer``) are 0-indexed positions on the store's MoE-layer axis;
``decoder_layer`` is the decoder-layer index of that MoE layer (``meta["moe_layer_ids"]``).

The workdir may be local or ``gs://`` (every read and write goes through ``moe_jax.io.storage``).
``analysis/`` is published like a manifest directory: the old ``provenance.json`` is removed first,
then the tables and ``summary.json`` are written, then ``provenance.json`` LAST, recording the inputs'
digests and each file's size and sha256 (``moe_jax.artifacts.lineage``). Readers (``staleness``, the report and
steer stages, through ``moe_jax.artifacts.stage_outputs``) trust ``analysis/`` only with its ``provenance.json``
and check ``summary.json`` against it.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import ml_collections
import numpy as np
from tqdm import tqdm

from moe_jax.analysis import (accuracy as accuracy_lib, consistency, correlation, divergence, layer_entropy,
                              experts, representations, similarity, tables)
from moe_jax.analysis.inputs import (Inputs, Skip, check_task_store, load_inputs, parse_task_stores,
                                     resolve_task_stores, task_language)
from moe_jax.analysis.validate import normalize_band
from moe_jax.data.corpora import parse_languages
from moe_jax.artifacts import lineage
from moe_jax.artifacts.stage_outputs import ANALYSIS_SUMMARY as SUMMARY, analysis_staleness
from moe_jax.pipeline import model_identity
from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline.common import collect_problems
from moe_jax.routing import statistic_table as stat_table
from moe_jax.artifacts.routing_store import read_meta
from moe_jax.artifacts.routing_store import lang_path, read_store, repair_hint

log = logging.getLogger(__name__)



def default_config() -> ml_collections.ConfigDict:
    """The ``config.analysis`` section (fields, defaults and checks: ``options.AnalysisOptions``)."""
    return options_lib.section_config(options_lib.AnalysisOptions)


def options(config: Any) -> options_lib.AnalysisOptions:
    """``config.analysis``'s options (``Options.analysis``; ``config`` may be the section alone or
    None), refused with the first of their problems."""
    return options_lib.of_section(config, "analysis").checked("analysis").analysis


def requested_languages(opts: options_lib.Options) -> list[str] | None:
    """``config.data.languages`` (validated codes), the language pool asked for; None: not given."""
    return parse_languages(opts.data.languages) if opts.data.languages else None


def task_store_paths(opts: options_lib.Options, workdir: str) -> tuple[dict[str, str], str]:
    """The task stores of ``analysis.task_stores``, else of ``config.tasks`` (``resolve_task_stores``)."""
    return resolve_task_stores(opts.analysis.task_stores, None if opts.tasks is None else list(opts.tasks), workdir)


# -- analyses: each returns {table name: records} and a summary piece, or raises Skip ------------

def seq_statistic(inp: Inputs, cfg: options_lib.AnalysisOptions) -> str:
    """The store key of ``analysis.routing_statistic`` (a known one: ``options.analysis_problems``);
    refuses a store collected before it existed."""
    key = stat_table.STATISTICS[cfg.routing_statistic].seq_key
    missing = [l for l in inp.languages if key not in inp.data[l]]
    if missing:
        raise ValueError(f"analysis.routing_statistic={cfg.routing_statistic!r}: the store {inp.store} has no {key} "
                         f"for {missing} (collected before it existed); run the collect stage again with "
                         "collect.overwrite=True")
    return key


def _divergence(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    inp.require_pivot("divergence")
    ids = inp.get("seq_ids")
    key = seq_statistic(inp, cfg)
    rows, agg_rows, curves = [], [], {}
    for metric in cfg.metrics:
        pairs = divergence.pivot_divergence_pairs(inp.get(key), inp.pivot, metric, seq_ids=ids)
        agg = divergence.aggregate_divergence(inp.get("topk_counts"), inp.get("token_totals"), inp.pivot, metric)
        curves[metric] = {}
        for lang, v in pairs.items():
            mean, sem = divergence.pair_mean_sem(v)
            curves[metric][lang] = mean
            rows += [dict(language=lang, **inp.layer_cols(l), metric=metric, mean=mean[l], sem=sem[l],
                          n_pairs=v.shape[0]) for l in range(inp.n_layers)]
            agg_rows += [dict(language=lang, **inp.layer_cols(l), metric=metric, value=agg[lang][l])
                         for l in range(inp.n_layers)]
    state["curves"] = curves[cfg.metrics[0]]
    return ({"divergence": rows, "divergence_aggregate": agg_rows},
            {"metrics": list(cfg.metrics), "routing_statistic": cfg.routing_statistic})


def _baseline(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    rows, key = [], seq_statistic(inp, cfg)
    for lang in inp.languages:
        a = inp.data[lang]
        if a[key].shape[0] < 2:
            log.warning("split-half baseline: %s has fewer than 2 sequences", lang)
            continue
        kw = dict(n_repeats=cfg.split_half_repeats, seed=cfg.split_half_seed, return_repeats=True)
        for metric in cfg.metrics:
            for mode, d, w in (("pairs", a[key], None),
                               ("means", a["seq_topk_freq"] / inp.top_k, a["seq_lengths"])):
                r = divergence.split_half_baseline(d, metric, mode, weights=w, **kw)
                rows += [dict(language=lang, **inp.layer_cols(l), metric=metric, mode=mode, mean=r[:, l].mean(),
                              std=r[:, l].std()) for l in range(inp.n_layers)]
    if not rows:
        raise Skip("split-half baseline: no language has 2 or more sequences")
    return {"baseline": rows}, {"split_half": {"repeats": cfg.split_half_repeats, "seed": cfg.split_half_seed,
                                               "modes": {"pairs": f"per-pair, on {key}",
                                                         "means": "half means, on seq_topk_freq / k"}}}


def _band(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    override = cfg.middle_band
    if override is not None and all(v is None for v in override):
        override = None  # "--config.analysis.middle_band=None" parses as (None,)
    if override is None and "curves" not in state:
        raise Skip("middle band: no divergence curve to detect it from and no middle_band override")
    if override is not None:
        s, e = normalize_band(override, inp.n_layers, "analysis.middle_band")
    else:
        s, e = divergence.detect_middle_band(state["curves"], cfg.band_threshold)
    state["band"] = (s, e)
    return {}, {"middle_band": {"start": s, "end": e, "source": "override" if override is not None else "detected",
                                "threshold": cfg.band_threshold, "decoder_layers": [inp.layer_ids[s], inp.layer_ids[e]]}}


def _entropy(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    rows, log_e = [], np.log(inp.n_experts)
    for lang in inp.languages:
        a = inp.data[lang]
        h = layer_entropy.routing_entropy(a["seq_token_entropy"], a["seq_lengths"])
        u = layer_entropy.utilization_entropy(a["topk_counts"])
        rows += [dict(language=lang, **inp.layer_cols(l), token_entropy=h[l], token_entropy_norm=h[l] / log_e,
                      utilization_entropy=u[l], utilization_entropy_norm=u[l] / log_e) for l in range(inp.n_layers)]
    return {"entropy": rows}, {}


def _consistency(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    have = [l for l in inp.languages if "token_topk" in inp.data[l]]
    if not have:
        raise Skip("token consistency: the store has no token_topk (collect with per-token top-k on)")
    rows = []
    for lang in have:
        a = inp.data[lang]
        j = consistency.token_consistency(a["token_topk"], a["seq_lengths"], cfg.consistency_pairs,
                                          cfg.consistency_seed, cfg.consistency_scope)
        rows += [dict(language=lang, **inp.layer_cols(l), jaccard=j[l], n_pairs=cfg.consistency_pairs)
                 for l in range(inp.n_layers)]
    missing = [l for l in inp.languages if l not in have]
    if missing:
        log.info("token consistency: no token_topk for %s", missing)
    return {"consistency": rows}, {"consistency": {"pairs": cfg.consistency_pairs, "seed": cfg.consistency_seed,
                                                   "scope": cfg.consistency_scope, "languages_without": missing}}


def parse_bands(spec: str, n_layers: int, band: tuple[int, int] | None) -> dict[str, tuple[int, int]]:
    """Named layer bands: ``"name:start-end,..."`` (inclusive positions) or, for "", the automatic
    ``all`` plus ``early`` / ``middle`` / ``late`` around the middle band when it is known."""
    if spec:
        out = {}
        for item in spec.split(","):
            try:
                name, rng = item.split(":")
                out[name.strip()] = normalize_band(rng.split("-"), n_layers, f"similarity band {item!r}")
            except ValueError as e:
                raise ValueError(f"analysis.similarity_bands: bad item {item!r} (expected name:start-end): {e}") from None
        return out
    out = {"all": (0, n_layers - 1)}
    if band is not None:
        s, e = band
        if s > 0:
            out["early"] = (0, s - 1)
        out["middle"] = (s, e)
        if e < n_layers - 1:
            out["late"] = (e + 1, n_layers - 1)
    return out


def _similarity(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    if len(inp.languages) < 3:
        raise Skip(f"similarity and clustering: need at least 3 languages, have {inp.languages}")
    util = np.stack([a["topk_counts"] / a["token_totals"][:, None] for a in map(inp.data.get, inp.languages)])
    per_layer = similarity.layer_similarity(util, cfg.similarity_metric)
    X = len(inp.languages)
    layer_rows = [dict(**inp.layer_cols(l), language_a=inp.languages[i], language_b=inp.languages[j],
                       similarity=per_layer[l, i, j]) for l in range(inp.n_layers) for i in range(X) for j in range(X)]
    band_rows, cluster_rows = [], []
    bands = parse_bands(cfg.similarity_bands, inp.n_layers, state.get("band"))
    for name, (s, e) in bands.items():
        sim = similarity.band_similarity(util, (s, e), cfg.similarity_metric)
        band_rows += [dict(band=name, start=s, end=e, language_a=inp.languages[i], language_b=inp.languages[j],
                           similarity=sim[i, j]) for i in range(X) for j in range(X)]
        z = similarity.cluster_languages(sim, cfg.cluster_method)
        label = lambda n: inp.languages[int(n)] if n < X else f"cluster{int(n)}"
        cluster_rows += [dict(band=name, step=t, left=int(a), right=int(b), distance=d, size=int(n),
                              left_label=label(a), right_label=label(b)) for t, (a, b, d, n) in enumerate(z)]
    return ({"similarity_layers": layer_rows, "similarity_bands": band_rows, "clustering": cluster_rows},
            {"similarity": {"metric": cfg.similarity_metric, "bands": bands, "cluster_method": cfg.cluster_method,
                            "languages": inp.languages}})


def rule_statistic(cfg, rule: str, data: dict, where: str) -> tuple[dict, dict]:
    """``({language: [layers, experts]}, {"statistic", "pooling"})``: ``analysis.statistic`` x
    ``analysis.pooling`` (or ``rule``'s published default) of every language of ``data``."""
    statistic, pooling = stat_table.resolve(rule, cfg.statistic, cfg.pooling, "analysis")
    for lang, arrays in data.items():
        stat_table.check_available(arrays, statistic, pooling, where, lang, "analysis.statistic / analysis.pooling")
    return ({l: stat_table.pooled(a, statistic, pooling) for l, a in data.items()},
            {"statistic": statistic, "pooling": pooling})


def _language_experts(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    inp.require_pivot("language experts")
    freqs, how = rule_statistic(cfg, "language", {l: inp.data[l] for l in inp.languages}, inp.store)
    res = experts.language_experts(freqs, inp.pivot, cfg.experts.language_tau)
    state["language_experts"] = res
    rows = [dict(language=lang, **inp.layer_cols(l), expert=e, delta=r.scores[l, e], is_expert=bool(r.mask[l, e]))
            for lang, r in res.items() for l in range(inp.n_layers) for e in range(inp.n_experts)]
    return {"experts_language": rows}, {"language_experts": {
        "tau": cfg.experts.language_tau, **how, "count": {l: int(r.mask.sum()) for l, r in res.items()}}}


def _shared_exclusive(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    if len(inp.languages) < 2:
        raise Skip("shared/exclusive experts: need at least 2 languages in the pool")
    freqs, how = rule_statistic(cfg, "shared", {l: inp.data[l] for l in inp.languages}, inp.store)
    r = experts.shared_exclusive_experts(freqs, cfg.experts.shared_top_k, cfg.experts.shared_thr)
    rows = []
    for x, lang in enumerate(r.languages):
        for l, e in zip(*np.nonzero(r.in_topk[x])):
            label = "exclusive" if r.exclusive_mask[x, l, e] else "shared" if r.shared_mask[l, e] else "other"
            rows.append(dict(language=lang, **inp.layer_cols(int(l)), expert=int(e), freq=freqs[lang][l, e],
                             share=r.share[x, l, e], label=label))
    return {"experts_pool": rows}, {"shared_exclusive": {
        "pool": list(r.languages), "top_k": r.top_k, "thr": r.thr, **how,
        "n_shared": int(r.shared_mask.sum()),
        "n_exclusive": {l: int(r.exclusive_mask[x].sum()) for x, l in enumerate(r.languages)}}}


def _task_experts(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    stores, origin = state["task_stores"]
    if not stores:
        raise Skip(f"task experts: no analysis.task_stores given and no task store in {origin} "
                   "(set config.tasks and run the collect stage)")
    if not inp.has_pivot:
        raise Skip(f"task experts: the generic corpus is the pivot's data and {inp.pivot!r} is not in the store")
    rows, overlap_rows, summary = [], [], {}
    lang_sets = state.get("language_experts", {})
    for task, path in stores.items():
        tmeta, tdata = read_store(path)
        if not tdata:
            raise ValueError(f"task store {task!r} ({path}) holds no complete language; run the collect stage")
        check_task_store(task, path, tmeta, inp)
        lang = task_language(task, path, tdata, inp)
        generic, how = rule_statistic(cfg, "task", {lang: inp.data[lang]}, inp.store)
        task_freq, _ = rule_statistic(cfg, "task", {lang: tdata[lang]}, path)
        res = experts.task_experts(task_freq[lang], generic[lang], cfg.experts.task_tau)
        rows += [dict(task=task, **inp.layer_cols(l), expert=e, delta=res.scores[l, e], is_expert=bool(res.mask[l, e]))
                 for l in range(inp.n_layers) for e in range(inp.n_experts)]
        targets = dict(lang_sets)
        if lang_sets:
            targets["any"] = experts.ExpertSets(np.zeros_like(res.scores),
                                                np.any([s.mask for s in lang_sets.values()], axis=0), np.nan)
        n_both = 0
        for other, sets in targets.items():
            ov = experts.expert_overlap(res, sets)
            overlap_rows += [dict(task=task, language=other, **inp.layer_cols(l), n_task=ov["n_a"][l],
                                  n_language=ov["n_b"][l], n_both=ov["n_both"][l], both=ov["both"][l].tolist())
                             for l in range(inp.n_layers)]
            n_both = int(ov["n_both"].sum()) if other == "any" else n_both
        summary[task] = {"store": path, "dataset": tmeta.get("dataset"), "language": lang,
                         "generic_language": lang, **how, "n_task_experts": int(res.mask.sum()),
                         "n_also_language_experts": n_both}
    tabs = {"experts_task": rows}
    if overlap_rows:
        tabs["expert_overlap"] = overlap_rows
    return tabs, {"task_experts": {"tau": cfg.experts.task_tau, "stores_from": origin, "tasks": summary}}


def _accuracy(inp: Inputs, cfg, state: dict) -> dict[str, float]:
    """``{FLORES code: accuracy}`` of ``analysis.accuracy``, else the eval stage's Belebele accuracies
    (``workdir/eval/summary.json``); the source is logged and kept in ``state["accuracy_source"]``, and
    which accuracy languages are outside the pool and which pool languages lack an accuracy in
    ``state["accuracy_coverage"]``."""
    values, source = accuracy_lib.load_accuracy(cfg.accuracy), "analysis.accuracy"
    if not values and state.get("eval_summary"):
        values = accuracy_lib.from_eval_summary(state["eval_summary"])
        source = f"eval stage: {accuracy_lib.EVAL_TASK} accuracies in {state['eval_summary']}"
    acc, renamed = accuracy_lib.to_flores(values, known=(inp.meta.get("languages") or {}).keys() | set(inp.languages),
                                          source=source)
    if not acc:
        return acc
    state["accuracy_source"] = source
    log.info("correlation: accuracies from %s", source)
    outside = [l for l in acc if l not in inp.languages]
    without = [l for l in inp.languages if l != inp.pivot and l not in acc]
    if outside:
        log.warning("correlation: accuracies of %s are not used: not among the analysed languages %s",
                    outside, inp.languages)
    if without:
        log.warning("correlation: no accuracy for analysed language(s) %s", without)
    state["accuracy_coverage"] = {"renamed": renamed, "not_analysed": outside, "without_accuracy": without}
    return acc


def _correlation(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    acc = _accuracy(inp, cfg, state)
    if not acc:
        raise Skip("correlation: no analysis.accuracy given and no Belebele accuracies from the eval stage")
    if "curves" not in state:
        raise Skip("correlation: no divergence curves")
    langs = [l for l in state["curves"] if l in acc]
    if len(langs) < correlation.MIN_LANGUAGES:
        cov = state["accuracy_coverage"]
        raise Skip(f"correlation: needs at least {correlation.MIN_LANGUAGES} non-pivot languages with an accuracy, "
                   f"have {langs} (accuracies outside the pool: {cov['not_analysed']}; analysed languages "
                   f"without accuracy: {cov['without_accuracy']})")
    b = cfg.bootstrap
    state["accuracy"] = acc
    res = correlation.divergence_accuracy_correlation(state["curves"], acc, state.get("band"), b.n, b.seed, b.ci)
    rows = []
    for stat, per in res["per_layer"].items():
        rows += [dict(scope="layer", **inp.layer_cols(l), statistic=stat, **_corr_cols(c)) for l, c in enumerate(per)]
    if res["band"] is not None:
        s, e = res["band_range"]
        rows += [dict(scope="band", layer=None, decoder_layer=None, band_start=s, band_end=e, statistic=stat,
                      **_corr_cols(c)) for stat, c in res["band"].items()]
    points = [dict(language=l, accuracy=a, **({"band_divergence": res["band_divergence"][i]}
                                                if res["band_divergence"] is not None else {}))
              for i, (l, a) in enumerate(zip(res["languages"], res["accuracy"]))]
    band = {s: c.to_dict() for s, c in res["band"].items()} if res["band"] is not None else None
    return ({"correlation": rows, "correlation_points": points,
             "accuracy": [dict(language=l, accuracy=a, analysed=l in inp.languages) for l, a in acc.items()]},
            {"correlation": {"metric": cfg.metrics[0], "languages": res["languages"], "band": band,
                             "bootstrap": b.to_dict()}})


REPRESENTATION_CURVES = ("similarity", "retrieval_from_pivot", "retrieval_to_pivot")
LENS_COLUMNS = ("lens_pivot_mass", "lens_own_mass")


def _representations(inp: Inputs, cfg, state: dict) -> tuple[dict, dict]:
    """Per language and hidden state (``state`` 0 the embeddings, ``state`` d the output of decoder layer
    d - 1): parallel-sentence similarity and retrieval to and from the pivot, and the logit lens's mean
    mass on the pivot's and the language's own tokens; over the middle band, which of routing and
    representation alignment goes with accuracy (``representations.alignment_accuracy``)."""
    if not inp.meta.get("hidden_states"):  # not asked for at collection: nothing to do, nothing skipped
        log.info("representations: the store has no hidden states (--config.collect.hidden_states=True collects them)")
        return {}, {}
    missing = [l for l in inp.languages if "seq_hidden" not in inp.data[l]]
    if missing:
        raise Skip(f"representations: no hidden states for {missing} (collect them with "
                   "--config.collect.hidden_states=True)")
    inp.require_pivot("representations")
    pooled = {l: np.swapaxes(inp.data[l]["seq_hidden"].astype(np.float64), 0, 1) for l in inp.languages}  # [D, N, P]
    curves = representations.alignment_curves(pooled, inp.pivot)
    n_states = pooled[inp.pivot].shape[0]
    rows = []
    for lang in inp.languages:
        lens = inp.data[lang].get("seq_lens_mass")  # [N, D, 2]; absent when collected without the logit lens
        mass = np.full((n_states, 2), np.nan) if lens is None else lens.astype(np.float64).mean(0)
        c = curves.get(lang)  # None for the pivot: its alignment with itself is not a measurement
        rows += [dict(language=lang, state=d, decoder_layer=d - 1,
                      **{k: None if c is None else float(c[k][d]) for k in REPRESENTATION_CURVES},
                      **{k: None if lens is None else float(mass[d, i]) for i, k in enumerate(LENS_COLUMNS)})
                 for d in range(n_states)]
    piece = {"states": n_states, "dim": int(pooled[inp.pivot].shape[-1]), "hidden_states": inp.meta.get("hidden_states"),
             "correlation": None}
    tabs = {"representations": rows}
    if "band" not in state or not state.get("accuracy") or "curves" not in state:
        piece["correlation_skipped"] = ("no middle band, divergence curves or accuracies to correlate with "
                                        "(see the correlation analysis)")
    else:
        s, e = state["band"]
        band_states = list(range(inp.layer_ids[s] + 1, inp.layer_ids[e] + 2))  # after the band's decoder layers
        rep_align = {l: float(c["similarity"][band_states].mean()) for l, c in curves.items()}
        routing_align = {l: -float(v[s: e + 1].mean()) for l, v in state["curves"].items()}
        try:
            res = representations.alignment_accuracy(routing_align, rep_align, state["accuracy"],
                                                     cfg.bootstrap.n, cfg.bootstrap.seed)
        except ValueError as err:
            piece["correlation_skipped"] = str(err)
        else:
            corr_rows = [dict(alignment=name, statistic=stat, **_corr_cols(c))
                         for name in ("routing", "representation") for stat, c in res[name].items()]
            corr_rows += [dict(alignment=name, statistic="partial_pearson", **res[name].to_dict())
                          for name in ("routing_given_representation", "representation_given_routing")]
            tabs["representation_correlation"] = corr_rows
            piece["correlation"] = {"languages": res["languages"], "band_states": band_states,
                                    "routing_alignment": "minus the band's mean divergence from the pivot",
                                    "representation_alignment": "the band's mean parallel-sentence similarity"}
    return tabs, {"representations": piece}


def _corr_cols(c: correlation.Correlation) -> dict:
    d = c.to_dict()
    d.pop("statistic")
    return d


# every table an analysis may write (stale copies from an earlier run are removed)
TABLES = ("divergence", "divergence_aggregate", "baseline", "entropy", "consistency", "similarity_layers",
          "similarity_bands", "clustering", "experts_language", "experts_pool", "experts_task", "expert_overlap",
          "correlation", "correlation_points", "accuracy", "representations", "representation_correlation")

ANALYSES: tuple[tuple[str, Callable], ...] = (
    ("divergence", _divergence), ("split_half_baseline", _baseline), ("middle_band", _band),
    ("entropy", _entropy), ("consistency", _consistency), ("similarity", _similarity),
    ("language_experts", _language_experts), ("shared_exclusive", _shared_exclusive),
    ("task_experts", _task_experts), ("correlation", _correlation), ("representations", _representations))


def run(config, workdir: str) -> dict[str, Any]:
    """Runs every analysis on ``workdir/routing``; writes ``workdir/analysis/*``; returns the summary.
    ``config``: the run's Options (``moe_jax.pipeline.options``), a config, or its analysis section alone.
    Bad settings (no metrics, an unknown statistic or pooling) are refused before anything is written."""
    config = options_lib.of_section(config, "analysis").checked("analysis")
    cfg = config.analysis
    store = wd.routing_dir(workdir)
    out_dir = wd.analysis_dir(workdir)
    inp = load_inputs(store, cfg.pivot, requested_languages(config))  # a listed file missing or damaged: raises
    if cfg.pivot in inp.pool.get("missing", ()):  # requested, never collected: the headline analyses need it
        raise FileNotFoundError(f"the pivot language {cfg.pivot!r} is requested ({inp.pool['source']}) but the "
                                f"routing store has no {lang_path(store, cfg.pivot)}; {repair_hint(store)}")
    summary: dict[str, Any] = {
        "store": store, "pivot": cfg.pivot, "languages": inp.languages, "language_pool": inp.pool,
        "n_layers": inp.n_layers, "n_experts": inp.n_experts, "top_k": inp.top_k, "moe_layer_ids": inp.layer_ids,
        "primary_metric": cfg.metrics[0], "config": cfg.to_dict(), "skipped": {}, "tables": []}
    state: dict[str, Any] = {"task_stores": task_store_paths(config, workdir),
                             "eval_summary": storage.join(wd.eval_dir(workdir), "summary.json")}
    inputs, fingerprint = lineage_record(config, cfg, workdir, state["task_stores"][0])
    lineage.unpublish(out_dir)  # from here until the last write, no reader trusts analysis/
    storage.makedirs(out_dir)
    files: dict[str, dict] = {}  # {file name: record} for provenance.json
    for name, fn in tqdm(ANALYSES, desc="analyze", leave=False):
        try:
            tabs, piece = fn(inp, cfg, state)
        except Skip as e:
            log.warning("analyze: skipping %s", e)
            summary["skipped"][name] = str(e)
            continue
        for tname, records in tabs.items():
            files.update(tables.write_table(out_dir, tname, records))
            summary["tables"].append(tname)
        summary.update(piece)
    for name in set(TABLES) - set(summary["tables"]):  # a skipped analysis leaves no stale table behind
        for ext in ("csv", "json"):
            stale = storage.join(out_dir, f"{name}.{ext}")
            if storage.exists(stale):
                storage.remove(stale)
    if "curves" in state and "band" in state:
        s, e = state["band"]
        summary["band_divergence"] = {l: float(v[s: e + 1].mean()) for l, v in state["curves"].items()}
    if "accuracy_coverage" in state:
        summary["accuracy_coverage"] = state["accuracy_coverage"]
        summary["accuracy_source"] = state["accuracy_source"]
    files[SUMMARY] = tables.write_json(storage.join(out_dir, SUMMARY), summary)
    lineage.write_stamp(out_dir, inputs, fingerprint, files)  # last: what the files above were computed from
    log.info("analyze: wrote %d tables to %s (skipped: %s)", len(summary["tables"]), out_dir,
             sorted(summary["skipped"]) or "none")
    return tables.to_jsonable(summary)


# -- provenance and preflight ------------------------------------------------------------------------

def lineage_record(config: options_lib.Options, cfg: options_lib.AnalysisOptions, workdir: str,
                   task_stores: dict[str, str]) -> tuple[dict, str]:
    """What an analysis is computed from (``moe_jax.artifacts.lineage``): the digests of the routing store, the
    task stores and the accuracies' file (``analysis.accuracy`` as a path, else the eval stage's
    summary), and the fingerprint of the analysis settings and requested languages."""
    paths = {"routing store": wd.routing_dir(workdir)}
    paths.update({f"task store {name}": path for name, path in task_stores.items()})
    if isinstance(cfg.accuracy, str) and cfg.accuracy:
        paths["accuracy file"] = cfg.accuracy
    elif not cfg.accuracy:
        paths["eval summary"] = storage.join(wd.eval_dir(workdir), "summary.json")
    return (lineage.describe(paths, workdir),
            lineage.fingerprint({"analysis": cfg.to_dict(), "languages": requested_languages(config)}))


def _full(config) -> bool:
    """A whole pipeline config (not the analysis section alone, nor None): enough to rerun the analysis."""
    return config is not None and hasattr(config, "get") and "analysis" in config


def staleness(config, workdir: str) -> list[str]:
    """What changed since ``workdir/analysis`` was computed ([] = current; nothing there: []): an
    unfinished run or a damaged summary, and with a whole config, the inputs and settings it names now
    against those recorded; otherwise the recorded inputs only (``stage_outputs.analysis_staleness``).
    The registry's preflight asks it once per run and runs this stage first when it is stale."""
    config = options_lib.of_section(config, "analysis")

    def current() -> tuple[dict, str]:
        return lineage_record(config, config.analysis, workdir, task_store_paths(config, workdir)[0])
    return analysis_staleness(workdir, current if _full(config) else None)


def preflight(config, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The analyze stage's problems, found without reading any array: unknown settings, a missing
    routing store (when collect does not run first), missing explicit task stores or accuracy file,
    and a routing or task store of another model than ``config.model`` (``model_identity.model_problems``)."""
    config = options_lib.of_section(config, "analysis")
    cfg = config.analysis

    def settings():
        problems = config.section_problems("analysis")  # found when the options were built
        if isinstance(cfg.accuracy, str) and cfg.accuracy and not storage.isfile(cfg.accuracy):
            problems.append(f"analysis.accuracy {cfg.accuracy!r} is not a file")
        problems += [f"analysis.task_stores: no routing store at {path} (task {name!r})"
                     for name, path in parse_task_stores(cfg.task_stores).items()
                     if read_meta(path) is None]
        return problems

    def store():
        path = wd.routing_dir(workdir)
        if "collect" not in before and read_meta(path) is None:
            return (f"no routing store at {path}; run the collect stage first (e.g. "
                    "--stages=convert,collect,analyze)")

    def model() -> list[str]:
        """Stores of another model than config.model (those collect rewrites first are not read)."""
        try:
            stores, origin = task_store_paths(config, workdir)
        except ValueError:
            return []  # a malformed analysis section: settings() names it
        paths = [] if "collect" in before else [wd.routing_dir(workdir)]
        paths += [p for p in stores.values() if "collect" not in before or origin == "analysis.task_stores"]
        return model_identity.model_problems(config.get("model"), workdir, "analyze", [("collect", p, "meta.json", None) for p in paths])
    return collect_problems([settings, store, model])

"""The ``steer`` stage: routing stores + converted checkpoint -> a steering sweep evaluated on the
eval tasks and languages of ``config.eval``, with paired statistics against the baseline.

1. Targets from the stores (``config.steer``): task experts of a task store against the generic
   store (or experts shared with a dominant language), per tau and band; controls (random experts,
   early / late bands, language experts) and, optionally, a learned router bias.
2. Every setting, and the baseline (the neutral intervention), is evaluated like the eval stage
   (same lm-eval tasks, same items) into ``workdir/steer/<setting>/`` — resumable per (setting,
   task, language), atomic, refused when it holds another model's records unless ``overwrite`` (every
   setting is checked before anything, ``settings.json`` included, is written); a pair scored on a data
   file that changed since is evaluated again in every setting.
   The model is loaded and compiled once: interventions are inputs of the jitted programs, so the
   compile count does not grow with the number of settings (it is counted and reported).
3. ``workdir/steer/summary.csv``: per setting, task and language (and the non-English pool) the
   baseline and steered accuracy, the change with a paired bootstrap 95% interval, the exact
   McNemar p-value, and the fraction of tokens whose top-k changed in the steered layers;
   ``steer/provenance.json``, written last, publishes it with ``settings.json`` (``read_output``).

The workdir may be local or ``gs://``: every read and write goes through ``moe_jax.io.storage``, and
each setting's records follow ``moe_jax.artifacts.eval_records`` (data objects first, the manifest last).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from lm_eval.tasks import TaskManager

from moe_jax.artifacts import eval_records as rec, fingerprint as provenance, lineage
from moe_jax.artifacts.routing_store import StoreMismatchError, read_store
from moe_jax.artifacts.stage_outputs import (STEER_OUTPUT_FILES as OUTPUT_FILES, read_analysis,
                                             require_current_analysis)
from moe_jax.io import hashing, integrity, storage
from moe_jax.artifacts import layout as wd
from moe_jax.convert.loader import load_model
from moe_jax.data import corpora, tokenize as tok_lib
from moe_jax.eval.harness import MoeJaxLM
from moe_jax.io.storage import atomic_write, atomic_write_json
from moe_jax.errors import StageError
from moe_jax.pipeline import evaluation, loading
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline.common import collect_problems, model_warning
from moe_jax.routing import statistic_table as stat_table
from moe_jax.steering import learned, sweep as sweep_lib
from moe_jax.steering import targets as tg
from moe_jax.steering.spec import SteeringSpec

log = logging.getLogger(__name__)

BASELINE = "baseline"
PIVOT = "eng_Latn"
RANDOM_SWEEP_WARNING = ("RANDOM MODEL: the weights are random, so every accuracy change of this sweep is noise; "
                        "it shows the machinery, not an effect of steering.")
# an empty selection of the share rules: what to change (each band of the sweep needs a target)
EMPTY_HINTS = {"shared": "; raise steer.shared_thr or steer.shared_top_k, or change steer.bands",
               "exclusive": "; lower steer.exclusive_thr, raise steer.exclusive_top_k, narrow the language pool "
                            "(steer.shared_languages) or change steer.bands"}
SUMMARY_COLUMNS = ("setting", "method", "rule", "task", "language", "n", "baseline", "steered", "delta",
                   "ci_low", "ci_high", "b", "c", "p_mcnemar", "topk_changed", "targets")


def default_config() -> ml_collections.ConfigDict:
    """The ``config.steer`` section (fields, defaults and checks: ``options.SteerOptions``; tasks,
    languages and items default to ``config.eval``'s: ``Options.sweep``)."""
    return options_lib.section_config(options_lib.SteerOptions)


def options(config: Any) -> options_lib.SteerOptions:
    """``config.steer``'s options (``Options.steer``), refused with the first of their problems."""
    return options_lib.of(config).checked("steer").steer


def _names(value) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or ()]


def parse_bands(spec: str, workdir: str) -> tuple[tuple[int, int], ...]:
    """``"auto"`` (the analysis' middle band, in decoder layers) or ``"lo-hi,lo-hi"``. The analysis'
    summary is read only as its ``provenance.json`` publishes it (``integrity.UnpublishedError`` or
    ``DigestMismatchError`` otherwise: an analyze run that did not finish, or a damaged summary)."""
    if spec.strip() == "auto":
        found = storage.exists(storage.join(wd.analysis_dir(workdir), "summary.json"))
        band = (read_analysis(workdir) if found else {}).get("middle_band")
        if not band:
            raise StageError(f"steer.bands is 'auto' but {wd.analysis_dir(workdir)}/summary.json has no middle band; "
                             "run the 'analyze' stage first or give steer.bands='lo-hi' in decoder layers")
        return (tuple(int(x) for x in band["decoder_layers"]),)
    out = []
    for item in _names(spec):
        try:
            lo, hi = (int(x) for x in item.split("-"))
        except ValueError:
            raise StageError(f"steer.bands: bad band {item!r} (expected lo-hi in decoder layers)") from None
        out.append((lo, hi))
    if not out:
        raise StageError("steer.bands is empty")
    return tuple(out)


def _store(path: str, what: str):
    if not storage.exists(storage.join(path, "meta.json")):
        raise StageError(f"no routing store at {path} ({what}); run the 'collect' stage first")
    return read_store(path)


def _pooled(arrays: Mapping[str, np.ndarray], how: tuple[str, str], store: str, lang: str) -> np.ndarray:
    """``[moe_layers, experts]``: the statistic x pooling ``how`` of language ``lang`` of ``store``."""
    try:
        stat_table.check_available(arrays, *how, store, lang, "steer.statistic / steer.pooling")
    except stat_table.StatisticUnavailable as e:
        raise StageError(str(e)) from None
    return stat_table.pooled(arrays, *how)


def build_specs(config: Any, workdir: str, opts: Mapping[str, Any]) -> tuple[list[SteeringSpec], dict, dict]:
    """The sweep's settings from the stores; returns them and the main store's metadata and arrays."""
    meta, data = _store(wd.routing_dir(workdir), "generic text")
    ids = tuple(meta["moe_layer_ids"])
    how = stat_table.resolve(opts["rule"], opts["statistic"], opts["pooling"], "steer")
    if PIVOT not in data:
        raise StageError(f"the routing store {wd.routing_dir(workdir)} has no {PIVOT} (the pivot language)")
    generic = _pooled(data[PIVOT], how, wd.routing_dir(workdir), PIVOT)
    others = [l for l in data if l != PIVOT]
    # language control: the non-pivot languages' mean statistic against the pivot's
    multilingual = np.mean([_pooled(data[l], how, wd.routing_dir(workdir), l) for l in others], 0) if others else None

    def language_select(tau, band):
        if multilingual is None:
            raise tg.EmptySelectionError("no non-pivot language in the store")
        return tg.language_targets(multilingual, generic, ids, band, tau, language="non-pivot mean", pivot=PIVOT)

    provenance = {"statistic": how[0], "pooling": how[1], "store": meta.get("fingerprint")}
    if opts["rule"] == "task":
        names = list((config.get("tasks") or {}).keys())
        task = opts["task"] or (names[0] if names else "")
        if not task:
            raise StageError("steer.rule is 'task' but config.tasks names no task corpus (and steer.task is empty)")
        tmeta, tdata = _store(wd.task_store_dir(workdir, task), f"task corpus {task!r}")
        if PIVOT not in tdata:
            raise StageError(f"the task store {task!r} has no {PIVOT} texts")
        task_freq = _pooled(tdata[PIVOT], how, wd.task_store_dir(workdir, task), PIVOT)

        def select(tau, band):
            return tg.task_targets(task_freq, generic, ids, band, tau)
        rule, provenance["task_store"] = f"task_{task}", tmeta.get("fingerprint")
    else:
        langs = _names(opts["shared_languages"]) or [PIVOT] + others
        missing = [l for l in langs if l not in data]
        if missing:
            raise StageError(f"steer.shared_languages {missing} are not in the routing store ({sorted(data)})")
        freqs = {l: _pooled(data[l], how, wd.routing_dir(workdir), l) for l in langs}
        if opts["rule"] == "shared":
            def select(tau, band):  # tau plays no role: the share threshold decides
                return tg.shared_targets(freqs, ids, band, int(opts["shared_top_k"]), float(opts["shared_thr"]))
        else:
            of = exclusive_languages(config, opts, langs)

            def select(tau, band):  # tau plays no role: the share threshold decides
                return tg.exclusive_targets(freqs, of, ids, band, int(opts["exclusive_top_k"]),
                                            float(opts["exclusive_thr"]), str(opts["exclusive_combine"]))
        rule = opts["rule"]
    grid = sweep_lib.Grid(methods=tuple(_names(opts["methods"])), lambdas=tuple(float(x) for x in opts["lambdas"]),
                          taus=tuple(float(x) for x in opts["taus"]), bands=parse_bands(opts["bands"], workdir),
                          controls=tuple(_names(opts["controls"])), seed=int(opts["seed"]),
                          top_k=int(meta["top_k"]), vector_dtype=str(opts["vector_dtype"]))
    try:
        specs = sweep_lib.build_settings(select, grid, ids, rule, language_select=language_select,
                                         provenance=provenance)
    except (tg.EmptySelectionError, ValueError) as e:
        hint = EMPTY_HINTS.get(opts["rule"], "") if isinstance(e, tg.EmptySelectionError) else ""
        raise StageError(f"steer: {e}{hint}") from None
    return specs, meta, data


def exclusive_languages(config: Any, opts: Mapping[str, Any], pool: Sequence[str]) -> list[str]:
    """Rule "exclusive": ``steer.exclusive_languages``, or the sweep's non-pivot languages in the pool."""
    given = _names(opts["exclusive_languages"])
    if given:
        outside = [l for l in given if l not in pool]
        if outside:
            raise StageError(f"steer.exclusive_languages {outside} are not in the language pool {list(pool)} "
                             "(steer.shared_languages, or every store language)")
        return given
    sweep = list(dict.fromkeys(it["language"] for it in evaluation.plan(sweep_options(config))))
    of = [l for l in sweep if l != PIVOT and l in pool]
    if not of:
        raise StageError(f"steer.rule is 'exclusive' but none of the sweep's non-pivot languages {sweep} is in the "
                         f"language pool {list(pool)}; give steer.exclusive_languages")
    return of


def _learned_spec(config, data, opts, model, tokenizer, band) -> SteeringSpec:
    """Fits a router bias moving the non-pivot languages' routing towards the pivot's (config.data);
    ``data``: the routing store's arrays ``{language: arrays}`` (the pivot's statistic is the target)."""
    lo = dict(opts["learned"])
    corpus = corpora.load_corpus(config.data)
    encoding = tok_lib.encoding_options(config.data)
    pivot_ids = list(data[PIVOT]["seq_ids"])
    pivot_probs = data[PIVOT]["seq_mean_probs"]
    seqs, masks, targets = [], [], []
    for lang in (l for l in corpus.languages if l != PIVOT and l in data):
        n = min(int(lo["max_sentences"]), len(corpus.ids))
        enc = tok_lib.encode_texts(tokenizer, corpus.texts[lang][:n], **encoding)
        for i, sid in enumerate(corpus.ids[:n]):
            if sid in pivot_ids:
                seqs.append(enc.input_ids[i])
                masks.append(enc.count_mask[i])
                targets.append(pivot_probs[pivot_ids.index(sid)])
    if len(seqs) < 2:
        raise StageError("learned steering: fewer than 2 sentences aligned with the pivot in config.data")
    batch = tok_lib.pad_batch(seqs, masks, pad_id=tok_lib.pad_token_id(tokenizer), padding_side="left",
                              pad_to_multiple=16)
    rows = tg.band_rows(model.cfg.moe_layer_ids, band)
    fit = learned.fit_router_bias(model.param_tree, model.cfg, batch["input_ids"], batch["attention_mask"],
                                  batch["count_mask"], np.stack(targets), rows, steps=int(lo["steps"]),
                                  learning_rate=float(lo["learning_rate"]), l2=float(lo["l2"]),
                                  heldout_fraction=float(lo["heldout_fraction"]), seed=int(lo["seed"]),
                                  backend=str(lo["backend"]))
    log.info("learned steering: training divergence %.4f -> %.4f, held-out %.4f -> %.4f", fit.train_loss[0],
             fit.train_loss[-1], fit.heldout_loss[0], fit.heldout_loss[-1])
    return learned.learned_spec(fit, model.cfg, name=f"learned-L{band[0]}_{band[1]}", band=list(band),
                                initial_train_loss=float(fit.train_loss[0]),
                                initial_heldout_loss=float(fit.heldout_loss[0]))


def _probe(config, tokenizer, languages: Sequence[str], n: int):
    """A left-padded batch of the first ``n`` sentences of config.data per language (top-k change)."""
    corpus = corpora.load_corpus(config.data)
    langs = [l for l in languages if l in corpus.languages] or list(corpus.languages)
    encoding = tok_lib.encoding_options(config.data)
    seqs, masks = [], []
    for lang in langs:
        enc = tok_lib.encode_texts(tokenizer, corpus.texts[lang][:n], **encoding)
        seqs += enc.input_ids
        masks += enc.count_mask
    return tok_lib.pad_batch(seqs, masks, pad_id=tok_lib.pad_token_id(tokenizer), padding_side="left",
                             pad_to_multiple=16)


def sweep_options(config: Any) -> options_lib.EvalOptions:
    """``config.eval``'s options with the sweep's subset (steer.tasks, languages, limit) applied
    (``Options.sweep``), refused with the first problem of the steer options."""
    return options_lib.of(config).checked("steer").sweep


def reads(config: Any) -> tuple[str, ...]:
    """The upstream outputs the sweep reads that must be current (``registry.READS``: the registry runs
    a stale one's stage first): the analysis, whose middle band ``steer.bands="auto"`` takes."""
    return ("analyze",) if options_lib.of(config).steer.bands.strip() == "auto" else ()


def preflight(config: Any, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The steer stage's problems, found without reading arrays or loading the model: settings, the
    sweep's tasks, languages and local data, the stores it selects targets from (when collect does not
    run first), the analysis' middle band for ``bands="auto"`` (when analyze does not run first), the
    checkpoint (when convert does not), and an existing sweep of another model (unless overwrite)."""
    config = options_lib.of(config)
    if config.problems.get("steer"):  # bad steer or eval options: the checks below need valid ones
        return config.section_problems("steer")
    opts, eval_opts = config.steer, config.sweep

    def stores() -> list[str]:
        """The stores targets come from exist, or the collect stage runs first and writes them."""
        names = list((config.get("tasks") or {}).keys())
        paths = {wd.routing_dir(workdir): "the collect stage"}
        if opts.rule == "task":
            task = opts.task or (names[0] if names else "")
            if not task:
                return ["steer.rule is 'task' but config.tasks names no task corpus (and steer.task is empty)"]
            paths[wd.task_store_dir(workdir, task)] = (
                "the collect stage" if task in names else f"the collect stage with task {task!r} in config.tasks")
        collected = {wd.routing_dir(workdir)} | {wd.task_store_dir(workdir, n) for n in names}
        return [f"no routing store at {p}; run {how} first (e.g. --stages=collect,steer)" for p, how in paths.items()
                if not storage.exists(storage.join(p, "meta.json")) and not ("collect" in before and p in collected)]

    def bands():  # "auto" reads the analysis: only when the analyze stage does not run first
        if opts.bands.strip() != "auto" or "analyze" not in before:
            try:
                parse_bands(opts.bands, workdir)
            except (integrity.UnpublishedError, integrity.DigestMismatchError):
                pass  # unfinished or damaged: stale, so the registry runs the analyze stage first (schedule)

    checks = [lambda: evaluation.model_option_problems(eval_opts, evaluation.plan(eval_opts),
                                                       loading.preflight_model(config, workdir, before)),
              stores, bands,
              lambda: evaluation.records_problem(config, storage.join(wd.steer_dir(workdir), BASELINE), eval_opts,
                                                 bool(opts.overwrite), "steer.overwrite")]
    if "convert" not in before:
        checks.append(lambda: loading.checkpoint_problems(config, workdir))
    return collect_problems(checks)


def run(config: Any, workdir: str) -> dict[str, Any]:
    """The ``steer`` stage; returns the summary (also ``workdir/steer/summary.json``). ``config``: the
    run's Options (``moe_jax.pipeline.options``), or a config they are built from."""
    config = options_lib.of(config).checked("steer")
    opts, eval_opts = config.steer, config.sweep  # eval_opts: the sweep's subset of the evaluation
    todo = evaluation.plan(eval_opts)
    if opts.bands.strip() == "auto":  # the analysis' middle band: never that of other stores
        require_current_analysis(workdir, "steer")  # the registry runs analyze first when it is stale
    specs, meta, store_data = build_specs(config, workdir, opts)
    ckpt = loading.open_checkpoint(config, workdir)
    ckpt_meta = ckpt.meta
    if ckpt_meta.get("checkpoint_sha256") != meta.get("checkpoint_sha256"):
        raise StageError(f"the routing store {wd.routing_dir(workdir)} was collected from another checkpoint; "
                         "run the 'collect' stage again")
    tokenizer = loading.checkpoint_tokenizer(ckpt)
    model = load_model(ckpt.dir, dtype=config.model.dtype)
    for s in specs:  # every setting fits the model before anything is evaluated
        try:
            s.to_intervention(model.cfg)
        except ValueError as e:
            raise StageError(f"steer setting {s.name}: {e}") from None
    if opts.learned.enabled:
        specs.append(_learned_spec(config, store_data, opts, model, tokenizer,
                                   parse_bands(opts["bands"], workdir)[0]))
    out_dir = wd.steer_dir(workdir)
    base_ident = evaluation.identity(config, eval_opts, ckpt_meta, provenance.tokenizer_hash(tokenizer))
    neutral = model.no_intervention()
    settings = [(BASELINE, None, neutral)] + [(s.name, s, s.to_intervention(model.cfg)) for s in specs]
    idents = {name: dict(base_ident, steering=None if spec is None else spec.to_dict()) for name, spec, _ in settings}
    refused = []  # every setting's records are checked before anything is written: a refused run changes nothing
    for name, ident in idents.items():
        try:
            rec.check_records(storage.join(out_dir, name), provenance.fingerprint(ident), overwrite=bool(opts.overwrite))
        except StoreMismatchError as e:
            refused.append(f"steer setting {name}: {str(e).split(';')[0]}")
    if refused:
        raise StoreMismatchError("; ".join(refused) + "; the settings changed (model, eval options or targets): use "
                                 "--config.steer.overwrite=True to redo them")
    storage.makedirs(out_dir)
    lineage.unpublish(out_dir)  # until the new summary is stamped, no reader trusts the old one
    atomic_write_json(storage.join(out_dir, "settings.json"), [s.to_dict() for s in specs])
    lm = MoeJaxLM(model=model, batch_size=int(eval_opts.batch_size), max_length=eval_opts.max_length,
                  max_gen_toks=int(eval_opts.max_gen_toks), intervention=neutral,
                  enable_thinking=eval_opts.enable_thinking)
    task_manager = TaskManager(include_defaults=False)
    compiles, t0 = {}, time.perf_counter()
    for name, spec, iv in settings:
        sdir = storage.join(out_dir, name)
        ident = idents[name]
        manifest = rec.open_records(sdir, ident, provenance.fingerprint(ident), overwrite=bool(opts.overwrite))
        before = int(lm.stats.get("compiles", 0))
        lm.intervention = iv
        for it in evaluation.pending_pairs(sdir, todo, manifest, "steer"):  # unfinished or scored on other data
            log.info("steer: %s %s %s", name, it["task"], it["language"])
            records, summary = evaluation.evaluate_pair(lm, it, eval_opts, task_manager)
            rec.write_records(sdir, it["task"], it["language"], records, summary, opened=manifest)
        compiles[name] = int(lm.stats.get("compiles", 0)) - before
    wall = time.perf_counter() - t0

    probe = _probe(config, tokenizer, [it["language"] for it in todo], int(opts.probe_sentences))
    rows = summarize(out_dir, todo, settings, model, probe, int(opts.n_boot))
    summary = {"settings": [BASELINE] + [s.name for s in specs], "compiles": compiles,
               "settings_that_compiled": [n for n, c in compiles.items() if c], "seconds": wall, "rows": rows,
               "warnings": [w for w in (model_warning(config.model),) if w]}
    if config.model.source == "tiny_random":
        summary["warnings"].append(RANDOM_SWEEP_WARNING)
    _write_summary(out_dir, summary)
    lineage.write_stamp(out_dir, lineage.describe({name: storage.join(out_dir, name) for name in idents}, workdir),
                        files={n: dict(zip(("size", "sha256"), hashing.file_digest(storage.join(out_dir, n))))
                               for n in OUTPUT_FILES})  # last: publishes the sweep
    print(f"steering sweep of {len(specs)} settings written to {out_dir} (compiles per setting: "
          f"{compiles})", flush=True)
    for w in summary["warnings"][1:]:
        print(f"WARNING: {w}", flush=True)
    return summary


def summarize(out_dir: str, todo, settings, model, probe: Mapping[str, np.ndarray], n_boot: int) -> list[dict]:
    """Paired rows per (setting, task, language) and per (setting, task) over the non-pivot languages."""
    arrays = [jnp.asarray(probe[k]) for k in ("input_ids", "attention_mask", "count_mask")]
    rows = []
    for name, spec, iv in settings[1:]:
        per_layer = np.asarray(sweep_lib.topk_change(model.param_tree, model.cfg, *arrays, iv))
        steered = sweep_lib.steered_rows(iv)
        changed = float(per_layer[steered].mean()) if steered.any() else 0.0
        n_targets = len(spec.targets)
        for task in dict.fromkeys(it["task"] for it in todo):
            pool_b, pool_s = [], []
            for it in (i for i in todo if i["task"] == task):
                base = rec.read_records(storage.join(out_dir, BASELINE), task, it["language"])
                mine = rec.read_records(storage.join(out_dir, name), task, it["language"])
                r = sweep_lib.compare_records(base, mine, n_boot=n_boot, where=f"{name}/{task}/{it['language']}")
                rows.append(_row(name, spec, task, it["language"], r, changed, n_targets))
                if it["language"] != PIVOT:
                    pool_b += [dict(x, lm_eval_task=f"{it['language']}/{x.get('lm_eval_task', '')}") for x in base]
                    pool_s += [dict(x, lm_eval_task=f"{it['language']}/{x.get('lm_eval_task', '')}") for x in mine]
            if pool_b:
                r = sweep_lib.compare_records(pool_b, pool_s, n_boot=n_boot, where=f"{name}/{task}")
                rows.append(_row(name, spec, task, "non_english", r, changed, n_targets))
    return rows


def _row(name, spec, task, language, r, changed, n_targets) -> dict[str, Any]:
    return {"setting": name, "method": spec.method, "rule": spec.provenance.get("rule", ""), "task": task,
            "language": language, "n": r.n, "baseline": r.baseline, "steered": r.steered, "delta": r.delta,
            "ci_low": r.ci_low, "ci_high": r.ci_high, "b": r.b, "c": r.c, "p_mcnemar": r.p_mcnemar,
            "topk_changed": changed, "targets": n_targets}


def _write_summary(out_dir: str, summary: Mapping[str, Any]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(summary["rows"])
    atomic_write(storage.join(out_dir, "summary.csv"), lambda f: f.write(buf.getvalue().encode("utf-8")))
    atomic_write_json(storage.join(out_dir, "summary.json"), dict(summary))

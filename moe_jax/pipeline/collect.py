"""The ``collect`` stage: converted checkpoint + parallel corpus -> routing store at ``workdir/routing``,
and each task corpus of ``config.tasks`` -> a store at ``workdir/tasks/<name>`` (same format and rules).

Per language: tokenise (chat template, count mask), run the jitted collection step over fixed-shape
batches, write ``<lang>.npz`` atomically and record its summary in ``meta.json``. A rerun resumes
at the first language not in the store (or whose file was damaged since); a store of another
model / data / options is refused unless ``collect.overwrite``. With several processes, every
process computes, process 0 writes (``distributed.run_on_writer``: a failure there stops them all).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from moe_jax.pipeline import model_identity
from moe_jax.io import storage
from moe_jax import sharding as shd
from moe_jax import distributed
from moe_jax.artifacts import layout as wd
from moe_jax.convert import orbax_io
from moe_jax.convert.loader import load_hf_config, load_params
from moe_jax.convert.tokenizer import load_tokenizer, missing_tokenizer
from moe_jax.data import corpora, tokenize as tok_lib
from moe_jax.data.tokenize import EncodedTexts
from moe_jax.models.config import ModelConfig
from moe_jax.pipeline import loading
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline.common import collect_problems, model_name, model_warning, source_identity
from moe_jax.routing import collect, hidden_statistics
from moe_jax.artifacts import fingerprint as provenance, routing_store as store_lib

log = logging.getLogger(__name__)



def default_config() -> ml_collections.ConfigDict:
    """The ``config.collect`` section (fields and defaults: ``options.CollectOptions``).

    Tokenisation (template, max_length, padding_side) is configured in ``config.data``.
    """
    return options_lib.section_config(options_lib.CollectOptions)


def options(config: Any) -> options_lib.CollectOptions:
    """``config.collect``'s options (``Options.collect``; a config is checked first: unknown fields refused)."""
    return options_lib.of(config).collect


@dataclasses.dataclass
class LanguageInput:
    """One language, tokenised, with its sentence ids and report fields (truncated, skipped_empty, ...)."""

    seq_ids: list[str]
    encoded: EncodedTexts
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def run(config: Any, workdir: str) -> dict[str, dict[str, dict]]:
    """The ``collect`` stage; returns ``{store: {language: summary}}`` of the languages collected by
    this call (store ``"routing"`` or ``"tasks/<name>"``; stores with nothing to do are left out).

    Reads ``workdir/checkpoint`` (written by the ``convert`` stage), the tokenizer saved with it,
    ``config.data`` (corpus, template), ``config.tasks`` (task corpora, each collected like
    ``config.data`` into ``workdir/tasks/<name>``), ``config.collect`` (batching, options), ``config.mesh``.
    Every check (mesh, batch, tokenizer vocabulary, compatibility of every store) runs before the
    weights are loaded or anything is compiled; the model is loaded and compiled once for all stores.
    ``config``: the run's Options (``moe_jax.pipeline.options``), or a config they are built from.
    """
    config = options_lib.of(config).checked("collect")
    opts = config.collect
    ckpt = loading.open_checkpoint(config, workdir)
    ckpt_dir, ckpt_meta, cfg = ckpt.dir, ckpt.meta, ckpt.cfg

    mesh = shd.make_mesh(config.mesh.shape)
    shd.check_batch_size(int(opts.batch_size), mesh)
    rules = shd.rules_from_config(config.mesh)
    tokenizer = loading.checkpoint_tokenizer(ckpt, checked=True)
    plan = [_plan_store(wd.ROUTING, None, config.data, workdir, config, cfg, ckpt_meta, tokenizer, opts)]
    plan += [_plan_store(os.path.join(wd.TASKS, name), name, data, workdir, config, cfg, ckpt_meta, tokenizer,
                         opts) for name, data in (config.tasks or {}).items()]
    for job in plan:
        if not job.todo:
            log.info("routing store %s already holds every language", job.store_dir)
    plan = [job for job in plan if job.todo]
    if not plan:
        return {}

    _, params = load_params(ckpt_dir, config.model.dtype, shardings=shd.param_shardings(cfg, mesh, rules))
    step = collect.make_collect_step(cfg, mesh, token_topk=bool(opts.token_topk), backend=opts.backend)
    out: dict[str, dict[str, dict]] = {}
    for job in plan:
        encode, hidden, job_step = job.encoder(tokenizer), None, step
        if opts.hidden_states and job.key == wd.ROUTING:  # representations of the main corpus only
            encode, hidden = _hidden_inputs(job, encode, cfg, opts, config.analysis.pivot)
            job_step = collect.make_collect_step(cfg, mesh, token_topk=bool(opts.token_topk), backend=opts.backend,
                                                 hidden_states=True, logit_lens=bool(opts.logit_lens))
        out[job.key] = collect_to_store(job.store_dir, job.meta, job.corpus.languages, encode,
                                        step=job_step, params=params, cfg=cfg, mesh=mesh, options=opts,
                                        batching=job.batching(tokenizer, opts), done=job.done, hidden=hidden)
        if distributed.is_writer():
            print(f"routing statistics of {job.meta['model']} written to {job.store_dir}\n"
                  f"{format_summary(out[job.key])}", flush=True)
    warning = plan[0].meta.get("warning")
    if warning and distributed.is_writer():
        print(f"WARNING: {warning}", flush=True)
    return out


def _hidden_inputs(job: "_StorePlan", encode: Callable[[str], LanguageInput], cfg: ModelConfig, opts: Any,
                   pivot: str) -> tuple[Callable[[str], LanguageInput], Callable[[str], collect.HiddenInputs]]:
    """Every language of the main corpus tokenised once (its token counts decide which tokens belong to
    which language, so all are needed even when some are already collected): the encoder reading those
    encodings, and each language's step inputs (the projection, the pivot's and its own token set)."""
    encoded = {lang: encode(lang) for lang in job.corpus.languages}
    counts = {lang: hidden_statistics.token_counts(
        np.concatenate([ids[mask.astype(bool)] for ids, mask in zip(inp.encoded.input_ids, inp.encoded.count_mask)]),
        cfg.vocab_size) for lang, inp in encoded.items()}
    sets = hidden_statistics.token_languages(counts, share=float(opts.lens_token_share))
    if pivot not in sets:
        raise ValueError(f"collect.hidden_states measures the logit lens's mass on the pivot's tokens, but the corpus "
                         f"{job.corpus.name} has no {pivot} (analysis.pivot); its languages: {list(sets)}")
    proj = hidden_statistics.projection(cfg.hidden_size, int(opts.hidden_dim))
    return encoded.__getitem__, lambda lang: collect.HiddenInputs(proj, np.stack([sets[pivot], sets[lang]]).astype(np.float32))


def hidden_identity(opts: Any, pivot: str) -> dict[str, Any] | None:
    """What determines a store's hidden-state arrays (recorded in its meta and fingerprint), or None
    when it has none. ``dim``: the projection's (no projection when the model's hidden size is smaller)."""
    if not opts.get("hidden_states", False):
        return None
    return {"dim": int(opts["hidden_dim"]), "seed": hidden_statistics.PROJECTION_SEED,
            "logit_lens": bool(opts["logit_lens"]), "lens_token_share": float(opts["lens_token_share"]), "pivot": pivot,
            "states": "embeddings, the output of each decoder layer, the last after the final norm"}


@dataclasses.dataclass
class _StorePlan:
    """One store to fill (the main corpus or a task corpus), opened and checked."""

    key: str  # "routing" or "tasks/<name>": the store's path under the workdir
    store_dir: str
    data: Any  # its data config
    corpus: Any  # moe_jax.data.parallel.ParallelCorpus
    encoding: dict[str, Any]
    meta: dict[str, Any]
    hashes: dict[str, str]  # language -> hash of its texts
    done: set[str]  # languages already in the store (with the same texts)

    @property
    def todo(self) -> list[str]:
        """Languages still to collect."""
        return [lang for lang in self.corpus.languages if lang not in self.done]

    def encoder(self, tokenizer: Any) -> Callable[[str], LanguageInput]:
        def encode(lang: str) -> LanguageInput:
            enc = tok_lib.encode_texts(tokenizer, self.corpus.texts[lang], **self.encoding)
            return LanguageInput(list(self.corpus.ids), enc, {
                "skipped_empty": int(self.corpus.skipped_empty.get(lang, 0)), "text_sha256": self.hashes[lang]})
        return encode

    def batching(self, tokenizer: Any, opts: Mapping[str, Any]) -> dict[str, Any]:
        return dict(batch_size=int(opts["batch_size"]), pad_id=tok_lib.pad_token_id(tokenizer),
                    padding_side=self.data.padding_side, pad_to_multiple=int(opts["pad_to_multiple"]),
                    sort_by_length=bool(opts["sort_by_length"]))


def _plan_store(key: str, task: str | None, data: Any, workdir: str, config: Any, cfg: ModelConfig,
                ckpt_meta: Mapping[str, Any], tokenizer: Any, opts: Mapping[str, Any]) -> _StorePlan:
    """Loads a corpus, builds its store's meta and opens (or refuses) the store."""
    corpus = corpora.load_corpus(data)
    encoding = tok_lib.corpus_encoding_options(data, corpus)  # + "count" for prompt/response pairs
    meta = build_meta(config, cfg, ckpt_meta, tokenizer, corpus, encoding, opts, data=data, task=task)
    store_dir = os.path.join(workdir, key)
    hashes = {lang: _text_hash(corpus.texts[lang]) for lang in corpus.languages}
    done = _open(store_dir, meta, corpus.languages, bool(opts["overwrite"]), hashes)
    return _StorePlan(key, store_dir, data, corpus, dict(encoding), meta, hashes, done)


def build_meta(config: Any, cfg: ModelConfig, ckpt_meta: Mapping[str, Any], tokenizer: Any, corpus: Any,
               encoding: Mapping[str, Any], opts: Mapping[str, Any], *, data: Any = None,
               task: str | None = None) -> dict[str, Any]:
    """Store metadata; ``fingerprint`` covers everything that determines the numbers (model, weights,
    dtype, tokenizer, template options, corpus source and sentence ids, stored arrays; the ``count``
    of ``encoding``, present for prompt/response pairs, is recorded in ``data_source``) but not the
    language list (a rerun with more languages extends the store) nor batching (no effect beyond
    float rounding).

    ``data``: the corpus's data config (default ``config.data``); ``task``: the task name of a task
    corpus's store (recorded as ``meta["task"]``).
    """
    data = config.data if data is None else data
    encoding = dict(encoding)
    source = data_source(data, encoding.pop("count", None))
    identity = {
        "model_config": cfg.to_dict(), "checkpoint_sha256": ckpt_meta.get("checkpoint_sha256"),
        "model_source": source_identity(config.model), "dtype": config.model.dtype,
        "tokenizer_sha256": provenance.tokenizer_hash(tokenizer), "template": dict(encoding),
        "data_source": source, "sentence_ids": provenance.fingerprint(list(corpus.ids)),
        "token_topk": bool(opts.get("token_topk", False)),
    }
    hidden = hidden_identity(opts, config.analysis.pivot) if task is None else None
    if hidden is not None:  # only then: stores without hidden states keep their fingerprint
        identity["hidden_states"] = hidden
    meta = {
        "model": model_name(config.model), "model_type": cfg.model_type, "model_source": identity["model_source"],
        "checkpoint_sha256": identity["checkpoint_sha256"], "dtype": config.model.dtype,
        "dataset": corpus.name, "split": corpus.split, "data_source": source,
        "requested_languages": list(corpus.languages), "num_sentences": len(corpus.ids),
        "dropped_ids": list(corpus.dropped_ids),
        "tokenizer": f"saved with {model_name(config.model)}", "tokenizer_sha256": identity["tokenizer_sha256"],
        "template": dict(encoding), "moe_layer_ids": list(cfg.moe_layer_ids), "num_layers": cfg.num_layers,
        "num_experts": cfg.num_experts, "top_k": cfg.top_k, "token_topk": identity["token_topk"],
        "code_version": provenance.code_version(), "fingerprint": provenance.fingerprint(identity),
    }
    if hidden is not None:
        meta["hidden_states"] = hidden
    if task is not None:
        meta["task"] = task
    warning = model_warning(config.model)
    if warning:
        meta["warning"] = warning
    return meta


def data_source(data: Any, count: str | None = None) -> dict[str, Any]:
    """The corpus choice a store records as ``meta["data_source"]`` (part of its fingerprint)."""
    source = {k: data.get(k) for k in ("source", "split", "path", "data_files", "max_sentences")}
    if data.get("task"):  # only when set: stores of the other sources keep their fingerprint
        source["task"] = data.get("task")
    if count is not None:  # the counted turns of prompt/response pairs: a choice of data, like the corpus
        source["count"] = count
    return {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in source.items()}


def _text_hash(texts: Sequence[str]) -> str:
    return provenance.fingerprint(list(texts))


def collect_to_store(store_dir: str, meta: Mapping[str, Any], languages: Sequence[str],
                     encode: Callable[[str], LanguageInput], *, step: collect.Step, params: Any,
                     cfg: ModelConfig, mesh: Any, options: Mapping[str, Any], batching: Mapping[str, Any],
                     input_hashes: Mapping[str, str] | None = None, done: set[str] | None = None,
                     hidden: Callable[[str], collect.HiddenInputs] | None = None) -> dict[str, dict]:
    """Collects every language of ``languages`` not yet in the store; returns their summaries.

    ``options``: the ``collect`` config section; ``batching``: keyword arguments of
    ``collect.collect_language`` (batch_size, pad_id, padding_side, pad_to_multiple, sort_by_length).
    ``encode(lang)`` is called only for languages that still need collecting. ``input_hashes``
    (language -> hash of its texts, stored in its summary as ``text_sha256``): a finished language
    whose texts changed since is collected again. ``done``: the languages already in the store, when
    the caller has opened it (``_open``); None opens it here. ``hidden(lang)``: the inputs of a step
    made with ``hidden_states=True``.
    """
    if done is None:
        done = _open(store_dir, meta, languages, bool(options.get("overwrite", False)), input_hashes)
    show = bool(options.get("progress", True)) and distributed.is_writer()
    summaries: dict[str, dict] = {}
    bar = tqdm(languages, desc="languages", unit="lang", disable=not show)
    for lang in bar:
        bar.set_postfix_str(lang)
        if lang in done:
            log.info("%s: already in %s, skipped", lang, store_dir)
            continue
        inp = encode(lang)
        with tqdm(total=len(inp.encoded), desc=f"  {lang}", unit="seq", leave=False, disable=not show) as seq_bar:
            res = collect.collect_language(step, params, inp.encoded, cfg=cfg, mesh=mesh, **batching,
                                           keep_token_topk=bool(options["token_topk"]), progress=seq_bar.update,
                                           hidden=None if hidden is None else hidden(lang))
        summary = {"sequences": res.sequences, "counted_tokens": res.counted_tokens, "tokens": res.tokens,
                   "padded_tokens": res.padded_tokens, "batches": res.batches,
                   "truncated": inp.encoded.num_truncated, "seconds": round(res.seconds, 3),
                   "compile_seconds": round(res.compile_seconds, 3),
                   "tokens_per_s": round(res.tokens_per_s, 1), **inp.info}
        arrays = dict(res.arrays, seq_ids=np.asarray(inp.seq_ids, dtype=str))
        distributed.run_on_writer(lambda: store_lib.write_language(store_dir, lang, arrays, summary),
                          f"writing language {lang} to {store_dir}")
        summaries[lang] = summary
        log.info("%s: %s", lang, summary)
    return summaries


def _open(store_dir: str, meta: Mapping[str, Any], languages: Sequence[str], overwrite: bool,
          input_hashes: Mapping[str, str] | None = None) -> set[str]:
    """Process 0 opens (or refuses) the store; every process learns the outcome and the done languages."""
    def open_store() -> np.ndarray:  # [languages] 1 = done
        summaries = store_lib.open_store(store_dir, meta, overwrite=overwrite)["languages"]
        done = store_lib.done_languages(store_dir)
        return np.asarray([lang in done and (input_hashes is None or
                                             summaries[lang].get("text_sha256") == input_hashes.get(lang))
                           for lang in languages], np.int32)

    status = distributed.run_on_writer(open_store, f"opening the routing store {store_dir}")
    status = distributed.broadcast_from_writer(np.zeros(len(languages), np.int32) if status is None else status)
    return {lang for lang, d in zip(languages, status) if d}


def format_summary(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Plain-text table of the per-language summaries."""
    cols = ("sequences", "counted_tokens", "truncated", "skipped_empty", "tokens_per_s")
    rows = [("language",) + cols] + [(lang,) + tuple(str(s.get(c, "-")) for c in cols)
                                      for lang, s in summaries.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows)


# -- preflight: cheap checks before any stage writes (moe_jax.pipeline.registry.preflight) ----------------------

LOCAL_SOURCES = ("builtin", "builtin_task", "jsonl", "flores_dir")  # read here; the hub sources are not


def preflight(config: Any, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The collect stage's problems, found without loading weights or writing: the mesh against the
    devices and the batch, the checkpoint and its tokenizer (when convert does not run first), every
    local corpus (read and aligned) or local copy of hub data, and each existing store written for
    another model or corpus (collect would refuse it, after convert had replaced the checkpoint)."""
    config = options_lib.of(config)
    if config.section_problems("collect"):  # bad collect options: the checks below need valid ones
        return config.section_problems("collect")
    opts = config.collect
    n = jax.device_count()

    def mesh() -> None:
        try:
            shd.check_batch_size(int(opts.batch_size), shd.mesh_axis_sizes(config.mesh.shape, n))
        except ValueError as e:
            raise ValueError(f"{e} (config.mesh.shape {dict(config.mesh.shape)} on {n} {jax.default_backend()} "
                             "device(s))") from None

    def corpus(where: str, data: Any) -> Callable[[], Any]:
        def check():
            try:
                if data.source in LOCAL_SOURCES:
                    corpora.load_corpus(data)
                files = data.get("data_files")
                files = files.to_dict() if hasattr(files, "to_dict") else files
                files = files.values() if isinstance(files, dict) else [files] if isinstance(files, str) else files
                missing = [f for f in files or () if not storage.exists(f)]
                if missing:
                    raise FileNotFoundError(f"data_files {missing} do not exist")
            except (ValueError, OSError) as e:
                raise type(e)(f"{where} ({data.source}): {e}") from None
        return check

    def store(key: str, data: Any) -> Callable[[], str | None]:
        def check() -> str | None:
            path = os.path.join(workdir, key)
            meta = store_lib.read_meta(path)
            if meta is None or opts.overwrite:
                return None
            recorded_source = {k: v for k, v in (meta.get("data_source") or {}).items() if k != "count"}
            diffs = (loading.recorded_model_differences(meta, config)
                     + model_identity.differences(recorded_source, data_source(data), "data_source")
                     + model_identity.differences(bool(meta.get("token_topk")), bool(opts.token_topk), "token_topk"))
            if key == wd.ROUTING:  # a store collected with other hidden-state options
                diffs += model_identity.differences(meta.get("hidden_states"),
                                                    hidden_identity(opts, config.analysis.pivot), "hidden_states")
            if diffs:
                return (f"{path} holds routing statistics of another model or corpus ({'; '.join(diffs)}); use "
                        "another --workdir, or --config.collect.overwrite=True to replace it (its files are deleted)")
            return None
        return check

    def tokenizer() -> list[str]:
        """The tokenizer collect will use (the checkpoint's, or the local source's that convert copies
        there): its ids fit the model's embedding, and each existing store was collected with it."""
        if "convert" in before:  # hub and tiny sources: the tokenizer appears with the conversion
            src = config.model.hf_dir if config.model.source == "hf_dir" else None
            if not src or missing_tokenizer(src):  # reported by the convert stage's preflight
                return []
            vocab = load_hf_config(src).vocab_size
        else:
            src = wd.checkpoint_dir(workdir)
            if not storage.exists(storage.join(src, orbax_io.META_FILE)) or missing_tokenizer(src):
                return []  # reported by checkpoint_problems
            vocab = ModelConfig.from_dict(orbax_io.read_meta(src)["config"]).vocab_size
        tok = load_tokenizer(src)
        tok_lib.check_tokenizer(tok, vocab)
        now = provenance.tokenizer_hash(tok)
        metas = [(os.path.join(workdir, key), store_lib.read_meta(os.path.join(workdir, key))) for key, _, _ in datas]
        return [f"{path} was collected with another tokenizer (tokenizer_sha256 {meta['tokenizer_sha256']} != "
                f"{now} of {src}); use another --workdir, or --config.collect.overwrite=True to replace it"
                for path, meta in metas if meta and meta.get("tokenizer_sha256") not in (None, now)
                and not opts.overwrite]

    datas = [(wd.ROUTING, "config.data", config.data)] + [
        (os.path.join(wd.TASKS, name), f"config.tasks.{name}", d) for name, d in (config.tasks or {}).items()]
    checks: list[Callable[[], Any]] = [mesh]
    if "convert" not in before:
        checks.append(lambda: loading.checkpoint_problems(config, workdir))
    checks += [tokenizer] + [corpus(where, d) for _, where, d in datas] + [store(key, d) for key, _, d in datas]
    return collect_problems(checks)

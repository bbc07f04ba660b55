"""The ``eval`` stage: converted checkpoint + lm-eval task definitions -> per-item records and
accuracies under ``workdir/eval`` (layout in ``moe_jax.artifacts.eval_records``).

The model is loaded once (``workdir/checkpoint``, with its tokenizer) and wrapped in ``MoeJaxLM``;
each (task, language) is one ``lm_eval.simple_evaluate(log_samples=True)`` call over the lm-eval
task configs of ``moe_jax.eval.tasks`` (one per subject), whose logged samples become the records.
A rerun skips the finished (task, language) pairs and redoes those whose data file changed. Every
option (and the steering file's contents) is checked before the records are opened, so a refused run
changes nothing. ``summary.csv`` / ``summary.json`` hold per (task, language) the accuracy, items,
95% interval (Wilson; ``moe_jax.artifacts.eval_records.score``) and the number of prompts truncated to the
model's maximum length, and per task the mean over the non-English languages; ``provenance.json``,
written last, publishes them with the digest of the records they summarise (``read_output``: how
later stages read them). The workdir may be local or ``gs://`` (``moe_jax.io.storage``); so may the
steering file and local task data (staged into a local cache for the ``datasets`` library).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict
from tqdm.auto import tqdm

from moe_jax.artifacts import lineage
from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.io.storage import atomic_write, atomic_write_json
from moe_jax.artifacts import eval_records as rec
from moe_jax.eval import tasks as task_lib
from moe_jax.errors import StageError
from moe_jax.pipeline.common import check_known_fields, collect_problems, model_name, model_warning, source_identity

log = logging.getLogger(__name__)

DATA_SOURCES = ("hub", "local", "demo")
DEMO_WARNING = "DEMO DATA: the evaluation items are the few invented DEMO items shipped with moe_jax, not benchmark data."
PIVOT = "eng_Latn"
SUMMARY_COLUMNS = ("task", "language", "code", "accuracy", "n", "ci_low", "ci_high", "interval", "truncated", "data")
# eval options that must be whole numbers >= 1: (field, None allowed)
POSITIVE_INTS = (("limit", True), ("batch_size", False), ("max_length", True), ("max_gen_toks", False))
GENERATION_TASKS = ("mgsm",)  # tasks that generate: their prompt and max_gen_toks new tokens share max_length
SUMMARY_FILES = ("summary.json", "summary.csv")  # published by the eval stage's provenance.json


def default_config() -> ml_collections.ConfigDict:
    """The ``config.eval`` section."""
    c = ml_collections.ConfigDict()
    c.tasks = "mgsm,gmmlu_medical,belebele"  # names of moe_jax.eval.tasks.TASKS (comma string or sequence)
    # languages, FLORES or the task's codes: "de,fr" / a sequence for every task, or {task: languages};
    # {} or "" = every language the task has
    c.languages = config_dict.FieldReference({}, field_type=object)
    c.limit = config_dict.placeholder(int)  # items per lm-eval task (subject): the first ones; None = all
    c.fixed_items = True  # tasks with a fixed item list (Global-MMLU medical: 60 per subject) use it
    c.batch_size = 8
    c.max_length = config_dict.placeholder(int)  # model context for scoring (None: the model's maximum)
    c.max_gen_toks = 256  # generation tasks (MGSM): new tokens at most
    c.apply_chat_template = False  # lm-eval's apply_chat_template (the studies: off)
    c.enable_thinking = config_dict.placeholder(bool)  # forwarded to the chat template when set
    c.source = "hub"  # "hub" (per-task data_dirs override), "local" (data_dirs for every task), "demo"
    c.data_dirs = config_dict.FieldReference({}, field_type=object)  # {task: dir of <code>.jsonl|.json|.parquet}
    c.steering = ""  # JSON file of a router intervention applied while evaluating ("" = none)
    c.overwrite = False  # replace records of another model / options
    c.progress = True  # a bar over the (task, language) pairs
    return c


def options(config: Any) -> ml_collections.ConfigDict:
    """``config.eval`` over ``default_config()``; unknown fields (typos) are refused."""
    opts, section = default_config(), config.get("eval") or {}
    check_known_fields(section, opts, "config.eval")
    opts.update(section.to_dict() if hasattr(section, "to_dict") else section)
    if opts.source not in DATA_SOURCES:
        raise StageError(f"eval.source {opts.source!r} is not one of {DATA_SOURCES}")
    for key, optional in POSITIVE_INTS:
        value = opts[key]
        if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise StageError(f"eval.{key} is {value!r}; give a whole number >= 1"
                             + (" (or None for " + ("every item)" if key == "limit" else "the model's maximum)")
                                if optional else ""))
    return opts


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in (value or ())]


def plan(opts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every (task, language) to evaluate, resolved and checked before anything is loaded: task
    names, languages, local data files, their fields and (``eval.fixed_items``) their fixed items."""
    names = _names(opts["tasks"])
    if not names:
        raise StageError(f"eval.tasks is empty; known tasks: {', '.join(task_lib.TASKS)}")
    langs = opts["languages"]
    langs = langs.to_dict() if hasattr(langs, "to_dict") else langs
    per_task = isinstance(langs, Mapping) and bool(langs)
    if per_task:
        unknown = [t for t in langs if t not in names]
        if unknown:
            kept = [_names(langs[t]) for t in names if t in langs]
            example = ",".join(kept[0]) if len(kept) == 1 else "eng_Latn,fra_Latn"
            raise StageError(f"eval.languages names task(s) {unknown} that are not in eval.tasks {names}; give the "
                             f"languages of the tasks being run, e.g. --config.eval.languages={example} (one list, "
                             f"used for every task of eval.tasks), or run those tasks too: "
                             f"--config.eval.tasks={','.join(names + unknown)}")
    dirs = opts["data_dirs"]
    dirs = dict(dirs.to_dict() if hasattr(dirs, "to_dict") else dirs or {})
    for t in dirs:
        task_lib.get_task(t)
    out = []
    for name in names:
        spec = task_lib.get_task(name)
        chosen = task_lib.resolve_languages(spec, _names(langs.get(name) if per_task else
                                                         (None if isinstance(langs, Mapping) else langs)))
        directory = os.path.join(task_lib.DEMO_DIR, name) if opts["source"] == "demo" else dirs.get(name)
        if opts["source"] == "local" and not directory:
            raise StageError(f"eval.source is 'local' but eval.data_dirs has no directory for task {name!r}")
        log.info("eval: %s languages %s", name, task_lib.language_table(spec, chosen))
        for flores, code in chosen.items():
            data_file = None
            if directory:
                data_file = task_lib.local_file(spec, code, directory)
                task_lib.check_local_file(spec, data_file)
                if opts["fixed_items"] and opts["source"] != "demo":  # the items lm-eval is asked for exist
                    task_lib.check_fixed_items(spec, code, data_file, opts["limit"])
            out.append({"task": name, "language": flores, "code": code, "data_file": data_file})
    return out


def _sha256_file(path: str | None) -> str | None:
    """sha256 of a local or ``gs://`` file (None for no file)."""
    return storage.digest(path)[1] if path else None


def scoring_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The eval options that change a record (part of the records' identity)."""
    return {k: opts[k] for k in ("limit", "fixed_items", "max_length", "max_gen_toks", "apply_chat_template",
                                 "enable_thinking")}


def identity(config: Any, opts: Mapping[str, Any], ckpt_meta: Mapping[str, Any], tokenizer_sha: str) -> dict:
    """What determines the records: model, weights, dtype, tokenizer, scoring and task options."""
    import lm_eval
    return {"model": model_name(config), "model_source": source_identity(config), "dtype": config.model.dtype,
            "checkpoint_sha256": ckpt_meta.get("checkpoint_sha256"), "tokenizer_sha256": tokenizer_sha,
            "options": scoring_options(opts),
            "steering_sha256": _sha256_file(opts["steering"]), "lm_eval_version": lm_eval.__version__}


def evaluate_pair(lm: Any, item: Mapping[str, Any], opts: Mapping[str, Any], task_manager: Any) -> tuple[list, dict]:
    """Runs lm-eval on one (task, language); returns its records and summary entry."""
    import lm_eval

    spec = task_lib.get_task(item["task"])
    code = item["code"]
    configs = task_lib.task_configs(spec, code, item["data_file"])
    lm_tasks = spec.lm_eval_tasks(code)
    limit = opts["limit"]
    samples = task_lib.samples_for(spec, code, limit) if opts["fixed_items"] and opts["source"] != "demo" else None
    before = int(lm.stats.get("truncated", 0))
    kwargs = dict(samples=samples) if samples else dict(limit=limit)
    results = lm_eval.simple_evaluate(model=lm, tasks=configs, log_samples=True, task_manager=task_manager,
                                      bootstrap_iters=0, apply_chat_template=bool(opts["apply_chat_template"]),
                                      **kwargs)
    records = rec.records_from_results(results, task=spec.name, language=item["language"], code=code,
                                       lm_eval_tasks=lm_tasks, metric=spec.metric_name,
                                       filter_name=spec.filter_name, samples=samples)
    rec.check_against_lm_eval(records, results, lm_tasks, spec.metric)
    summary = dict(rec.score(records), code=code, truncated=int(lm.stats.get("truncated", 0)) - before,
                   data="demo" if opts["source"] == "demo" else ("local" if item["data_file"] else "hub"),
                   data_sha256=_sha256_file(item["data_file"]), lm_eval_tasks=lm_tasks, metric=spec.metric)
    return records, summary


def run(config: Any, workdir: str) -> dict[str, Any]:
    """The ``eval`` stage; returns the summary (also in ``workdir/eval/summary.json``)."""
    from lm_eval.tasks import TaskManager

    from moe_jax.convert import orbax_io
    from moe_jax.pipeline.convert import converted_identity
    from moe_jax.convert.tokenizer import load_tokenizer
    from moe_jax.models.config import ModelConfig
    from moe_jax.artifacts import fingerprint as provenance

    opts = options(config)
    todo = plan(opts)
    ckpt_dir = wd.checkpoint_dir(workdir)
    if not storage.exists(storage.join(ckpt_dir, orbax_io.META_FILE)):
        raise FileNotFoundError(f"no converted checkpoint at {ckpt_dir}; run the 'convert' stage first")
    converted_identity(config, workdir)
    ckpt_meta = orbax_io.read_meta(ckpt_dir)
    model_problems = model_option_problems(opts, todo, ModelConfig.from_dict(ckpt_meta["config"]))
    if model_problems:  # before the manifest is opened: a refused run leaves the records as they were
        raise StageError("; ".join(model_problems))
    tokenizer = load_tokenizer(ckpt_dir)
    ident = identity(config, opts, ckpt_meta, provenance.tokenizer_hash(tokenizer))
    out_dir = wd.eval_dir(workdir)
    manifest = rec.open_records(out_dir, ident, provenance.fingerprint(ident), overwrite=bool(opts.overwrite))
    pending = pending_pairs(out_dir, todo, manifest, "eval")
    if pending:
        from moe_jax.eval.harness import MoeJaxLM
        from moe_jax.api import load

        model = load(ckpt_dir, dtype=config.model.dtype)
        lm = MoeJaxLM(model=model, batch_size=int(opts.batch_size), max_length=opts.max_length,
                      max_gen_toks=int(opts.max_gen_toks), steering=opts.steering or None,
                      enable_thinking=opts.enable_thinking)
        task_manager = TaskManager(include_defaults=False)  # task configs come as dicts: no index scan
        for it in tqdm(pending, desc="eval", unit="pair", disable=not opts.progress):
            log.info("eval: %s %s (%s)", it["task"], it["language"], it["code"])
            records, summary = evaluate_pair(lm, it, opts, task_manager)
            rec.write_records(out_dir, it["task"], it["language"], records, summary, opened=manifest)
            log.info("eval: %s %s accuracy %.4f over %d items", it["task"], it["language"], summary["accuracy"],
                     summary["n"])
    lineage.unpublish(out_dir)  # until the new summary is stamped, no reader trusts the old one
    summary = write_summary(config, opts, out_dir, todo)
    lineage.write_stamp(out_dir, lineage.describe({"records": out_dir}, workdir),
                        files={n: dict(zip(("size", "sha256"), storage.digest(storage.join(out_dir, n))))
                               for n in SUMMARY_FILES})
    print(f"evaluation of {ident['model']} written to {out_dir}\n{format_summary(summary['rows'])}", flush=True)
    for w in summary["warnings"]:
        print(f"WARNING: {w}", flush=True)
    return summary


def pending_pairs(out_dir: str, todo: list[dict[str, Any]], manifest: Mapping[str, Any], stage: str) -> list[dict]:
    """The pairs of ``todo`` to evaluate into ``out_dir``: unfinished in ``manifest`` (or damaged), or
    finished on other task data (the data file's sha256 differs from the recorded one: stale, said so)."""
    pending = []
    for it in todo:
        where = f"{stage}: {out_dir} {it['task']} {it['language']}"
        if not rec.is_done(out_dir, it["task"], it["language"], manifest):
            pending.append(it)
        elif manifest["files"][rec.record_key(it["task"], it["language"])].get("data_sha256") \
                != _sha256_file(it["data_file"]):
            print(f"{where}: scored on other task data than {it['data_file']} holds now; evaluated again", flush=True)
            pending.append(it)
        else:
            log.info("%s already done, skipped", where)
    return pending


def read_output(workdir: str, name: str = "summary.json") -> Any:
    """The eval stage's ``summary.json`` (parsed) or ``summary.csv`` (bytes) as its
    ``provenance.json`` publishes it, over records unchanged and intact since
    (``records.read_published``: StageError naming the command that redoes it otherwise)."""
    data = rec.read_published(wd.eval_dir(workdir), name, workdir)
    return json.loads(data) if name.endswith(".json") else data


def summary_rows(out_dir: str, todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, language) of ``todo`` plus, per task, the mean over non-English languages."""
    files = (rec.read_manifest(out_dir) or {}).get("files", {})
    rows = []
    for task in dict.fromkeys(it["task"] for it in todo):
        task_rows = []
        for it in (i for i in todo if i["task"] == task):
            s = files[rec.record_key(task, it["language"])]
            task_rows.append({"task": task, "language": it["language"], "code": it["code"],
                              **{k: s[k] for k in ("accuracy", "n", "ci_low", "ci_high", "interval", "truncated",
                                                   "data")}})
        rows += task_rows
        others = [r for r in task_rows if r["language"] != PIVOT]
        if others:
            rows.append({"task": task, "language": "mean_non_english", "code": "",
                         "accuracy": sum(r["accuracy"] for r in others) / len(others),
                         "n": sum(r["n"] for r in others), "ci_low": "", "ci_high": "",
                         "interval": f"unweighted mean over {len(others)} languages", "truncated":
                         sum(r["truncated"] for r in others), "data": others[0]["data"]})
    return rows


def write_summary(config: Any, opts: Mapping[str, Any], out_dir: str, todo: list[dict[str, Any]]) -> dict[str, Any]:
    rows = summary_rows(out_dir, todo)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(storage.join(out_dir, "summary.csv"), lambda f: f.write(buf.getvalue().encode("utf-8")))
    warnings = [w for w in (model_warning(config), DEMO_WARNING if opts["source"] == "demo" else None) if w]
    summary = {"model": model_name(config), "rows": rows, "warnings": warnings,
               "interval": "95% Wilson score interval on the items (stratified normal when subjects differ in size)",
               "languages": {f"{it['task']}/{it['language']}": it["code"] for it in todo}}
    atomic_write_json(storage.join(out_dir, "summary.json"), summary)
    return summary


def format_summary(rows: list[Mapping[str, Any]]) -> str:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)
    cols = ("task", "language", "code", "accuracy", "n", "ci_low", "ci_high", "truncated", "data")
    table = [cols] + [tuple(fmt(r[c]) for c in cols) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    return "\n".join("  ".join(v.rjust(wd_) for v, wd_ in zip(r, widths)) for r in table)


# -- preflight: cheap checks before any stage writes (moe_jax.pipeline.registry.preflight) ----------------------

def preflight(config: Any, workdir: str, before: frozenset[str] = frozenset()) -> list[str]:
    """The eval stage's problems, found without loading the model or writing: unknown tasks or
    languages, missing local data files, a missing steering file, the checkpoint (when convert does not
    run first), and existing records of another model or scoring options (refused unless overwrite)."""
    from moe_jax.pipeline.convert import checkpoint_problems

    opts = options(config)
    checks = [lambda: model_option_problems(opts, plan(opts), preflight_model(config, workdir, before)),
              lambda: records_problem(config, wd.eval_dir(workdir), opts, bool(opts.overwrite), "eval.overwrite")]
    if "convert" not in before:
        checks.append(lambda: checkpoint_problems(config, workdir))
    return collect_problems(checks)


def preflight_model(config: Any, workdir: str, before: frozenset[str]) -> Any:
    """The ``ModelConfig`` a stage will load, known without loading weights: the converted
    checkpoint's (when convert does not run first), a tiny random model's from its settings; else None."""
    from moe_jax.convert import orbax_io
    from moe_jax.models.config import ModelConfig

    if "convert" not in before:
        try:
            return ModelConfig.from_dict(orbax_io.read_meta(wd.checkpoint_dir(workdir))["config"])
        except (orbax_io.CheckpointError, KeyError, TypeError, ValueError):
            return None  # no (readable) checkpoint: checkpoint_problems says so
    if config.model.source == "tiny_random":
        from moe_jax.convert import tiny
        t = config.model.tiny
        return ModelConfig.from_hf(tiny.tiny_hf_config(t.model_type, **dict(t.overrides)))
    return None


def model_option_problems(opts: Mapping[str, Any], todo: list[dict[str, Any]], cfg: Any) -> list[str]:
    """Problems of the options that depend on the model (``cfg``; None: not known yet, checked as far
    as possible): the steering file's contents, and room for ``max_gen_toks`` new tokens within the
    context when a generation task is evaluated."""
    from moe_jax.eval.steering_file import check_steering_file

    problems = []
    if opts["steering"] and not storage.isfile(opts["steering"]):
        problems.append(f"eval.steering {opts['steering']!r} is not a file")
    elif opts["steering"]:
        try:
            check_steering_file(opts["steering"], cfg)
        except (ValueError, OSError) as e:
            problems.append(f"eval.steering: {str(e).strip(chr(34))}; fix the file or clear eval.steering")
    context = opts["max_length"] or (cfg.max_position_embeddings if cfg is not None else None)
    generating = sorted({it["task"] for it in todo if it["task"] in GENERATION_TASKS})
    if context and generating and int(opts["max_gen_toks"]) >= int(context):
        problems.append(f"eval.max_gen_toks {opts['max_gen_toks']} leaves no room for the prompt in the model's "
                        f"context of {context} tokens ({', '.join(generating)} generates); give eval.max_gen_toks "
                        f"< {context}")
    return problems


def records_problem(config: Any, out_dir: str, opts: Mapping[str, Any], overwrite: bool, flag: str) -> str | None:
    """A message when ``out_dir`` holds records of another model or scoring options than ``opts``
    (unless ``overwrite``, the config field ``flag``, is on); else None."""
    from moe_jax.pipeline.convert import recorded_model_differences

    manifest = rec.read_manifest(out_dir) or {}
    ident = manifest.get("identity")
    if not ident or overwrite or not manifest.get("files"):  # no finished record (a failed run): nothing to keep
        return None
    then, now = ident.get("options") or {}, scoring_options(opts)
    diffs = recorded_model_differences(ident, config) + lineage.differences(
        {k: then[k] for k in now if k in then}, {k: now[k] for k in now if k in then}, "options")
    if diffs:
        return (f"{out_dir} holds records of another model or scoring options ({'; '.join(diffs)}); use another "
                f"--workdir, or --config.{flag}=True to replace them")
    return None

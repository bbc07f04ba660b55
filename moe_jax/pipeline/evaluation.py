"""What the eval and the steer stage share: the (task, language) pairs to evaluate (``plan``), what
determines a record (``identity``), one lm-eval run of a pair (``evaluate_pair``), which pairs a rerun
redoes (``pending_pairs``), and the preflight checks of options that depend on the model or on
existing records. The steer stage evaluates every setting exactly like the eval stage, through these.

Below the stages (eval and steer import it; it imports no stage module).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import lm_eval

from moe_jax.artifacts import eval_records as rec
from moe_jax.errors import StageError
from moe_jax.eval import tasks as task_lib
from moe_jax.eval.steering_file import check_steering_file
from moe_jax.io import hashing, storage
from moe_jax.pipeline import loading
from moe_jax.pipeline import model_identity
from moe_jax.pipeline.common import model_name, source_identity

log = logging.getLogger(__name__)

GENERATION_TASKS = ("mgsm",)  # tasks that generate: their prompt and max_gen_toks new tokens share max_length


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


def data_sha256(path: str | None) -> str | None:
    """sha256 of a local or ``gs://`` file (None for no file)."""
    return hashing.file_digest(path)[1] if path else None


def scoring_options(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The eval options that change a record (part of the records' identity)."""
    return {k: opts[k] for k in ("limit", "fixed_items", "max_length", "max_gen_toks", "apply_chat_template",
                                 "enable_thinking")}


def identity(config: Any, opts: Mapping[str, Any], ckpt_meta: Mapping[str, Any], tokenizer_sha: str) -> dict:
    """What determines the records: model, weights, dtype, tokenizer, scoring and task options."""
    return {"model": model_name(config.model), "model_source": source_identity(config.model), "dtype": config.model.dtype,
            "checkpoint_sha256": ckpt_meta.get("checkpoint_sha256"), "tokenizer_sha256": tokenizer_sha,
            "options": scoring_options(opts),
            "steering_sha256": data_sha256(opts["steering"]), "lm_eval_version": lm_eval.__version__}


def evaluate_pair(lm: Any, item: Mapping[str, Any], opts: Mapping[str, Any], task_manager: Any) -> tuple[list, dict]:
    """Runs lm-eval on one (task, language); returns its records and summary entry."""
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
                   data_sha256=data_sha256(item["data_file"]), lm_eval_tasks=lm_tasks, metric=spec.metric)
    return records, summary


def pending_pairs(out_dir: str, todo: list[dict[str, Any]], manifest: Mapping[str, Any], stage: str) -> list[dict]:
    """The pairs of ``todo`` to evaluate into ``out_dir``: unfinished in ``manifest`` (or damaged), or
    finished on other task data (the data file's sha256 differs from the recorded one: stale, said so)."""
    pending = []
    for it in todo:
        where = f"{stage}: {out_dir} {it['task']} {it['language']}"
        if not rec.is_done(out_dir, it["task"], it["language"], manifest):
            pending.append(it)
        elif manifest["files"][rec.record_key(it["task"], it["language"])].get("data_sha256") \
                != data_sha256(it["data_file"]):
            print(f"{where}: scored on other task data than {it['data_file']} holds now; evaluated again", flush=True)
            pending.append(it)
        else:
            log.info("%s already done, skipped", where)
    return pending


def model_option_problems(opts: Mapping[str, Any], todo: list[dict[str, Any]], cfg: Any) -> list[str]:
    """Problems of the options that depend on the model (``cfg``; None: not known yet, checked as far
    as possible): the steering file's contents, and room for ``max_gen_toks`` new tokens within the
    context when a generation task is evaluated."""
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
    manifest = rec.read_manifest(out_dir) or {}
    ident = manifest.get("identity")
    if not ident or overwrite or not manifest.get("files"):  # no finished record (a failed run): nothing to keep
        return None
    then, now = ident.get("options") or {}, scoring_options(opts)
    diffs = loading.recorded_model_differences(ident, config) + model_identity.differences(
        {k: then[k] for k in now if k in then}, {k: now[k] for k in now if k in then}, "options")
    if diffs:
        return (f"{out_dir} holds records of another model or scoring options ({'; '.join(diffs)}); use another "
                f"--workdir, or --config.{flag}=True to replace them")
    return None

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
written last, publishes them with the digest of the records they summarise
(``moe_jax.artifacts.stage_outputs.read_eval``: how later stages read them). The workdir may be local or ``gs://`` (``moe_jax.io.storage``); so may the
steering file and local task data (staged into a local cache for the ``datasets`` library).
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any, Mapping

import ml_collections
from lm_eval.tasks import TaskManager
from tqdm.auto import tqdm

from moe_jax.artifacts import lineage
from moe_jax.io import hashing, storage
from moe_jax.artifacts import fingerprint as provenance, layout as wd
from moe_jax.artifacts.stage_outputs import EVAL_SUMMARY_FILES as SUMMARY_FILES
from moe_jax.io.storage import atomic_write, atomic_write_json
from moe_jax.artifacts import eval_records as rec
from moe_jax.convert.loader import load_model
from moe_jax.errors import StageError
from moe_jax.eval.harness import MoeJaxLM
from moe_jax.pipeline import evaluation, loading
from moe_jax.pipeline import options as options_lib
from moe_jax.pipeline.common import collect_problems, model_name, model_warning

log = logging.getLogger(__name__)

DEMO_WARNING = "DEMO DATA: the evaluation items are the few invented DEMO items shipped with moe_jax, not benchmark data."
PIVOT = "eng_Latn"
SUMMARY_COLUMNS = ("task", "language", "code", "accuracy", "n", "ci_low", "ci_high", "interval", "truncated", "data")


def default_config() -> ml_collections.ConfigDict:
    """The ``config.eval`` section (fields, defaults and checks: ``options.EvalOptions``)."""
    return options_lib.section_config(options_lib.EvalOptions)


def options(config: Any) -> options_lib.EvalOptions:
    """``config.eval``'s options (``Options.eval``), refused with the first of their problems."""
    return options_lib.of(config).checked("eval").eval


def run(config: Any, workdir: str) -> dict[str, Any]:
    """The ``eval`` stage; returns the summary (also in ``workdir/eval/summary.json``). ``config``: the
    run's Options (``moe_jax.pipeline.options``), or a config they are built from."""
    config = options_lib.of(config).checked("eval")
    opts = config.eval
    todo = evaluation.plan(opts)
    ckpt = loading.open_checkpoint(config, workdir)
    model_problems = evaluation.model_option_problems(opts, todo, ckpt.cfg)
    if model_problems:  # before the manifest is opened: a refused run leaves the records as they were
        raise StageError("; ".join(model_problems))
    tokenizer = loading.checkpoint_tokenizer(ckpt)
    ident = evaluation.identity(config, opts, ckpt.meta, provenance.tokenizer_hash(tokenizer))
    out_dir = wd.eval_dir(workdir)
    manifest = rec.open_records(out_dir, ident, provenance.fingerprint(ident), overwrite=bool(opts.overwrite))
    pending = evaluation.pending_pairs(out_dir, todo, manifest, "eval")
    if pending:
        model = load_model(ckpt.dir, dtype=config.model.dtype)
        lm = MoeJaxLM(model=model, batch_size=int(opts.batch_size), max_length=opts.max_length,
                      max_gen_toks=int(opts.max_gen_toks), steering=opts.steering or None,
                      enable_thinking=opts.enable_thinking)
        task_manager = TaskManager(include_defaults=False)  # task configs come as dicts: no index scan
        for it in tqdm(pending, desc="eval", unit="pair", disable=not opts.progress):
            log.info("eval: %s %s (%s)", it["task"], it["language"], it["code"])
            records, summary = evaluation.evaluate_pair(lm, it, opts, task_manager)
            rec.write_records(out_dir, it["task"], it["language"], records, summary, opened=manifest)
            log.info("eval: %s %s accuracy %.4f over %d items", it["task"], it["language"], summary["accuracy"],
                     summary["n"])
    lineage.unpublish(out_dir)  # until the new summary is stamped, no reader trusts the old one
    summary = write_summary(config, opts, out_dir, todo)
    lineage.write_stamp(out_dir, lineage.describe({"records": out_dir}, workdir),
                        files={n: dict(zip(("size", "sha256"), hashing.file_digest(storage.join(out_dir, n))))
                               for n in SUMMARY_FILES})
    print(f"evaluation of {ident['model']} written to {out_dir}\n{format_summary(summary['rows'])}", flush=True)
    for w in summary["warnings"]:
        print(f"WARNING: {w}", flush=True)
    return summary


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
    warnings = [w for w in (model_warning(config.model), DEMO_WARNING if opts["source"] == "demo" else None) if w]
    summary = {"model": model_name(config.model), "rows": rows, "warnings": warnings,
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
    config = options_lib.of(config)
    if config.problems.get("eval"):  # bad eval options: the checks below need valid ones
        return config.section_problems("eval")
    opts = config.eval
    checks = [lambda: evaluation.model_option_problems(opts, evaluation.plan(opts),
                                                       loading.preflight_model(config, workdir, before)),
              lambda: evaluation.records_problem(config, wd.eval_dir(workdir), opts, bool(opts.overwrite),
                                                 "eval.overwrite")]
    if "convert" not in before:
        checks.append(lambda: loading.checkpoint_problems(config, workdir))
    return collect_problems(checks)

"""The workdir layout: where each stage reads and writes (one place, small functions returning paths).

    <workdir>/hf_tiny/              random HF checkpoint + tiny tokenizer (model.source = "tiny_random")
    <workdir>/checkpoint/           converted parameters and tokenizer (convert)
    <workdir>/.convert_source.json  what checkpoint/ was converted from (convert)
    <workdir>/routing/              routing-statistics store (collect)
    <workdir>/tasks/<name>/         routing store of each task corpus of ``config.tasks`` (collect)
    <workdir>/analysis/             tables and summary.json (analyze)
    <workdir>/eval/                 per-item records <task>/<language>.jsonl, manifest.json, summary.csv (eval)
    <workdir>/steer/                settings.json, <setting>/ records like eval/, summary.csv (steer)
    <workdir>/report/               index.html and PNGs (report)
    <workdir>/.locks/<stage>.lock   who writes that stage's outputs now (``moe_jax.pipeline.lock``)

Each output records what it was computed from: a store's meta.json and the records' manifest.json
(model, checkpoint, tokenizer, data, options), analysis/ and report/ a provenance.json of their
inputs' digests (``moe_jax.artifacts.lineage``).

Imports nothing heavy: stages and library code use it without pulling in JAX.
"""

from __future__ import annotations

import os

CHECKPOINT = "checkpoint"
TINY = "hf_tiny"
CONVERT_STAMP = ".convert_source.json"
ROUTING = "routing"
TASKS = "tasks"
ANALYSIS = "analysis"
EVAL = "eval"
STEER = "steer"
REPORT = "report"
LOCKS = ".locks"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINT)


def tiny_dir(workdir: str) -> str:
    return os.path.join(workdir, TINY)


def convert_stamp(workdir: str) -> str:
    return os.path.join(workdir, CONVERT_STAMP)


def routing_dir(workdir: str) -> str:
    return os.path.join(workdir, ROUTING)


def tasks_dir(workdir: str) -> str:
    """The parent of the task corpora's routing stores."""
    return os.path.join(workdir, TASKS)


def task_store_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, TASKS, name)


def analysis_dir(workdir: str) -> str:
    return os.path.join(workdir, ANALYSIS)


def eval_dir(workdir: str) -> str:
    return os.path.join(workdir, EVAL)


def steer_dir(workdir: str) -> str:
    return os.path.join(workdir, STEER)


def report_dir(workdir: str) -> str:
    return os.path.join(workdir, REPORT)


def lock_path(workdir: str, stage: str) -> str:
    """The lock of one stage's outputs: held while a run writes them."""
    return os.path.join(workdir, LOCKS, f"{stage}.lock")

"""Defaults of the ``config.data`` section (parallel corpus and tokenisation)."""

from __future__ import annotations

import re
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder


def default_config() -> ml_collections.ConfigDict:
    """``config.data``: which parallel corpus, and how its texts become token batches.

    source: "builtin" | "builtin_task" | "flores_plus" | "belebele" | "flores_dir" | "jsonl" (see data/corpora.py).
    task: source "builtin_task": which shipped English task corpus ("math" | "medicine").
    languages: FLORES codes ("eng_Latn,fra_Latn", tuple or list); None = every language of the source,
        English first. The first language fixes the sentence order.
    split: None = the source's default (flores_plus "dev", belebele "test"; the builtin corpus
        and split-free local files have none).
    path: the directory (flores_dir) or JSONL file/directory (jsonl).
    data_files: local copies of the hub data with the hub columns (path, list, or {split: path});
        used instead of the hub by flores_plus / belebele (offline runs, tests).
    max_sentences: keep the first N aligned sentences; None = all.
    hf_token: token for the gated FLORES+; None = HF_TOKEN / `huggingface-cli login`.
    chat_template: wrap each text as one user turn of the model's chat template.
    exclude_template_tokens: count only tokens of the user text (R counts all tokens).
    enable_thinking: passed to the template (Qwen3 with thinking disabled, as in the studies).
    max_length: longer sequences are cut to their first max_length tokens (and counted).
    padding_side: "right" or "left".
    count: for a corpus of prompt/response pairs (two-turn chats, e.g. task data), the turns whose
        tokens enter the statistics: "both" | "prompt" | "response" (not "both" needs
        exclude_template_tokens). A corpus of single texts needs "both". Set per corpus: a task
        takes its own (config.tasks.<name>.count), not config.data's.
    (Batch size, length bucketing and sorting live in config.collect, next to the forward pass.)
    Task corpora (config.tasks) reuse these fields: see ``task_data_config``.
    """
    c = ml_collections.ConfigDict()
    c.source = "builtin"
    c.task = placeholder(str)
    c.languages = placeholder(object)  # "a,b" (also from the command line), tuple or list
    c.split = placeholder(str)
    c.path = placeholder(str)
    c.data_files = placeholder(object)
    c.cache_dir = placeholder(str)
    c.max_sentences = placeholder(int)
    c.hf_token = placeholder(str)
    c.chat_template = True
    c.exclude_template_tokens = True
    c.enable_thinking = False
    c.max_length = 256
    c.padding_side = "right"
    c.count = "both"
    return c


# Fields that choose a task corpus (config.tasks.<name>), and which turns of its pairs count; every
# other data field (chat template, template-token counting, thinking, max_length, padding side)
# comes from config.data, so that task and generic data are encoded alike and their expert
# frequencies compare (task experts, docs/methods.md).
TASK_CORPUS_FIELDS = ("source", "task", "languages", "split", "path", "data_files", "max_sentences", "count")
TASK_ACCESS_FIELDS = ("hf_token", "cache_dir")  # default to config.data's
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a directory name: workdir/tasks/<name>


def _as_dict(x: Any) -> dict:
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def task_data_config(data: Any, name: str, task: Any) -> ml_collections.ConfigDict:
    """The data config of task corpus ``name``: ``config.data`` with its corpus fields replaced by
    the task's (``task``: a mapping of ``TASK_CORPUS_FIELDS`` / ``TASK_ACCESS_FIELDS``)."""
    if not isinstance(name, str) or not TASK_NAME.match(name):
        raise ValueError(f"config.tasks: task name {name!r} must be letters, digits, '_', '.' or '-' "
                         "(it names the directory workdir/tasks/<name>)")
    try:
        task = _as_dict(task)
    except (TypeError, ValueError):
        raise ValueError(f"config.tasks.{name} must be a mapping of data fields "
                         f"(e.g. {{'source': 'builtin_task', 'task': 'math'}}), got {task!r}") from None
    allowed = TASK_CORPUS_FIELDS + TASK_ACCESS_FIELDS
    unknown = sorted(set(task) - set(allowed))
    if unknown:
        raise ValueError(f"config.tasks.{name}: field(s) {unknown} cannot be set per task; allowed: "
                         f"{', '.join(allowed)} (tokenisation and template options come from config.data)")
    c = default_config()
    c.update({k: v for k, v in _as_dict(data).items() if k not in TASK_CORPUS_FIELDS})
    c.update(task)
    return c

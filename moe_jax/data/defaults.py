"""Defaults of the ``config.data`` section (parallel corpus and tokenisation)."""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder


def default_config() -> ml_collections.ConfigDict:
    """``config.data``: which parallel corpus, and how its texts become token batches.

    source: "builtin" | "flores_plus" | "belebele" | "flores_dir" | "jsonl" (see data/corpora.py).
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
    (Batch size, length bucketing and sorting live in config.collect, next to the forward pass.)
    """
    c = ml_collections.ConfigDict()
    c.source = "builtin"
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
    return c

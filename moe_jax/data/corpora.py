"""Parallel corpora for routing collection: one entry point, ``load_corpus(config.data)``.

Sources (``cfg.source``):
  builtin      the small corpus shipped in ``moe_jax/data/corpus/builtin.jsonl`` (12 languages)
  builtin_task a shipped English task corpus, ``moe_jax/data/corpus/tasks/<task>_eng.jsonl``, named by
               ``cfg.task`` ("math": grade-school word problems, "medicine": medical questions), each
               item a prompt/response pair (``Turns``, collected as a two-turn chat)
  flores_plus  FLORES+ from the hub (gated: log in and accept the terms) or ``cfg.data_files``
  belebele     Belebele passages (deduplicated by link) from the hub or ``cfg.data_files``
  flores_dir   a local directory in FLORES layout (``cfg.path``; see ``local_files``)
  jsonl        local JSONL: long, wide or one-language pair layout, single texts or prompt/response
               pairs (``cfg.path``; see ``local_files``)

Every source ends in ``parallel.align``: sentences aligned by id across languages, ids with an
empty text in any language dropped everywhere (and reported), optional cap ``max_sentences``.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

from moe_jax.data import hub, local_files
from moe_jax.data.languages import validate_languages
from moe_jax.data.parallel import (AlignmentError, CorpusError, MissingLanguageError, ParallelCorpus,  # noqa: F401
                                   align)

SOURCES = ("builtin", "builtin_task", "flores_plus", "belebele", "flores_dir", "jsonl")
DEFAULT_SPLITS = {"flores_plus": "dev", "belebele": "test"}
BUILTIN_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "builtin.jsonl")
BUILTIN_TASKS_DIR = os.path.join(os.path.dirname(BUILTIN_PATH), "tasks")
BUILTIN_TASKS = ("math", "medicine")


def parse_languages(languages) -> list[str] | None:
    """None / "" -> None (all of the source); "a,b" or ["a", "b"] -> validated list."""
    if languages is None:
        return None
    if isinstance(languages, str):
        languages = [s for s in languages.replace(",", " ").split() if s]
        if not languages:
            return None
    return validate_languages(list(languages))


def load_builtin(languages: Sequence[str] | None = None, max_sentences: int | None = None) -> ParallelCorpus:
    """The shipped corpus (42 sentences x 12 languages, 8 scripts)."""
    return load_jsonl(BUILTIN_PATH, languages, max_sentences=max_sentences, name="builtin")


def builtin_task_path(task: str) -> str:
    """Path of the shipped task corpus ``task`` (one of ``BUILTIN_TASKS``)."""
    if task not in BUILTIN_TASKS:
        raise ValueError(f"no built-in task corpus {task!r}; built-in tasks: {', '.join(BUILTIN_TASKS)} "
                         "(use source 'jsonl' with a path for other task data)")
    return os.path.join(BUILTIN_TASKS_DIR, f"{task}_eng.jsonl")


def load_builtin_task(task: str, languages: Sequence[str] | None = None,
                      max_sentences: int | None = None) -> ParallelCorpus:
    """A shipped English task corpus (48 prompt/response pairs each, written for moe_jax; see
    corpus/tasks/README.md)."""
    return load_jsonl(builtin_task_path(task), languages, max_sentences=max_sentences, name=f"builtin_task:{task}")


def load_jsonl(path: str, languages: Sequence[str] | None = None, split: str | None = None,
               max_sentences: int | None = None, name: str | None = None) -> ParallelCorpus:
    langs = parse_languages(languages)
    records, where = local_files.read_jsonl(path, langs, split)
    return align(name or f"jsonl:{path}", split, records, languages=langs, where=where,
                 max_sentences=max_sentences)


def load_flores_dir(path: str, languages: Sequence[str] | None = None, split: str | None = None,
                    max_sentences: int | None = None) -> ParallelCorpus:
    langs = parse_languages(languages)
    records, where = local_files.read_flores_dir(path, langs, split)
    return align(f"flores_dir:{path}", split, records, languages=langs or list(records), where=where,
                 max_sentences=max_sentences)


def _load_hub_source(hub_id: str, convert, name: str, languages, split: str, max_sentences,
                     hf_token, data_files, cache_dir) -> ParallelCorpus:
    langs = parse_languages(languages)
    if data_files:
        rows, where = hub.read_local_rows(data_files, split, cache_dir)
    else:
        langs = langs or hub.default_languages(hub_id)
        rows = hub.read_hub_rows(hub_id, [hub.subset_name(hub_id, lang) for lang in langs], split,
                                 token=hf_token, cache_dir=cache_dir)
        where = f"{hub_id} [{split}]"
    records = convert(rows, langs, where)
    return align(name, split, records, languages=langs or list(records),
                 where={lang: where for lang in records}, max_sentences=max_sentences)


def load_flores_plus(languages: Sequence[str] | None = None, split: str = "dev", max_sentences: int | None = None,
                     hf_token: str | None = None, data_files=None, cache_dir: str | None = None
                     ) -> ParallelCorpus:
    """FLORES+ sentences (997 dev / 1012 devtest a language); ``data_files`` reads a local copy."""
    return _load_hub_source(hub.FLORES_PLUS_HUB, hub.flores_plus_records, "flores_plus", languages, split,
                            max_sentences, hf_token, data_files, cache_dir)


def load_belebele(languages: Sequence[str] | None = None, split: str = "test", max_sentences: int | None = None,
                  hf_token: str | None = None, data_files=None, cache_dir: str | None = None) -> ParallelCorpus:
    """Belebele passages, one per link (about 488 a language); ``data_files`` reads a local copy."""
    return _load_hub_source(hub.BELEBELE_HUB, hub.belebele_records, "belebele", languages, split,
                            max_sentences, hf_token, data_files, cache_dir)


def _get(cfg: Any, key: str, default=None):
    if isinstance(cfg, dict) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    if hasattr(value, "to_dict"):  # a dict field of a ConfigDict comes back as a ConfigDict
        value = value.to_dict()
    return default if value is None else value


def load_corpus(cfg) -> ParallelCorpus:
    """Loads the corpus described by ``config.data`` (a ConfigDict, dict or attribute object).

    Fields read: source, task, languages, split, path, max_sentences, hf_token, data_files, cache_dir.
    """
    source = _get(cfg, "source", "builtin")
    if source not in SOURCES:
        raise ValueError(f"config.data.source {source!r} is not one of {SOURCES}")
    languages, max_sentences = _get(cfg, "languages"), _get(cfg, "max_sentences")
    split = _get(cfg, "split", DEFAULT_SPLITS.get(source))
    path = _get(cfg, "path")
    if source in ("flores_dir", "jsonl") and not path:
        raise ValueError(f"config.data.path must name the {source} corpus")
    if source in ("builtin", "builtin_task"):
        if split is not None:
            raise ValueError(f"the built-in corpora have a single split; leave config.data.split unset "
                             f"(got {split!r})")
        if source == "builtin":
            return load_builtin(languages, max_sentences)
        task = _get(cfg, "task")
        if not task:
            raise ValueError(f"config.data.task must name the built-in task corpus ({', '.join(BUILTIN_TASKS)}) "
                             "for source 'builtin_task'")
        return load_builtin_task(task, languages, max_sentences)
    if source == "jsonl":
        return load_jsonl(path, languages, split, max_sentences)
    if source == "flores_dir":
        return load_flores_dir(path, languages, split, max_sentences)
    loader = load_flores_plus if source == "flores_plus" else load_belebele
    return loader(languages, split, max_sentences, hf_token=_get(cfg, "hf_token"),
                  data_files=_get(cfg, "data_files"), cache_dir=_get(cfg, "cache_dir"))

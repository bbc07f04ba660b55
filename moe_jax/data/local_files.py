"""Readers for local parallel corpora: a FLORES-layout directory and JSONL files.

FLORES-layout directory (one sentence per line, one file per language, UTF-8; sentence ids are
1-based line numbers, like FLORES+ ids). For language ``L`` and split ``S`` the first existing of

    <dir>/S/L.S      (FLORES-200 release: dev/eng_Latn.dev)
    <dir>/S/S.L      (FLORES+ release: dev/dev.eng_Latn)
    <dir>/S/L.txt    <dir>/S/L    <dir>/L.S    <dir>/S.L
    <dir>/L.txt      <dir>/L      (split-free names; the only ones tried when no split is given)

is read; names match case-insensitively when no exact name exists (``eng_latn.dev``). Line endings
``\\n`` or ``\\r\\n``; blank lines at the end of a file are ignored, blank lines inside it are empty
sentences (skipped in every language by the alignment). Without a language list, every file whose
name parses as a known code under those patterns is read.

JSONL (a file, or a directory whose ``*.jsonl`` files are read in name order), one object a line:

    long:  {"id": "17", "lang": "fra_Latn", "text": "...", "split": "dev"}      (split optional)
    wide:  {"id": "17", "eng_Latn": "...", "fra_Latn": "...", "split": "dev"}  (split optional)

A line with a ``"lang"`` key is long, otherwise wide; in a wide line every key other than ``id``,
``split`` and the metadata keys url, domain, topic, source must be a language code (so that a
misspelt column is an error, not a silently missing language). With a split requested, only
lines whose ``split`` equals it are kept. Blank lines are ignored.

Two-turn texts (an instruction and its answer, e.g. task data; rendered as a user turn and an
assistant turn): the text is an object of exactly ``prompt`` and ``response`` (strings), or in the
long and one-language layouts the line holds both keys instead of ``text``:

    wide:  {"id": "m1", "eng_Latn": {"prompt": "...", "response": "..."}}
    long:  {"id": "m1", "lang": "eng_Latn", "prompt": "...", "response": "..."}
    pair:  {"id": "m1", "prompt": "...", "response": "..."}      (one language: English)

A missing turn or a non-string turn is an error naming the file, line and field; a corpus holds
either single texts or pairs, never both.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Sequence

from moe_jax.data.languages import LANGUAGES, UnknownLanguageError, sort_languages, validate_language
from moe_jax.data.parallel import CorpusError, MissingLanguageError, Turns

SPLIT_PATTERNS = ("{split}/{lang}.{split}", "{split}/{split}.{lang}", "{split}/{lang}.txt", "{split}/{lang}",
                  "{lang}.{split}", "{split}.{lang}")
PLAIN_PATTERNS = ("{lang}.txt", "{lang}")
WIDE_META_KEYS = frozenset({"id", "split", "url", "domain", "topic", "source"})
TURN_KEYS = ("prompt", "response")
PAIR_LANGUAGE = "eng_Latn"  # language of the one-language pair layout (no "lang" key)

Records = dict[str, list[tuple[str, str]]]


# ---------------------------------------------------------------------------------------------------
# FLORES-layout directory
# ---------------------------------------------------------------------------------------------------

def _patterns(split: str | None) -> tuple[str, ...]:
    return (SPLIT_PATTERNS if split else ()) + PLAIN_PATTERNS


def _find(root: str, rel: str) -> str | None:
    """``root/rel`` if it is a file, else the one file whose path matches it case-insensitively."""
    path = os.path.join(root, rel)
    if os.path.isfile(path):
        return path
    parent = os.path.join(root, os.path.dirname(rel))
    if not os.path.isdir(parent):
        parent_ci = [d for d in _listdir(root) if d.lower() == os.path.dirname(rel).lower()]
        if not parent_ci:
            return None
        parent = os.path.join(root, parent_ci[0])
    hits = [f for f in _listdir(parent) if f.lower() == os.path.basename(rel).lower()
            and os.path.isfile(os.path.join(parent, f))]
    return os.path.join(parent, hits[0]) if len(hits) == 1 else None


def _listdir(d: str) -> list[str]:
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def flores_dir_file(root: str, lang: str, split: str | None) -> str:
    """Path of ``lang``'s file under a FLORES-layout directory (see the module docstring)."""
    tried = []
    for pat in _patterns(split):
        rel = pat.format(lang=lang, split=split)
        tried.append(os.path.join(root, rel))
        hit = _find(root, rel)
        if hit:
            return hit
    available = discover_flores_dir(root, split)
    raise MissingLanguageError(
        f"no file for language {lang} (split {split!r}) under {root}; tried: {', '.join(tried)}; "
        f"languages found there: {available or 'none'}")


def discover_flores_dir(root: str, split: str | None) -> list[str]:
    """Languages with a file under ``root`` for ``split`` (English first, then sorted)."""
    lower = {c.lower(): c for c in LANGUAGES}
    found = set()
    for pat in _patterns(split):
        sub, _, base = pat.rpartition("/")
        directory = os.path.join(root, sub.format(split=split)) if sub else root
        head, _, tail = base.partition("{lang}")
        head, tail = head.format(split=split).lower(), tail.format(split=split).lower()
        for f in _listdir(directory):
            fl = f.lower()
            if fl.startswith(head) and fl.endswith(tail) and len(fl) > len(head) + len(tail):
                code = lower.get(fl[len(head):len(fl) - len(tail)])
                if code and os.path.isfile(os.path.join(directory, f)):
                    found.add(code)
    return sort_languages(found)


def read_lines(path: str) -> list[tuple[str, str]]:
    """``[(line number, text), ...]`` of a one-sentence-per-line UTF-8 file (1-based ids)."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 text: {e}") from None
    lines = [line[:-1] if line.endswith("\r") else line for line in content.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return [(str(i + 1), text) for i, text in enumerate(lines)]


def read_flores_dir(root: str, languages: Sequence[str] | None, split: str | None
                    ) -> tuple[Records, dict[str, str]]:
    """Records and file paths per language of a FLORES-layout directory."""
    if not os.path.isdir(root):
        raise CorpusError(f"FLORES directory {root!r} does not exist")
    langs = list(languages) if languages is not None else discover_flores_dir(root, split)
    if not langs:
        raise CorpusError(f"no language files under {root} for split {split!r} (names tried: "
                          f"{', '.join(_patterns(split))}, with a FLORES code for {{lang}})")
    paths = {lang: flores_dir_file(root, validate_language(lang), split) for lang in langs}
    return {lang: read_lines(p) for lang, p in paths.items()}, paths


# ---------------------------------------------------------------------------------------------------
# JSONL
# ---------------------------------------------------------------------------------------------------

def jsonl_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.jsonl")))
        if not files:
            raise CorpusError(f"no *.jsonl file in directory {path}")
        return files
    if not os.path.isfile(path):
        raise CorpusError(f"JSONL corpus {path!r} does not exist")
    return [path]


def _turns(obj: dict, loc: str, field: str = "") -> Turns:
    """The ``prompt`` and ``response`` of ``obj`` (``field``: the key path of ``obj`` for messages)."""
    for key in TURN_KEYS:
        if key not in obj:
            raise CorpusError(f"{loc}: missing key '{field}{key}' (a two-turn text has 'prompt' and 'response')")
        if not isinstance(obj[key], str):
            raise CorpusError(f"{loc}: field '{field}{key}' is {type(obj[key]).__name__}, not a string")
    return Turns(obj["prompt"], obj["response"])


def _wide_text(value, key: str, loc: str):
    if not isinstance(value, dict):
        return value  # a string (read_jsonl refuses anything else)
    extra = sorted(set(value) - set(TURN_KEYS))
    if extra:
        raise CorpusError(f"{loc}: field '{key}' has key(s) {extra}; a two-turn text is "
                          "{\"prompt\": ..., \"response\": ...}")
    return _turns(value, loc, f"{key}.")


def _parse_line(obj, loc: str) -> list[tuple[str, str, object]]:
    """(lang, id, text) triples of one JSONL object (text: a string or ``Turns``)."""
    if not isinstance(obj, dict):
        raise CorpusError(f"{loc}: expected a JSON object, got {type(obj).__name__}")
    if "id" not in obj:
        raise CorpusError(f"{loc}: missing key 'id'")
    sid = str(obj["id"])
    has_turn = any(k in obj for k in TURN_KEYS)
    if "lang" in obj:
        if "text" in obj and has_turn:
            raise CorpusError(f"{loc}: both 'text' and 'prompt'/'response'; a line holds one text")
        if has_turn:
            return [(_code(obj["lang"], loc), sid, _turns(obj, loc))]
        if "text" not in obj:
            raise CorpusError(f"{loc}: missing key 'text' (long layout: id, lang, text; or id, lang, prompt, "
                              "response)")
        return [(_code(obj["lang"], loc), sid, obj["text"])]
    if has_turn:
        extra = sorted(set(obj) - WIDE_META_KEYS - set(TURN_KEYS))
        if extra:
            raise CorpusError(f"{loc}: key(s) {extra} beside 'prompt'/'response' (pair layout: id, prompt, "
                              "response; add 'lang' for a language other than English)")
        return [(PAIR_LANGUAGE, sid, _turns(obj, loc))]
    keys = [k for k in obj if k not in WIDE_META_KEYS]
    if not keys:
        raise CorpusError(f"{loc}: no language column (wide layout: id plus one key per language code, "
                          "or long layout: id, lang, text)")
    return [(_code(k, loc), sid, _wide_text(obj[k], k, loc)) for k in keys]


def _code(code, loc: str) -> str:
    try:
        return validate_language(code)
    except UnknownLanguageError as e:
        raise UnknownLanguageError(f"{loc}: {e}") from None


_KINDS = {True: "a prompt/response pair", False: "a single text"}


def read_jsonl(path: str, languages: Sequence[str] | None, split: str | None
               ) -> tuple[Records, dict[str, str]]:
    """Records and origin per language of a JSONL corpus (see the module docstring)."""
    records: Records = {}
    first_seen: dict[tuple[str, str], str] = {}
    splits_seen: set = set()
    first_kind: tuple[bool, str] | None = None  # (two-turn, where) of the first text
    n_rows = 0
    for file in jsonl_files(path):
        with open(file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                loc = f"{file}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{loc}: invalid JSON ({e.msg})") from None
                triples = _parse_line(obj, loc)
                row_split = obj.get("split")
                splits_seen.add(row_split)
                n_rows += 1
                if split is not None and row_split != split:
                    continue
                for lang, sid, text in triples:
                    if not isinstance(text, (str, Turns)):
                        raise CorpusError(f"{loc}: text of {lang} is {type(text).__name__}, not a string "
                                          "(or a {\"prompt\", \"response\"} object)")
                    kind = (isinstance(text, Turns), loc)
                    first_kind = first_kind or kind
                    if kind[0] != first_kind[0]:
                        raise CorpusError(f"{loc}: {_KINDS[kind[0]]}, but {first_kind[1]} holds "
                                          f"{_KINDS[first_kind[0]]}; a corpus holds one kind")
                    if (lang, sid) in first_seen:
                        raise CorpusError(f"{loc}: sentence id {sid!r} of {lang} already given at "
                                          f"{first_seen[lang, sid]}")
                    first_seen[lang, sid] = loc
                    records.setdefault(lang, []).append((sid, text))
    if split is not None and not records:
        have = sorted(s for s in splits_seen if s is not None)
        raise CorpusError(f"{path}: no line with split {split!r}" +
                          (f"; splits present: {have}" if have else
                           f" ({n_rows} lines, none with a 'split' key; leave the split unset)"))
    if languages is not None:
        for lang in languages:
            if lang not in records:
                raise MissingLanguageError(f"{path}: no text in language {lang}"
                                           f"{'' if split is None else f' for split {split!r}'}; "
                                           f"languages present: {sort_languages(records)}")
        records = {lang: records[lang] for lang in languages}
    else:
        records = {lang: records[lang] for lang in sort_languages(records)}
    return records, {lang: path for lang in records}

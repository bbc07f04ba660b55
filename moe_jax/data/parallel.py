"""A parallel corpus aligned by sentence id, and the alignment every loader goes through.

Loaders produce, per language, a list of ``(sentence_id, text)`` records in file order; ``align``
checks that all languages hold the same ids (else it names the two languages and the first
differing id), orders every language like the first one, and removes the ids where ANY language
has an empty text, so that sentence ``i`` is the same sentence in every language. The counts of
empty texts per language and the dropped ids stay in the corpus (the routing store records them).

A text is a string (one user turn) or ``Turns(prompt, response)``: an instruction and its answer,
rendered as a user turn followed by an assistant turn (task corpora; see ``tokenize``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Mapping, NamedTuple, Sequence, Union

from moe_jax.data.languages import validate_languages

log = logging.getLogger(__name__)


class Turns(NamedTuple):
    """A two-turn text: the user's prompt and the assistant's response."""

    prompt: str
    response: str


Text = Union[str, Turns]
Records = Sequence[tuple[str, Text]]  # (sentence id, text) in file order


def is_text(text) -> bool:
    """A string, or ``Turns`` of two strings."""
    return isinstance(text, str) or (isinstance(text, Turns) and all(isinstance(t, str) for t in text))


def _strip(text: Text) -> Text:
    return text.strip() if isinstance(text, str) else Turns(*(t.strip() for t in text))


def _is_empty(text: Text) -> bool:
    """An empty string, or a pair with an empty prompt or response."""
    return not all(t.strip() for t in ((text,) if isinstance(text, str) else text))


class CorpusError(ValueError):
    """Bad corpus input; the message names the file, language or id at fault."""


class AlignmentError(CorpusError):
    """Languages do not hold the same sentence ids."""


class MissingLanguageError(CorpusError):
    """A requested language is not in the source."""


@dataclasses.dataclass(frozen=True)
class ParallelCorpus:
    """Sentences aligned across languages: ``texts[lang][i]`` is sentence ``ids[i]`` in ``lang``
    (a string, or ``Turns`` for a prompt/response pair).

    skipped_empty: per language, how many of its texts were empty (each empty text removes that
        id from every language, so alignment holds).
    dropped_ids: the ids so removed, in corpus order.
    """

    name: str
    split: str | None
    languages: list[str]
    ids: list[str]
    texts: dict[str, list[Text]]
    skipped_empty: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped_ids: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        validate_languages(self.languages)
        if set(self.texts) != set(self.languages):
            raise CorpusError(f"{self.name}: texts hold languages {sorted(self.texts)}, "
                              f"but languages are {self.languages}")
        for lang in self.languages:
            if len(self.texts[lang]) != len(self.ids):
                raise AlignmentError(f"{self.name}: {lang} has {len(self.texts[lang])} texts for "
                                     f"{len(self.ids)} ids")
        if len(set(self.ids)) != len(self.ids):
            raise CorpusError(f"{self.name}: duplicate sentence ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def two_turn(self) -> bool:
        """Whether the texts are prompt/response pairs (``Turns``)."""
        return any(isinstance(t, Turns) for texts in self.texts.values() for t in texts)

    def select(self, languages: Sequence[str] | None = None,
               max_sentences: int | None = None) -> "ParallelCorpus":
        """A corpus restricted to ``languages`` (in that order) and its first ``max_sentences``."""
        langs = list(self.languages) if languages is None else validate_languages(languages)
        missing = [lang for lang in langs if lang not in self.texts]
        if missing:
            raise MissingLanguageError(f"{self.name}: no language {missing}; it has {self.languages}")
        n = len(self.ids) if max_sentences is None else _check_cap(max_sentences)
        return dataclasses.replace(
            self, languages=langs, ids=self.ids[:n], texts={lang: self.texts[lang][:n] for lang in langs},
            skipped_empty={lang: self.skipped_empty.get(lang, 0) for lang in langs})


def _check_cap(max_sentences) -> int:
    if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
        raise ValueError(f"max_sentences must be a positive integer or None, got {max_sentences!r}")
    return max_sentences


def align(name: str, split: str | None, records: Mapping[str, Records], *,
          languages: Sequence[str] | None = None, where: Mapping[str, str] | None = None,
          max_sentences: int | None = None) -> ParallelCorpus:
    """Aligns per-language records by sentence id into a ``ParallelCorpus``.

    records: language -> [(id, text), ...] (text: a string or ``Turns``); the first language fixes
        the sentence order.
    where: language -> description of its origin (file path, hub subset) used in error messages.
    Texts (each turn of a pair) are stripped of surrounding whitespace; an empty text (or turn)
    drops its id from all languages.
    """
    langs = validate_languages(records if languages is None else languages)
    if not langs:
        raise CorpusError(f"{name}: no languages")
    where = dict(where or {})
    at = lambda lang: f" ({where[lang]})" if lang in where else ""  # noqa: E731
    maps: dict[str, dict[str, str]] = {}
    for lang in langs:
        if lang not in records:
            raise MissingLanguageError(f"{name}: language {lang} is missing; the source has "
                                       f"{sorted(records)}")
        m: dict[str, str] = {}
        for sid, text in records[lang]:
            sid = str(sid)
            if sid in m:
                raise CorpusError(f"{name}: sentence id {sid!r} appears twice in {lang}{at(lang)}")
            if not is_text(text):
                raise CorpusError(f"{name}: sentence {sid!r} of {lang}{at(lang)} is {type(text).__name__}, "
                                  "not a string or Turns(prompt, response) of strings")
            m[sid] = text
        maps[lang] = m
    mixed = [lang for lang in langs if any(isinstance(t, Turns) for t in maps[lang].values())]
    if mixed and any(not isinstance(t, Turns) for lang in langs for t in maps[lang].values()):
        raise CorpusError(f"{name}: mixes prompt/response pairs ({', '.join(mixed)}) with single texts; "
                          "a corpus holds one kind")
    ref = langs[0]
    ref_ids = [str(sid) for sid, _ in records[ref]]
    for lang in langs[1:]:
        _check_same_ids(name, ref, ref_ids, lang, [str(s) for s, _ in records[lang]], at)
    empty = {lang: {sid for sid, t in maps[lang].items() if _is_empty(t)} for lang in langs}
    dropped_set = set().union(*empty.values())
    dropped = [sid for sid in ref_ids if sid in dropped_set]
    ids = [sid for sid in ref_ids if sid not in dropped_set]
    if dropped:
        log.warning("%s: skipped %d ids with an empty text in some language (empty per language: %s)",
                    name, len(dropped), {k: len(v) for k, v in empty.items() if v})
    if not ids:
        raise CorpusError(f"{name}: no sentence left with a non-empty text in every language")
    if max_sentences is not None:
        ids = ids[:_check_cap(max_sentences)]
    return ParallelCorpus(name=name, split=split, languages=langs, ids=ids,
                          texts={lang: [_strip(maps[lang][sid]) for sid in ids] for lang in langs},
                          skipped_empty={lang: len(empty[lang]) for lang in langs}, dropped_ids=dropped)


def _check_same_ids(name, ref, ref_ids, lang, ids, at) -> None:
    ref_set, other = set(ref_ids), set(ids)
    if ref_set == other:
        return
    first = next(((s, ref, lang) for s in ref_ids if s not in other), None) or \
        next((s, lang, ref) for s in ids if s not in ref_set)
    raise AlignmentError(
        f"{name}: languages {ref} and {lang} are not aligned: {ref}{at(ref)} has {len(ref_ids)} "
        f"sentences, {lang}{at(lang)} has {len(ids)}; first differing id {first[0]!r} is in {first[1]} "
        f"but not in {first[2]}")

"""FLORES+ and Belebele through ``datasets``: from the Hugging Face hub or from local data files.

Both read rows with the hub schema and convert them with the same functions, so a local copy
(``data_files``: parquet, JSON/JSONL or CSV that ``datasets.load_dataset`` reads) goes through
exactly the code path of the hub data.

FLORES+ (``openlanguagedata/flores_plus``, gated; one subset per language, splits dev / devtest):
columns id, iso_639_3, iso_15924, glottocode, text, url, domain, topic, has_image, has_hyperlink,
last_updated. A row is in language ``{iso_639_3}_{iso_15924}`` (or, where FLORES+ holds two
varieties under one code, ``{iso_639_3}_{iso_15924}_{glottocode}``). FLORES+ 2.0 relabelled some
FLORES-200 codes (zho_Hans -> cmn_Hans, ...): languages keep their FLORES-200 names here and the
loader asks for the FLORES+ name (``languages.FLORES_PLUS_RENAMES``).

Belebele (``facebook/belebele``; one subset per language, split test): columns link,
question_number, flores_passage, question, mc_answer1..4, correct_answer_num, dialect, ds. Rows
are questions (900 a language, 1-2 per passage); the passages are deduplicated by ``link`` as in
the routing study (about 488 a language) and aligned across languages by link. A link that carries
two different passages in one language keeps both, the second under id ``link#2``.
"""

from __future__ import annotations

import glob
import logging
import os
from typing import Iterable, Sequence

import datasets
from tqdm.auto import tqdm

from moe_jax.data.languages import (BELEBELE_LANGUAGES, FLORES_PLUS_LANGUAGES, FLORES_PLUS_RENAMES, LANGUAGES,
                                    flores_plus_code, sort_languages)
from moe_jax.data.parallel import CorpusError, MissingLanguageError

log = logging.getLogger(__name__)

FLORES_PLUS_HUB = "openlanguagedata/flores_plus"
BELEBELE_HUB = "facebook/belebele"
FLORES_PLUS_COLUMNS = ("id", "iso_639_3", "iso_15924", "text")
BELEBELE_COLUMNS = ("link", "flores_passage", "dialect")

Records = dict[str, list[tuple[str, str]]]


class HubAccessError(RuntimeError):
    """The hub could not serve a dataset (gated, not logged in, offline, unknown subset)."""


# ---------------------------------------------------------------------------------------------------
# Reading rows
# ---------------------------------------------------------------------------------------------------

def _format_of(data_files) -> str:
    files = data_files
    if isinstance(files, dict):
        files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    elif isinstance(files, str):
        files = [files]
    exts = {os.path.splitext(str(f).lower().removesuffix(".gz"))[1] for f in files}
    kinds = {{".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(e) for e in exts}
    if len(kinds) != 1 or None in kinds:
        raise CorpusError(f"data_files {data_files!r}: expected files of one kind among .parquet, "
                          f".json, .jsonl, .csv")
    return kinds.pop()


def read_local_rows(data_files, split: str, cache_dir: str | None = None) -> tuple[list[dict], str]:
    """Rows of local files with a hub schema, read by ``datasets.load_dataset``.

    data_files: a path, a list of paths, or {split: path(s)} (then ``split`` picks the entry).
    """
    if isinstance(data_files, dict):
        if split not in data_files:
            raise CorpusError(f"data_files has splits {sorted(data_files)}, not {split!r}")
        files, ds_split = data_files, split
    else:
        files, ds_split = data_files, "train"
    fmt = _format_of(files)
    missing = [f for f in _flat(files) if not glob.glob(str(f))]
    if missing:
        raise CorpusError(f"data_files: no such file {missing[0]!r}")
    ds = datasets.load_dataset(fmt, data_files=files, split=ds_split, cache_dir=cache_dir)
    return ds.to_list(), f"data_files {files!r}"


def _flat(files) -> list[str]:
    if isinstance(files, dict):
        return [f for v in files.values() for f in _flat(v)]
    return [files] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]


def read_hub_rows(hub_id: str, subsets: Sequence[str], split: str, token: str | None = None,
                  cache_dir: str | None = None) -> list[dict]:
    """Rows of ``subsets`` (one per language) of a hub dataset, concatenated in that order."""
    rows: list[dict] = []
    for subset in tqdm(list(subsets), desc=f"{hub_id} [{split}]", unit="lang", disable=len(subsets) < 4):
        try:
            ds = datasets.load_dataset(hub_id, subset, split=split, token=token or None, cache_dir=cache_dir)
        except Exception as e:  # noqa: BLE001 - every failure gets the same actionable message
            raise hub_error(e, hub_id, subset, split) from e
        rows.extend(ds.to_list())
    return rows


def hub_error(exc: BaseException, hub_id: str, subset: str, split: str) -> HubAccessError:
    """An error message that says how to get access (gated), or how to work offline."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    url = f"https://huggingface.co/datasets/{hub_id}"
    offline = ("offline: download the files and point config.data.data_files at them (parquet/JSON with "
               "the hub columns), or use source 'flores_dir', 'jsonl' or 'builtin'")
    head = f"cannot read {hub_id} (subset {subset!r}, split {split!r})"
    if type(exc).__name__ == "GatedRepoError" or any(
            s in low for s in ("gated", "401", "403", "authenticat", "unauthorized", "invalid user token",
                               "invalid credentials", "access to dataset", "forbidden")):
        return HubAccessError(
            f"{head}: access denied. {hub_id} is a gated dataset: 1) log in at {url} and accept its "
            "terms of use; 2) authenticate this machine: run `huggingface-cli login` (or `hf auth login`), "
            "or export HF_TOKEN=<a read token>, or set config.data.hf_token; a token that is set but invalid "
            f"or expired fails the same way. {offline}. [{text}]")
    if isinstance(exc, ConnectionError) or any(s in low for s in ("couldn't reach", "offline", "connect",
                                                                  "timed out", "name resolution")):
        return HubAccessError(f"{head}: the hub cannot be reached. {offline}. [{text}]")
    if isinstance(exc, ValueError) and ("config" in low or "split" in low):
        return HubAccessError(f"{head}: no such subset or split on the hub (subsets are language codes; "
                              f"see {url}). [{text}]")
    return HubAccessError(f"{head}. {offline}. [{text}]")


# ---------------------------------------------------------------------------------------------------
# Row conversion (shared by hub and local files)
# ---------------------------------------------------------------------------------------------------

def _check_columns(rows: list[dict], required: Iterable[str], where: str, schema: str) -> None:
    if not rows:
        raise CorpusError(f"{where}: no rows")
    missing = [c for c in required if c not in rows[0]]
    if missing:
        raise CorpusError(f"{where}: missing column(s) {missing} of the {schema} schema; "
                          f"columns present: {sorted(rows[0])}")


def flores_plus_records(rows: list[dict], languages: Sequence[str] | None, where: str) -> Records:
    """Per-language ``(id, text)`` records of FLORES+ rows (any mix of languages)."""
    _check_columns(rows, FLORES_PLUS_COLUMNS, where, "FLORES+")
    by_code: dict[str, list[dict]] = {}
    for r in rows:
        base = f"{r['iso_639_3']}_{r['iso_15924']}"
        by_code.setdefault(base, []).append(r)
        if r.get("glottocode"):
            by_code.setdefault(f"{base}_{r['glottocode']}", []).append(r)
    if languages is None:
        languages = _flores_plus_present(by_code, where)
    records: Records = {}
    for lang in languages:
        code = flores_plus_code(lang)
        lang_rows = by_code.get(code) or by_code.get(lang)
        if not lang_rows:
            have = sort_languages(c for c in by_code if c.count("_") == 1)
            alias = f" (FLORES+ name {code})" if code != lang else ""
            raise MissingLanguageError(f"{where}: no rows for language {lang}{alias}; languages present: {have}")
        glottos = sorted({str(r.get("glottocode")) for r in lang_rows})
        if len(glottos) > 1:
            raise CorpusError(f"{where}: {lang} holds several varieties (glottocodes {glottos}); name one, "
                              f"e.g. {lang}_{glottos[0]}")
        records[lang] = [(str(r["id"]), r["text"]) for r in lang_rows]
    return records


def _flores_plus_present(by_code: dict[str, list[dict]], where: str) -> list[str]:
    """Registry codes of the languages in the rows: FLORES-200 names where FLORES+ relabelled."""
    back = {v: k for k, v in FLORES_PLUS_RENAMES.items()}
    out = []
    for code, rows in by_code.items():
        if code.count("_") != 1:
            continue
        varieties = {r.get("glottocode") for r in rows}
        names = [f"{code}_{g}" for g in sorted(varieties)] if len(varieties) > 1 else [code]
        for name in names:
            name = back.get(name, name)
            if name in LANGUAGES:
                out.append(name)
            else:
                log.warning("%s: skipping rows of %s, a code not in the language registry "
                            "(moe_jax.data.languages.register_language adds it)", where, name)
    return sort_languages(out)


def belebele_records(rows: list[dict], languages: Sequence[str] | None, where: str) -> Records:
    """Per-language passage records of Belebele rows: deduplicated by link, id = link."""
    _check_columns(rows, BELEBELE_COLUMNS, where, "Belebele")
    by_lang: dict[str, list[dict]] = {}
    for r in rows:
        by_lang.setdefault(r["dialect"], []).append(r)
    if languages is None:
        languages = sort_languages(c for c in by_lang if c in LANGUAGES)
    records: Records = {}
    for lang in languages:
        if lang not in by_lang:
            raise MissingLanguageError(f"{where}: no rows for language {lang}; languages present: "
                                       f"{sort_languages(by_lang)}")
        passages: dict[str, list[str]] = {}
        out = []
        for r in by_lang[lang]:
            link, text = str(r["link"]), r["flores_passage"]
            seen = passages.setdefault(link, [])
            key = (text or "").strip()
            if key in seen:
                continue  # the passage's second question
            seen.append(key)
            out.append((link if len(seen) == 1 else f"{link}#{len(seen)}", text))
        records[lang] = out
    return records


def default_languages(hub_id: str) -> list[str]:
    """All languages of a hub source (used when none are given)."""
    return sort_languages(FLORES_PLUS_LANGUAGES if hub_id == FLORES_PLUS_HUB else BELEBELE_LANGUAGES)


def subset_name(hub_id: str, lang: str) -> str:
    return flores_plus_code(lang) if hub_id == FLORES_PLUS_HUB else lang

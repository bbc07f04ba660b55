"""Per-language accuracies for the correlation analysis, from a dict or a CSV / JSON file.

* dict (or ConfigDict) ``{language: accuracy}``;
* JSON file: ``{language: accuracy}`` or ``{"accuracy": {language: accuracy}}``;
* CSV file with a header: a language column (``language``, ``lang`` or ``code``) and an accuracy
  column (``accuracy``, ``acc`` or ``score``).

The file may be local or on ``gs://`` (``moe_jax.io.storage``). Any scale works (fractions or percent) as long as it is one scale for all languages. A language
listed twice (two CSV rows, two JSON keys) is an error. ``to_flores`` maps the keys to FLORES codes
(MGSM / Global-MMLU report ISO 639-1 codes: ``bn`` -> ``ben_Beng``), so that they match the store.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any, Iterable, Mapping

from moe_jax.io import storage
from moe_jax.data import languages as lang_lib

LANG_COLUMNS = ("language", "lang", "code")
ACC_COLUMNS = ("accuracy", "acc", "score")


def _check(values: Mapping[str, Any], source: str) -> dict[str, float]:
    out = {}
    for lang, v in values.items():
        try:
            out[str(lang)] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: accuracy of {lang!r} is not a number: {v!r}") from None
        if not math.isfinite(out[str(lang)]):
            raise ValueError(f"{source}: accuracy of {lang!r} is not finite: {v!r}")
    return out


def _read_csv(path: str) -> dict[str, float]:
    rows = list(csv.DictReader(io.StringIO(storage.read_bytes(path).decode("utf-8"), newline="")))
    if not rows:
        return {}
    cols = {c.strip().lower(): c for c in rows[0]}
    lc = next((cols[c] for c in LANG_COLUMNS if c in cols), None)
    ac = next((cols[c] for c in ACC_COLUMNS if c in cols), None)
    if lc is None or ac is None:
        raise ValueError(f"{path}: expected a header with a language column {LANG_COLUMNS} and an "
                         f"accuracy column {ACC_COLUMNS}, got {list(rows[0])}")
    values: dict[str, Any] = {}
    for i, r in enumerate(rows, start=2):  # line 1 is the header
        lang = (r[lc] or "").strip()
        if lang in values:
            raise ValueError(f"{path}: language {lang!r} has two rows (the second on line {i})")
        values[lang] = r[ac]
    return _check(values, path)


def _no_duplicate_keys(path: str):
    def hook(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise ValueError(f"{path}: key {k!r} appears twice")
            seen.add(k)
        return dict(pairs)
    return hook


def load_accuracy(spec) -> dict[str, float]:
    """``{language: accuracy}`` from a mapping, a path to a CSV/JSON file, or None/"" (empty)."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping) or hasattr(spec, "to_dict"):
        return _check(spec.to_dict() if hasattr(spec, "to_dict") else spec, "accuracy")
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"accuracy must be a dict or a path to a CSV/JSON file, got {type(spec).__name__}")
    path = os.fspath(spec)
    if not storage.exists(path):
        raise FileNotFoundError(f"accuracy file {path} does not exist")
    if path.lower().endswith(".json"):
        data = json.loads(storage.read_bytes(path), object_pairs_hook=_no_duplicate_keys(path))
        if isinstance(data, Mapping) and isinstance(data.get("accuracy"), Mapping):
            data = data["accuracy"]
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected {{language: accuracy}} or {{'accuracy': {{...}}}}")
        return _check(data, path)
    if path.lower().endswith(".csv"):
        return _read_csv(path)
    raise ValueError(f"accuracy file {path}: expected a .csv or .json file")


EVAL_TASK = "belebele"  # the eval stage's task whose accuracies the correlation uses by default


def from_eval_summary(path: str, task: str = EVAL_TASK) -> dict[str, float]:
    """``{FLORES code: accuracy}`` of one task in the eval stage's ``summary.json`` ({} when the file
    or the task is absent; the per-task mean row is left out)."""
    summary = storage.read_json(path)
    if summary is None:
        return {}
    rows = summary.get("rows", [])
    return {r["language"]: float(r["accuracy"]) for r in rows
            if r.get("task") == task and r.get("language") != "mean_non_english"}


def _code(key: str, known: set[str]) -> str:
    """FLORES code of one accuracy key: a store / registry code as is, an ISO 639-1 code (``bn``)
    through the registry's mapping, an ISO 639-3 code (``ben``) when one registry code has it."""
    if key in known or key in lang_lib.LANGUAGES:
        return key
    if key.isalpha() and len(key) == 2:
        return lang_lib.from_iso639_1(key)
    if key.isalpha() and len(key) == 3:
        codes = sorted(c for c in set(lang_lib.LANGUAGES) | known if c.split("_")[0] == key.lower())
        if len(codes) == 1:
            return codes[0]
        if codes:
            raise lang_lib.UnknownLanguageError(f"ambiguous language code {key!r}: one of {', '.join(codes)}?")
    return lang_lib.validate_language(key)


def to_flores(accuracy: Mapping[str, float], known: Iterable[str] = (),
              source: str = "accuracy") -> tuple[dict[str, float], dict[str, str]]:
    """``({FLORES code: accuracy}, {original key: code} of the keys that were renamed)``.

    ``known``: codes accepted as they are (the store's languages, even if not in the registry).
    An unknown code raises ``UnknownLanguageError`` with the close matches; two keys naming one
    language (``bn`` and ``ben_Beng``) raise ``ValueError``.
    """
    known = set(known)
    out: dict[str, float] = {}
    origin: dict[str, str] = {}
    for key, value in accuracy.items():
        try:
            code = _code(str(key).strip(), known)
        except lang_lib.UnknownLanguageError as e:
            raise lang_lib.UnknownLanguageError(f"{source}: {e}") from None
        if code in out:
            raise ValueError(f"{source}: keys {origin[code]!r} and {key!r} both name language {code!r}")
        out[code], origin[code] = value, str(key)
    return out, {k: c for c, k in origin.items() if k != c}

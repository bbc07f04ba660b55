"""Per-language accuracies for the correlation analysis, from a dict or a CSV / JSON file.

* dict (or ConfigDict) ``{language: accuracy}``;
* JSON file: ``{language: accuracy}`` or ``{"accuracy": {language: accuracy}}``;
* CSV file with a header: a language column (``language``, ``lang`` or ``code``) and an accuracy
  column (``accuracy``, ``acc`` or ``score``).

Any scale works (fractions or percent) as long as it is one scale for all languages.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping

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
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols = {c.strip().lower(): c for c in rows[0]}
    lc = next((cols[c] for c in LANG_COLUMNS if c in cols), None)
    ac = next((cols[c] for c in ACC_COLUMNS if c in cols), None)
    if lc is None or ac is None:
        raise ValueError(f"{path}: expected a header with a language column {LANG_COLUMNS} and an "
                         f"accuracy column {ACC_COLUMNS}, got {list(rows[0])}")
    return _check({r[lc].strip(): r[ac] for r in rows}, path)


def load_accuracy(spec) -> dict[str, float]:
    """``{language: accuracy}`` from a mapping, a path to a CSV/JSON file, or None/"" (empty)."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping) or hasattr(spec, "to_dict"):
        return _check(spec.to_dict() if hasattr(spec, "to_dict") else spec, "accuracy")
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"accuracy must be a dict or a path to a CSV/JSON file, got {type(spec).__name__}")
    path = os.fspath(spec)
    if not os.path.exists(path):
        raise FileNotFoundError(f"accuracy file {path} does not exist")
    if path.lower().endswith(".json"):
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, Mapping) and isinstance(data.get("accuracy"), Mapping):
            data = data["accuracy"]
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected {{language: accuracy}} or {{'accuracy': {{...}}}}")
        return _check(data, path)
    if path.lower().endswith(".csv"):
        return _read_csv(path)
    raise ValueError(f"accuracy file {path}: expected a .csv or .json file")

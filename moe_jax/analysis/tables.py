"""Analysis tables as CSV (for people and pandas) and JSON (for the report), written atomically.

A table is a list of records (dicts with the same keys). ``write_table(dir, name, records)``
writes ``name.csv`` and ``name.json``; ``read_table`` reads the JSON back. Paths may be local or
``gs://`` URLs (``moe_jax.io.storage``). The writers return each file's ``integrity.entry_of`` (size and
sha256 of the bytes written), which the analyze stage records in ``provenance.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from typing import Any, Iterable, Mapping

import numpy as np

from moe_jax.io import integrity, storage
from moe_jax.io.storage import read_json


def to_jsonable(obj: Any) -> Any:
    """NumPy scalars/arrays, tuples and dataclasses as plain JSON values; NaN/inf become None."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str, obj: Any) -> dict[str, Any]:
    """Indented JSON; a list of records is written one record per line. Returns the file's record."""
    obj = to_jsonable(obj)
    if isinstance(obj, list) and all(isinstance(r, dict) for r in obj):
        text = "[\n" + ",\n".join(json.dumps(r, allow_nan=False) for r in obj) + "\n]\n"
    else:
        text = json.dumps(obj, indent=1, allow_nan=False)
    return _write(path, text.encode())


def _write(path: str, data: bytes) -> dict[str, Any]:
    storage.atomic_write_bytes(path, data)
    return integrity.entry_of(data)


def write_csv(path: str, records: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> dict[str, Any]:
    records = [to_jsonable(r) for r in records]
    if columns is None:
        columns = list(records[0]) if records else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r.get(k) is None else
                        " ".join(map(str, r[k])) if isinstance(r.get(k), list) else r[k]) for k in columns})
    return _write(path, buf.getvalue().encode())


def write_table(directory: str, name: str, records: list[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Writes ``name.csv`` and ``name.json`` (a list of records) under ``directory``; returns
    ``{file name: record}`` of the two."""
    return {f"{name}.csv": write_csv(storage.join(directory, f"{name}.csv"), records),
            f"{name}.json": write_json(storage.join(directory, f"{name}.json"), list(records))}


def read_table(directory: str, name: str) -> list[dict] | None:
    """Records of table ``name`` (from its JSON), or None when the table was not written."""
    return read_json(storage.join(directory, f"{name}.json"))

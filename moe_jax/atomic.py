"""Atomic file writes (temp file in the same directory + fsync + ``os.replace``).

A reader sees either the old file or the complete new one, never a partial write, so an
interrupted run can always tell finished outputs from unfinished ones.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write_fn: Callable[[BinaryIO], Any], mode: int = 0o644) -> None:
    """Calls ``write_fn(f)`` on a temp file, then renames it to ``path`` (created with ``mode``)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike, *, invalid_ok: bool = False) -> Any:
    """The JSON value in ``path``; None when the file does not exist (or, with ``invalid_ok``, is not
    valid JSON: a stamp that is simply rewritten). Invalid JSON otherwise raises ValueError naming the file."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        if invalid_ok:
            return None
        raise ValueError(f"{os.fspath(path)} is not valid JSON ({e})") from e

"""One writer per stage output at a time: a lock object per stage in the workdir.

``<workdir>/.locks/<stage>.lock`` holds who writes that stage's outputs: ``pid``, ``host``,
``since`` (UTC), the process start time (to tell a reused pid from the holder) and the command.
``hold(workdir, stages)`` takes every requested stage's lock before the first stage writes and
releases them at the end (also on failure):

* a lock held by a live process is refused, naming who holds it (pid, host, since, command) and what
  to do; nothing is taken (the locks already taken for this run are given back);
* a lock of a process that is gone (same host: no such pid, a zombie, or the pid reused by a later
  process) is stale: it is taken over, with a warning naming the dead holder;
* a lock from another host cannot be checked from here: refused, naming the file to delete once that
  run is known to be gone.

Locally the lock appears complete or not at all (a hard link, which never replaces a file), so two
runs racing for it cannot both win. On ``gs://`` it is one object uploaded create-only
(``ifGenerationMatch=0``): best effort, since taking over a stale lock is read, compare, delete,
create (two runs taking over the same stale lock in the same instant could both succeed).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import secrets
import socket
import sys
from typing import Any, Iterator, Sequence

from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.errors import PreflightError

log = logging.getLogger(__name__)

FORMAT = "moe_jax.lock/1"


class WorkdirLockedError(PreflightError):
    """Another run is writing a requested stage's outputs (or may be: a lock that cannot be checked)."""


def _stat_field(pid: int, index: int) -> str | None:
    """Field ``index`` (0 = state, 19 = start time in clock ticks since boot) after the command name
    in ``/proc/<pid>/stat``, or None (no such process, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[index]
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    return _stat_field(pid, 19)


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` of this host runs (a zombie does not; nor a later process that reuses
    the pid, when ``started`` is the holder's recorded start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    if _stat_field(pid, 0) == "Z":
        return False
    return not (started and _start_time(pid) not in (None, started))


def _record(stage: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"format": FORMAT, "stage": stage, "pid": pid, "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "started": _start_time(pid), "command": " ".join(sys.argv)[:500], "token": secrets.token_hex(8)}


def _read(path: str) -> dict[str, Any] | None:
    """The lock record at ``path`` (None if absent); a lock that is not ours to read raises, naming it."""
    try:
        held = storage.read_json(path)
    except ValueError:
        held = "invalid"
    if held is None:
        return None
    if not isinstance(held, dict) or held.get("format") != FORMAT or not isinstance(held.get("pid"), int):
        raise WorkdirLockedError(f"{path} is not a {FORMAT} lock: if no run is writing this workdir, delete it")
    return held


def _holder(held: dict[str, Any]) -> str:
    since = held.get("since", "?")
    try:
        age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(since)
        since += f", {int(age.total_seconds())} s ago"
    except (TypeError, ValueError):
        pass
    return f"pid {held['pid']} on host {held.get('host', '?')} since {since} (command: {held.get('command') or '?'})"


def acquire(workdir: str, stage: str) -> dict[str, Any]:
    """Takes ``stage``'s lock in ``workdir``; returns the record written. ``WorkdirLockedError`` if a live
    or unverifiable holder has it; a stale one is taken over with a warning."""
    path = wd.lock_path(workdir, stage)
    mine = _record(stage)
    for _ in range(5):  # a lost race re-reads the winner
        try:
            storage.create_exclusive(path, (json.dumps(mine, indent=1) + "\n").encode())
        except FileExistsError:
            pass
        else:
            if (_read(path) or {}).get("token") == mine["token"]:  # the GCS emulator does not enforce create-only
                return mine
        held = _read(path)
        if held is None:
            continue  # released meanwhile
        here = held.get("host") == mine["host"]
        if not here:
            raise WorkdirLockedError(
                f"the {stage} stage's outputs in {workdir} are being written by another run: {_holder(held)}. "
                f"Wait for it to end, or use another --workdir; that host is not this one ({mine['host']}), so this "
                f"run cannot check it: if that run is gone, delete {path}")
        if process_alive(int(held["pid"]), held.get("started")):
            raise WorkdirLockedError(
                f"the {stage} stage's outputs in {workdir} are being written by another run: {_holder(held)}, still "
                f"running. Wait for it to end (or stop it: kill {held['pid']}), or use another --workdir")
        if _read(path) == held:  # still the dead holder's: take it over
            log.warning("%s: taking over the %s stage's lock of %s, which is no longer running (killed?)",
                        path, stage, _holder(held))
            with contextlib.suppress(FileNotFoundError):
                storage.remove(path)
    raise WorkdirLockedError(f"could not take {path}: other runs keep taking it; try again")


def release(workdir: str, record: dict[str, Any]) -> None:
    """Deletes the lock ``record`` took, if it is still that one (never another run's)."""
    path = wd.lock_path(workdir, record["stage"])
    with contextlib.suppress(FileNotFoundError, WorkdirLockedError):
        held = _read(path)
        if held is not None and held.get("token") == record["token"]:
            storage.remove(path)


@contextlib.contextmanager
def hold(workdir: str, stages: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
    """Holds the lock of every stage of ``stages`` (taken in order, all or none) while the block runs."""
    taken: list[dict[str, Any]] = []
    try:
        for stage in stages:
            taken.append(acquire(workdir, stage))
        yield taken
    finally:
        for record in reversed(taken):
            release(workdir, record)

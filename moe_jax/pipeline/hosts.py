"""Every process of a run must read what process 0 writes: the workdir is storage all of them share.

On a TPU pod slice every host is a separate VM with its own disk. A ``gs://`` workdir is shared by
construction. A local path is shared only when every process names the same directory on the same
machine, or on a filesystem all hosts mount (NFS); otherwise the other hosts would find no checkpoint
and no store, or silently read a stale copy. So, before anything is written:

* ``check_workdir_agreement``: every process reports its host and absolute workdir; if the processes
  were given different workdirs, or one local path on several hosts without
  ``distributed.shared_workdir=True``, every process raises the same ``PreflightError`` (the gathered
  facts are the same everywhere, so none waits for another).
* ``check_workdir_visible``: for a local workdir, process 0 writes a nonce file and every process
  must read it back; any that cannot is named (catches a ``shared_workdir=True`` that is not true).
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from moe_jax import distributed
from moe_jax.io import storage
from moe_jax.errors import PreflightError

PROBE = ".moe_jax_shared_probe"
_WIDTH = 4096  # bytes per process in the all-gather (host + path)


def _allgather_text(text: str) -> list[str]:
    """Each process's ``text`` (utf-8, at most ``_WIDTH`` bytes), in process order."""
    raw = text.encode()
    if len(raw) > _WIDTH:
        raise PreflightError(f"workdir path too long to compare across processes ({len(raw)} > {_WIDTH} bytes): {text}")
    buf = np.zeros(_WIDTH + 4, np.uint8)
    buf[:4] = np.frombuffer(np.uint32(len(raw)).tobytes(), np.uint8)
    buf[4:4 + len(raw)] = np.frombuffer(raw, np.uint8)
    if jax.process_count() == 1:
        rows = buf[None]
    else:
        rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), -1)
    return [bytes(r[4:4 + int(np.frombuffer(r[:4].tobytes(), np.uint32)[0])]).decode() for r in rows]


def workdir_problem(places: Sequence[tuple[str, str]], shared_workdir: bool) -> str | None:
    """Why processes at ``places`` (``(host, absolute workdir)`` per process) cannot share a workdir,
    or None. Pure: the collective part is ``check_workdir_agreement``."""
    if len(places) < 2:
        return None
    paths = sorted({p for _, p in places})
    hosts = sorted({h for h, _ in places})
    listing = "; ".join(f"process {i}: {h}:{p}" for i, (h, p) in enumerate(places))
    if len(paths) > 1:
        return (f"the {len(places)} processes of this run were given different workdirs ({listing}): process 0 "
                "writes the checkpoint and stores that the others read, so every process needs the same --workdir, "
                "on storage all of them reach (gs://bucket/prefix on a pod)")
    if storage.is_remote(paths[0]) or len(hosts) == 1 or shared_workdir:
        return None
    return (f"--workdir={paths[0]} is a local path, and this run's {len(places)} processes are on {len(hosts)} hosts "
            f"({', '.join(hosts)}): each host has its own disk, so the others would not find what process 0 writes. "
            "Use a bucket (--workdir=gs://bucket/prefix, docs/storage.md), or, if this path is a filesystem every host "
            "mounts (NFS), say so with --config.distributed.shared_workdir=True (checked by a probe file)")


def check_workdir_agreement(workdir: str, shared_workdir: bool) -> None:
    """Raises the same PreflightError on every process if they cannot share ``workdir`` (no-op with one)."""
    if jax.process_count() == 1:
        return
    places = [tuple(t.split("\t", 1)) for t in _allgather_text(f"{socket.gethostname()}\t{storage.absolute(workdir)}")]
    problem = workdir_problem(places, shared_workdir)
    if problem:
        raise PreflightError(f"nothing was written: {problem}")


def check_workdir_visible(workdir: str) -> None:
    """For a local workdir under several processes: process 0 writes a nonce, every process reads it;
    the same PreflightError everywhere names the processes that cannot (no-op with one process or gs://)."""
    if jax.process_count() == 1 or storage.is_remote(workdir):
        return
    probe = os.path.join(workdir, PROBE)
    nonce = secrets.token_hex(16)
    distributed.run_on_writer(lambda: storage.atomic_write_bytes(probe, nonce.encode()), f"writing {probe}")
    expected = _allgather_text(nonce)[0]
    try:
        seen = storage.read_bytes(probe).decode()
    except OSError as e:
        seen = f"<{type(e).__name__}>"
    blind = [i for i, s in enumerate(_allgather_text(seen)) if s != expected]
    if distributed.is_writer():
        storage.remove(probe)
    if blind:
        hosts = _allgather_text(socket.gethostname())
        raise PreflightError(f"--workdir={workdir} is not shared: process 0 wrote {probe}, and process(es) "
                             + ", ".join(f"{i} on {hosts[i]}" for i in blind)
                             + " could not read it back. Use a bucket (--workdir=gs://bucket/prefix) or a "
                             "filesystem every host mounts")

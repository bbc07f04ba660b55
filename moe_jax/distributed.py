"""Multi-host process control: when to start ``jax.distributed`` (``initialize_distributed``, with
Cloud TPU pod-slice detection), and the writer protocol of a run spanning several processes: process 0
writes shared outputs (``is_writer``, ``run_on_writer``), the others compute alongside and wait
(``sync``, ``broadcast_from_writer``). With one process every call is a no-op or runs locally.

Layer 1 (beside ``io/``): jax only, nothing above it. Mesh partitioning is ``moe_jax.sharding``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

try:  # jax's own Cloud TPU detection: private modules, absent from some jax versions (then nothing is detected)
    from jax._src import cloud_tpu_init
    from jax._src.clusters import cloud_tpu_cluster
except ImportError:
    cloud_tpu_init = cloud_tpu_cluster = None

from moe_jax.errors import MeshError


class WriterFailedError(RuntimeError):
    """Raised on processes 1.. when process 0 failed in work that only it does (see its log)."""


T = TypeVar("T")


# Environment of a Cloud TPU job spanning several hosts, as jax's own cluster detection
# (jax._src.clusters.cloud_tpu_cluster) reads it: the slice's worker list (GKE, or exported by the
# launch/ scripts) and the multislice (megascale) variables.
TPU_WORKER_LIST_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
MEGASCALE_VARS = ("MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES")


def _gce_tpu_worker_endpoints() -> str | None:
    """The GCE metadata's ``worker-network-endpoints`` on a Cloud TPU VM (None elsewhere): how a TPU
    VM pod slice lists its workers when no environment variable does. Asked only on a TPU VM."""
    try:
        if not cloud_tpu_init.running_in_cloud_tpu_vm:
            return None
        text, code = cloud_tpu_cluster.get_metadata("worker-network-endpoints")
        return text if code == 200 else None
    except Exception:  # no metadata server, no requests, a jax without these modules: not detected
        return None


def multihost_tpu_detected(environ: Mapping[str, str] | None = None,
                           worker_endpoints: Callable[[], str | None] = _gce_tpu_worker_endpoints) -> bool:
    """True in a Cloud TPU job of several hosts (pod slice or multislice), where
    ``jax.distributed.initialize()`` finds coordinator, process count and id by itself.

    Detected from ``environ`` (default ``os.environ``): a worker list of more than one host in
    ``TPU_PROCESS_ADDRESSES`` / ``TPU_WORKER_HOSTNAMES``, or a multislice job (``MEGASCALE_NUM_SLICES``
    > 1 or ``MEGASCALE_COORDINATOR_ADDRESS``); else, on a Cloud TPU VM with the metadata server not
    switched off (``TPU_SKIP_MDS_QUERY``), more than one worker in the metadata's endpoints.
    """
    env = os.environ if environ is None else environ
    for var in TPU_WORKER_LIST_VARS:
        if env.get(var):
            return len([h for h in env[var].split(",") if h.strip()]) > 1
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    try:
        if int(env.get("MEGASCALE_NUM_SLICES") or 1) > 1:
            return True
    except ValueError:
        raise MeshError(f"MEGASCALE_NUM_SLICES={env['MEGASCALE_NUM_SLICES']!r} is not an integer") from None
    if env.get("TPU_SKIP_MDS_QUERY") is not None:
        return False
    endpoints = worker_endpoints()
    return bool(endpoints) and len([w for w in endpoints.split(",") if w.strip()]) > 1


def distributed_mode(value: Any) -> bool | str:
    """``config.distributed.enabled`` as True, False or "auto" (strings from the command line too)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "", "none"):
        return False
    raise MeshError(f"distributed.enabled={value!r}: expected True, False or 'auto'")


def initialize_distributed(dist: Mapping[str, Any] | None,
                           detect: Callable[[], bool] = multihost_tpu_detected) -> bool:
    """``jax.distributed.initialize`` from ``config.distributed``; returns whether it was called.

    Fields: ``enabled`` (True, False, or "auto": on exactly when ``detect()`` finds a multi-host TPU
    job), ``coordinator_address`` ("host:port"; empty = auto-detect on SLURM/TPU/...),
    ``num_processes``, ``process_id`` (-1 / None = auto-detect), ``cpu_collectives`` ("gloo" so that
    CPU processes can run collectives). Must run before anything touches a jax device.
    """
    if not dist:
        return False
    mode = distributed_mode(dist.get("enabled", False))
    if mode == "auto":
        mode = detect()
        if mode:
            print("distributed.enabled=auto: multi-host TPU job detected, initialising jax.distributed", flush=True)
    if not mode:
        return False
    if dist.get("cpu_collectives"):
        jax.config.update("jax_cpu_collectives_implementation", dist["cpu_collectives"])
    kwargs: dict[str, Any] = {}
    if dist.get("coordinator_address"):
        kwargs["coordinator_address"] = dist["coordinator_address"]
    for key in ("num_processes", "process_id"):
        v = dist.get(key)
        if v is not None and int(v) >= 0:
            kwargs[key] = int(v)
    if "process_id" in kwargs and "num_processes" in kwargs and not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
        raise MeshError(f"distributed.process_id={kwargs['process_id']} is not in "
                        f"[0, num_processes={kwargs['num_processes']})")
    jax.distributed.initialize(**kwargs)
    return True


def is_writer() -> bool:
    """Process 0 writes shared outputs; the others compute alongside and wait."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def broadcast_from_writer(x: np.ndarray) -> np.ndarray:
    """Process 0's value of ``x`` on every process (same shape and dtype everywhere)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.broadcast_one_to_all(np.asarray(x)))


def run_on_writer(fn: Callable[[], T], what: str) -> T | None:
    """Runs ``fn()`` on process 0 only (writing shared outputs) and tells every process how it went.

    Returns ``fn``'s result on process 0 and None on the others, once process 0 is done (the status
    broadcast doubles as a barrier). If ``fn`` raises, process 0 re-raises its exception and every
    other process raises ``WriterFailedError``, instead of waiting forever at the next collective.
    ``what``: the work, for that message ("writing language fra_Latn to DIR").
    """
    result, error = None, None
    if is_writer():
        try:
            result = fn()
        except Exception as e:  # reported to the others first, then re-raised
            error = e
    failed = bool(broadcast_from_writer(np.asarray([error is not None], np.int32))[0])
    if error is not None:
        raise error
    if failed:
        raise WriterFailedError(f"process 0 failed while {what}; its log (stderr) shows the error")
    return result

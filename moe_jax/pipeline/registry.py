"""The pipeline: a registry of ``stage(config, workdir)`` functions and of their preflight checks,
which stages read which upstream outputs (and so run after them), the full default config, the cheap
config check, and ``run_stages``. Which stages depend on which is read here: ``READS`` and ``STALENESS``
(an upstream output that a requested stage reads and that is stale makes its stage run first:
``schedule``); the order of ``STAGES`` (a stage reads what the earlier ones write).

Imported only by the command line (``moe_jax.launch``) and top-level code: stage modules and library
code never import it (their shared pieces live in ``moe_jax.pipeline``, the workdir layout in
``moe_jax.artifacts.layout``). Stages are imported lazily, so a missing optional dependency of one stage
never breaks another.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from moe_jax import sharding as shd
from moe_jax import distributed
from moe_jax.io import storage, reach as storage_reach
from moe_jax.pipeline import hosts as workdir_hosts, lock as workdir_lock, options
from moe_jax.pipeline.common import collect_problems
from moe_jax.errors import PreflightError, StageError

log = logging.getLogger(__name__)

STAGES: dict[str, str] = {
    "convert": "moe_jax.pipeline.convert:run",
    "collect": "moe_jax.pipeline.collect:run",
    "eval": "moe_jax.pipeline.eval:run",
    "analyze": "moe_jax.pipeline.analyze:run",
    "steer": "moe_jax.pipeline.steer:run",
    "report": "moe_jax.pipeline.report:run",
}
# Each stage's ``preflight(config, workdir, before) -> [problem, ...]``: cheap checks of its inputs and of
# what it would replace, given ``before`` (the stages that run earlier in the same run and so produce
# their outputs first). Nothing is written, downloaded or compiled. A stage without one has no checks.
PREFLIGHTS: dict[str, str] = {
    "convert": "moe_jax.pipeline.convert:preflight",
    "collect": "moe_jax.pipeline.collect:preflight",
    "eval": "moe_jax.pipeline.eval:preflight",
    "analyze": "moe_jax.pipeline.analyze:preflight",
    "steer": "moe_jax.pipeline.steer:preflight",
    "report": "moe_jax.pipeline.report:preflight",
}
# Upstream outputs a stage reads that must be current when it runs: ``reads(options) -> (stage, ...)``
# (steer reads the analysis' middle band for steer.bands "auto"; report shows the analysis).
READS: dict[str, str] = {
    "steer": "moe_jax.pipeline.steer:reads",
    "report": "moe_jax.pipeline.report:reads",
}
# How a stage's outputs are found stale: ``staleness(options, workdir) -> [what changed, ...]`` ([] =
# current, or no outputs: a missing output is the reader's preflight problem, naming the command).
STALENESS: dict[str, str] = {
    "analyze": "moe_jax.pipeline.analyze:staleness",
}


def parse_stages(spec: str | Sequence[str]) -> list[str]:
    """``"convert,collect"`` or a list -> validated names. Refused, each with the valid order: an empty
    list or an empty name (``--stages=``, ``a,,b``), an unknown name, a name given twice, names out of
    the pipeline's order (a stage reads what the earlier ones write: ``report,analyze`` would report
    the old analysis)."""
    raw = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec)]
    order = ",".join(STAGES)
    fix = f"stages run in this order: {order}; give a subset of them in that order, e.g. --stages={order}"
    if not any(raw):
        raise StageError(f"no stages given ({_shown(spec)}); {fix}")
    if not all(raw):
        raise StageError(f"an empty stage name in {_shown(spec)}; {fix}")
    unknown = [n for n in raw if n not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; known stages: {', '.join(STAGES)} ({fix})")
    twice = sorted({n for n in raw if raw.count(n) > 1}, key=list(STAGES).index)
    if twice:
        raise StageError(f"stage(s) {twice} given more than once in {_shown(spec)}; {fix}")
    ordered = sorted(raw, key=list(STAGES).index)
    if raw != ordered:
        raise StageError(f"stages {_shown(spec)} are out of order (here: --stages={','.join(ordered)}); {fix}")
    return raw


def _shown(spec: str | Sequence[str]) -> str:
    return repr(spec if isinstance(spec, str) else ",".join(spec))


def _target(spec: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function; a stage module is imported only when its entry is used."""
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def get_stage(name: str) -> Callable[[Any, str], Any]:
    return _target(STAGES[parse_stages([name])[0]])


def schedule(config: Any, workdir: str, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``names`` plus each upstream stage whose outputs a stage of ``names`` reads (``READS``) and finds
    stale (``STALENESS``): it runs first, in the pipeline's order, logged as such ("analyze: scheduled
    before report: ..."). Decided once, here: no stage runs another. Returns the names to run and the
    problems met while deciding (an upstream stage's bad options), each prefixed with its stage."""
    out, problems = list(names), []
    for name in names:
        reads = READS.get(name)
        for upstream in _target(reads)(config) if reads else ():
            if upstream in out:
                continue  # it runs first anyway (requested, or scheduled for an earlier reader)
            try:
                changed = _target(STALENESS[upstream])(config, workdir)
            except (ValueError, OSError, LookupError) as e:  # StageError, ...: its preflight's problem too
                problems.append(f"[{upstream}] " + str(e).strip("'\""))
                continue
            if changed:
                log.warning("%s: scheduled before %s: its outputs were computed from other inputs than the current "
                            "ones (changed: %s)", upstream, name, ", ".join(changed))
                out.append(upstream)
    return sorted(out, key=list(STAGES).index), problems


def preflight(config: Any, workdir: str, names: Sequence[str]) -> list[str]:
    """Decides which stages run (``schedule``: ``names`` and the upstream stages whose stale outputs
    they read) and runs the preflight of each (in order, each knowing which run before it); raises one
    PreflightError listing every problem of every stage, with its fix. Writes nothing; returns the
    names to run. ``config``: the run's Options (``moe_jax.pipeline.options``), or a config they are
    built from."""
    config = options.of(config)
    names, problems = schedule(config, workdir, names)
    for i, name in enumerate(names):
        target = PREFLIGHTS.get(name)
        if target is None:
            continue
        check = _target(target)
        found = collect_problems([lambda: check(config, workdir, frozenset(names[:i]))])  # a raise: one problem
        problems += [f"[{name}] {p}" for p in found]
    if problems:
        where = f"{workdir} was left as it was" if storage.exists(workdir) else f"{workdir} was not created"
        raise PreflightError(f"the requested stages ({','.join(names)}) cannot run; nothing was written ({where}):\n  "
                         + "\n  ".join(problems))
    return names


def run_stages(config: Any, workdir: str, stages: str | Sequence[str] | None = None) -> None:
    """Runs ``stages`` (default ``config.stages``) in order. Every name, the config and every stage's
    preflight (``PREFLIGHTS``) are checked first, before the workdir is created or anything is written;
    with several processes, every process first checks that they share one workdir
    (``moe_jax.pipeline.hosts``), then process 0 checks the stages (the inputs may live on its host only) and takes every requested
    stage's lock (``moe_jax.pipeline.lock``: a second run writing the same stage is refused, naming the first)."""
    names = parse_stages(config.stages if stages is None else stages)
    config = check_config(config)  # the run's Options, built once: every stage reads its options there
    try:
        storage.path(workdir)  # a URL's scheme and bucket name, gcsfs installed
        storage_reach.check_reachable(workdir)  # one bounded request, before the clients' long retry chains
    except (ValueError, ImportError, storage_reach.StorageUnreachableError) as e:
        raise PreflightError(f"--workdir: {e}") from None
    check_workdir_is_directory(workdir)
    workdir_hosts.check_workdir_agreement(workdir, bool(config.distributed.get("shared_workdir", False)))
    names = _from_writer(distributed.run_on_writer(lambda: preflight(config, workdir, names),
                                                   "checking the requested stages"))
    storage.makedirs(workdir)
    workdir_hosts.check_workdir_visible(workdir)
    with contextlib.ExitStack() as held:  # process 0 writes, so it holds the stages' locks
        distributed.run_on_writer(lambda: held.enter_context(workdir_lock.hold(workdir, names)), "locking the stages")
        for name in names:
            log.info("stage %s", name)
            get_stage(name)(config, workdir)


def _from_writer(names: Sequence[str] | None) -> list[str]:
    """Process 0's stage names (its preflight decided them) on every process."""
    mask = distributed.broadcast_from_writer(np.asarray([n in (names or ()) for n in STAGES], np.int32))
    return [n for n, m in zip(STAGES, mask) if m]


def check_workdir_is_directory(workdir: str) -> None:
    """A local workdir that is a file (or lies under one) is one clear error, not one per stage."""
    if storage.is_remote(workdir):
        return  # object storage has no files that block a prefix
    here = os.path.abspath(workdir)
    while not os.path.exists(here) and os.path.dirname(here) != here:
        here = os.path.dirname(here)
    if not os.path.isdir(here):
        what = "is a file" if here == os.path.abspath(workdir) else f"lies under {here}, which is a file"
        raise PreflightError(f"--workdir={workdir} {what}, not a directory; nothing was written. Give a directory "
                             "(a missing one is created), e.g. a new path beside it")


def default_config():
    """A complete pipeline config with every section at its default (what configs/*.py start from;
    the sections' fields and defaults live in ``moe_jax.pipeline.options``)."""
    return options.default_config()


def check_config(config: Any, num_devices: int | None = None) -> options.Options:
    """Cheap checks of a pipeline config before any stage runs (no download, no device work):
    sections, stages, every field (``options.from_config``: unknown fields, types, model source and
    dtype, data and task sources and language codes), mesh axes and batch. Returns the Options.

    ``num_devices``: check the mesh against this many devices (default: skip the mesh size check).
    """
    missing = [k for k in ("model", "data", "collect", "mesh", "distributed", "stages") if k not in config]
    if missing:
        raise StageError(f"config lacks section(s) {missing}")
    opts = options.of(config)
    parse_stages(opts.stages)
    if num_devices is None:  # the smallest device count the shape allows (-1 axis = 1): checks the fixed axes
        num_devices = math.prod(v for v in opts.mesh.shape.values() if v > 0)
    dist = opts.distributed
    processes = int(dist.num_processes) if distributed.distributed_mode(dist.enabled) and int(dist.num_processes) > 0 else 1
    shd.check_batch_size(int(opts.collect.batch_size), shd.mesh_axis_sizes(opts.mesh.shape, num_devices),
                         num_processes=processes)
    return opts

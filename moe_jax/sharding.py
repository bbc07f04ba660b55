"""Device mesh from a config, logical-axis rules -> ``NamedSharding`` trees, batch sharding.

Mesh axes (major to minor, whatever order the config lists them in):

    data   batch rows (data parallelism; spans processes first)
    model  parameter dimensions named by the rules below (tensor / expert parallelism;
           kept minor so that it stays inside one host's fast interconnect)

``mesh.shape = {"data": -1, "model": 1}``: -1 (at most one axis) takes all remaining devices.

Logical-axis rules map the names of ``moe_jax.models.params.logical_axes`` to mesh axes. A rule
applies to one dimension only if that dimension's size is divisible by the mesh axis size, and a
mesh axis is used at most once per array (the first dimension that claims it wins); otherwise the
dimension is replicated. So any rule table is *correct* for any model; the table only decides how
well work and memory are spread.

All checks (unknown axis names, a mesh that does not match the device count, a batch that does not
split over the data axis) raise ``MeshError`` before anything is compiled. Multi-host process control
(``jax.distributed``, process 0 as the writer) is ``moe_jax.distributed``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from moe_jax.errors import MeshError
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import map_spec

MESH_AXES = ("data", "model")
BATCH_AXIS = "data"

# logical axis -> mesh axis (None: replicated). Names not listed are replicated.
DEFAULT_RULES: dict[str, str | None] = {
    "layers": None,  # the leading axis of a run's stacked layers: scanned, so never split
    "vocab": None,
    "embed": None,
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "expert": "model",
    "expert_mlp": "model",  # used only when "expert" could not take "model" (experts % model != 0)
}



def mesh_axis_sizes(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Resolves ``{"data": -1, "model": 2}`` against ``num_devices`` -> ``{"data": n/2, "model": 2}``."""
    shape = {str(k): int(v) for k, v in dict(shape).items()}
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise MeshError(f"mesh.shape has unknown axis names {unknown}; known axes: {list(MESH_AXES)}")
    sizes = {a: shape.get(a, 1) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    bad = [a for a, s in sizes.items() if s == 0 or s < -1]
    if bad or len(free) > 1:
        raise MeshError(f"mesh.shape {shape}: sizes must be positive, with at most one -1 "
                        f"(offending axes: {bad or free})")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if num_devices % fixed:
            raise MeshError(f"mesh.shape {shape}: {num_devices} devices are not divisible by the fixed "
                            f"axes' product {fixed}")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise MeshError(f"mesh.shape {shape} has {fixed} devices in all, but {num_devices} devices "
                        "are available (use -1 on one axis to take the rest)")
    return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence[Any] | None = None) -> Mesh:
    """A ``Mesh`` with axes ``MESH_AXES`` over ``devices`` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_axis_sizes(shape, len(devices))
    dims = tuple(sizes[a] for a in MESH_AXES)
    try:  # topology-aware device order on GPU/TPU
        # Auto axes: GSPMD propagates shardings; no explicit-sharding rules inside the forward.
        return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * len(dims), devices=devices)
    except Exception:  # e.g. an unusual CPU device set: plain row-major order is always valid
        return Mesh(np.asarray(devices, dtype=object).reshape(dims), MESH_AXES,
                    axis_types=(AxisType.Auto,) * len(dims))


def check_rules(rules: Mapping[str, str | None], mesh: Mesh) -> None:
    bad = {k: v for k, v in rules.items() if v is not None and v not in mesh.axis_names}
    if bad:
        raise MeshError(f"sharding rules map to unknown mesh axes {bad}; mesh axes: {list(mesh.axis_names)}")


def partition_axes(shape: Sequence[int], axes: Sequence[str | None], sizes: Mapping[str, int],
                   rules: Mapping[str, str | None] = DEFAULT_RULES) -> tuple[str | None, ...]:
    """Mesh axis (or None) of each dim of one array, from the mesh's axis ``sizes`` alone (no devices:
    the memory planner uses it for meshes it does not have): a dim gets its rule's axis if it divides."""
    used: set[str] = set()
    out: list[str | None] = []
    for dim, name in zip(shape, axes):
        target = rules.get(name) if name is not None else None
        if target is not None and target not in used and dim % sizes[target] == 0:
            used.add(target)
            out.append(target)
        else:
            out.append(None)
    return tuple(out)


def logical_to_spec(shape: Sequence[int], axes: Sequence[str | None], mesh: Mesh,
                    rules: Mapping[str, str | None] = DEFAULT_RULES) -> P:
    """``PartitionSpec`` of one array: each dim gets its rule's mesh axis if it divides, else None."""
    return P(*partition_axes(shape, axes, dict(mesh.shape), rules))


def param_shardings(cfg: ModelConfig, mesh: Mesh, rules: Mapping[str, str | None] | None = None) -> dict:
    """Tree of ``NamedSharding`` with the structure of the parameter tree of ``cfg``."""
    rules = DEFAULT_RULES if rules is None else dict(rules)
    check_rules(rules, mesh)
    return map_spec(lambda _, s: NamedSharding(mesh, logical_to_spec(s[0], s[1], mesh, rules)), cfg)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows over the data axis, other dims replicated: ``[batch, ...]``."""
    return NamedSharding(mesh, P(BATCH_AXIS, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Any, num_processes: int | None = None) -> None:
    """The batch must split evenly over the data axis and over the processes.

    ``mesh``: a ``Mesh`` (or ``AbstractMesh``) or its axis sizes (``mesh_axis_sizes``); ``num_processes``: default
    ``jax.process_count()`` (pass it to check a config before ``jax.distributed`` is initialised).
    """
    sizes = dict(mesh) if isinstance(mesh, Mapping) else dict(mesh.shape)
    n_data = sizes[BATCH_AXIS]
    if batch_size <= 0 or batch_size % n_data:
        raise MeshError(f"batch size {batch_size} is not divisible by the mesh's data axis ({n_data} "
                        "devices); change collect.batch_size or mesh.shape")
    processes = jax.process_count() if num_processes is None else num_processes
    if batch_size % processes:
        raise MeshError(f"batch size {batch_size} is not divisible by the {processes} processes")


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """Rows of a global ``[batch_size, ...]`` batch that this process must supply (contiguous)."""
    sharding = batch_sharding(mesh, 1)
    idx = sharding.addressable_devices_indices_map((batch_size,)).values()
    starts = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop) for s in idx})
    lo, hi = starts[0][0], starts[-1][1]
    covered = sum(b - a for a, b in starts)
    if covered != hi - lo:
        raise MeshError(f"process {jax.process_index()} holds non-contiguous batch rows {starts}; "
                        "put the data axis across processes (model axis within a host)")
    return slice(lo, hi)


def global_batch(mesh: Mesh, local: np.ndarray, batch_size: int) -> jax.Array:
    """Global ``[batch_size, ...]`` array from this process's rows ``local`` (see ``process_rows``)."""
    shape = (batch_size,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(batch_sharding(mesh, local.ndim), local, shape)


# -------------------------------------------------------------------------------------------- config

def rules_from_config(mesh_cfg: Mapping[str, Any] | None) -> dict[str, str | None]:
    """``DEFAULT_RULES`` updated with ``config.mesh.rules`` ("" or "none" = replicated)."""
    rules = dict(DEFAULT_RULES)
    for k, v in dict((mesh_cfg or {}).get("rules") or {}).items():
        rules[k] = None if v in (None, "", "none", "None") else str(v)
    return rules

"""Expert dispatch backends: how tokens reach their top-k experts. Exact and dropless.

Every backend computes, for ``x [T, H]``, ``idx [T, k]``, ``w [T, k]`` and stacked gated experts
``gate/up [E, H, F]``, ``down [E, F, H]`` (optional biases ``gate_bias/up_bias [E, F]``,
``down_bias [E, H]``)::

    y[t] = sum_j w[t, j] * (act(gate_e x[t] + bg_e, up_e x[t] + bu_e) down_e + bd_e),   e = idx[t, j]

with ``act`` from ``ACTIVATIONS`` (the family's ``expert_act``): ``silu(g) * u``, or GPT-OSS's
clamped form ``(clip(u, -l, l) + 1) * g' * sigmoid(alpha g')`` with ``g' = min(g, l)``.

- ``dense``: every expert on every token, combined with a [T, E] weight matrix. Reference; cheap
  to compile, E/k times the useful FLOPs.
- ``grouped``: the T*k assignments sorted by expert, each expert's group padded to a multiple of a
  block of ``b`` rows, and the blocks run through a ``lax.scan`` whose expert id per block is data
  (the weights are sliced, never gathered; a block past the last used one is skipped by a
  ``lax.cond``). At most ``(T*k + E*b) / b`` blocks, so about ``(T*k + E*b) * 6HF`` FLOPs; ``b`` is
  picked per shape so that the padding stays under a quarter of the useful rows. Portable; the
  fastest backend on CPU.
- ``ragged``: the same sort, then ``jax.lax.ragged_dot`` (on CPU a masked dense product, E times
  the FLOPs and an ``[E, T*k, H]`` temporary: never pick it there).
- ``tokamax``: the same sort, then ``tokamax.ragged_dot`` (Mosaic kernels on H100-class GPUs and
  TPUs, XLA elsewhere; tokamax picks). Needs the ``gpu``/``tpu`` extra.
- ``auto``: the fastest exact backend for the platform (``resolve``), logged once.

No backend has a capacity factor or drops a token; padding rows are computed and discarded.
"""

from __future__ import annotations

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array, jax.Array], jax.Array]
EXPERT_KEYS = ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")  # the routed experts' leaves
log = logging.getLogger(__name__)


def swiglu(g: jax.Array, u: jax.Array) -> jax.Array:
    return jax.nn.silu(g) * u


def clamped_swiglu(g: jax.Array, u: jax.Array, limit: float, alpha: float) -> jax.Array:
    """GPT-OSS: gate clamped above, up clamped both sides, ``(up + 1)`` as the reference computes it."""
    g = jnp.minimum(g, limit)
    u = jnp.clip(u, -limit, limit)
    return (u + 1) * (g * jax.nn.sigmoid(g * alpha))


# FamilySpec.expert_act -> activation built from the config.
ACTIVATIONS: dict[str, Callable[..., Activation]] = {
    "swiglu": lambda cfg: swiglu,
    "clamped_swiglu": lambda cfg: functools.partial(clamped_swiglu, limit=cfg.swiglu_limit, alpha=cfg.swiglu_alpha),
}


def activation(cfg) -> Activation:
    """The routed experts' activation of ``cfg``'s family."""
    return ACTIVATIONS[cfg.family.expert_act](cfg)


def combine_weights(idx: jax.Array, w: jax.Array, num_experts: int) -> jax.Array:
    """``[T, E]`` matrix holding ``w[t, j]`` at ``(t, idx[t, j])``."""
    return jnp.einsum("tk,tke->te", w, jax.nn.one_hot(idx, num_experts, dtype=w.dtype))


def _bias(p: dict, name: str, rows: jax.Array | int | None = None) -> jax.Array | float:
    """``p[name]`` (all experts, or the experts ``rows``), or 0 where the family has no such bias."""
    if name not in p:
        return 0.0
    return p[name] if rows is None else p[name][rows]


def dense_dispatch(x, idx, w, p, act):
    cw = combine_weights(idx, w, p["gate"].shape[0])
    g = jnp.einsum("th,ehf->tef", x, p["gate"]) + _bias(p, "gate_bias")
    u = jnp.einsum("th,ehf->tef", x, p["up"]) + _bias(p, "up_bias")
    y = jnp.einsum("tef,efh,te->th", act(g, u), p["down"], cw)
    return y + cw @ p["down_bias"] if "down_bias" in p else y


class SortedAssignments:
    """The T*k token-expert assignments sorted by expert (stable): what the grouped backends share.

    ``order [T*k]``: flat assignment id (``t * k + j``) of each sorted row; ``experts [T*k]``: the
    expert of each sorted row; ``sizes [E]`` int32: rows per expert.
    """

    def __init__(self, idx: jax.Array, num_experts: int):
        self.k = idx.shape[1]
        flat = idx.reshape(-1)
        self.order = jnp.argsort(flat, stable=True)
        self.experts = flat[self.order]
        self.sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)

    def tokens(self) -> jax.Array:
        return self.order // self.k

    def combine(self, rows: jax.Array, w: jax.Array) -> jax.Array:
        """``rows [T*k, H]`` in sorted order -> ``sum_j w[t, j] * row(t, j)``: ``[T, H]``."""
        T, k = w.shape
        out = jnp.zeros_like(rows).at[self.order].set(rows).reshape(T, k, -1)  # back to assignment order
        return jnp.einsum("tkh,tk->th", out, w)


def _sorted_grouped(x, idx, w, p, act, matmul):
    """Sort, then three grouped matmuls ``matmul(lhs [T*k, K], rhs [E, K, N], sizes [E])``."""
    E = p["gate"].shape[0]
    s = SortedAssignments(idx, E)
    xs, es = x[s.tokens()], jnp.minimum(s.experts, E - 1)  # an absent id E (weight 0) reads any bias
    g = matmul(xs, p["gate"], s.sizes) + _bias(p, "gate_bias", es)
    u = matmul(xs, p["up"], s.sizes) + _bias(p, "up_bias", es)
    out = matmul(act(g, u), p["down"], s.sizes) + _bias(p, "down_bias", es)  # [T*k, H] sorted
    return s.combine(out, w)


def ragged_dispatch(x, idx, w, p, act):
    return _sorted_grouped(x, idx, w, p, act, jax.lax.ragged_dot)


def tokamax_dispatch(x, idx, w, p, act):
    import tokamax  # lazily: an optional dependency (the gpu/tpu extras)
    from absl import flags
    if not flags.FLAGS.is_parsed():  # else tokamax parses sys.argv, another program's command line, as absl flags
        flags.FLAGS.mark_as_parsed()
    return _sorted_grouped(x, idx, w, p, act, tokamax.ragged_dot)


# Padding rows of ``grouped`` may cost at most this fraction of the useful rows (picks the block).
PADDING_BUDGET = 0.25
MIN_BLOCK, MAX_BLOCK = 8, 128


def block_size(rows: int, num_experts: int, budget: float = PADDING_BUDGET) -> int:
    """Largest power of two ``b`` in ``[MIN_BLOCK, MAX_BLOCK]`` with ``E * b <= budget * rows``
    (``MIN_BLOCK`` when none is): bigger blocks run faster, smaller ones pad less."""
    b = MIN_BLOCK
    while b * 2 <= MAX_BLOCK and num_experts * b * 2 <= budget * rows:
        b *= 2
    return b


def max_blocks(rows: int, num_experts: int, block: int) -> int:
    """Upper bound on ``sum_e ceil(n_e / b)`` over every split of ``rows`` among the experts (at
    most ``min(E, rows)`` groups are non-empty, each wasting at most ``b - 1`` rows)."""
    return (rows + min(num_experts, rows) * (block - 1)) // block


def grouped_dispatch(x, idx, w, p, act, block: int | None = None):
    T, k = idx.shape
    E, H, _ = p["gate"].shape
    n = T * k
    b = block_size(n, E) if block is None else block
    nb = max_blocks(n, E, b)
    p = {name: jnp.asarray(p[name]) for name in EXPERT_KEYS if name in p}  # sliced by a traced expert id below
    s = SortedAssignments(idx, E)  # an id E (expert parallelism: another shard's expert) sorts last
    blocks = (s.sizes + b - 1) // b  # [E] blocks per expert
    ends = jnp.cumsum(blocks)
    first_row = jnp.cumsum(s.sizes) - s.sizes  # [E] sorted row of each expert's first assignment
    # padded row of each sorted assignment: its expert's first block, plus its rank in the group
    padded = (ends - blocks)[s.experts] * b + jnp.arange(n) - first_row[s.experts]
    padded = jnp.where(s.experts < E, padded, nb * b)  # out of range: dropped below, reads 0
    row_token = jnp.zeros((nb * b,), jnp.int32).at[padded].set(s.tokens().astype(jnp.int32), mode="drop")
    block_expert = jnp.searchsorted(ends, jnp.arange(nb), side="right")  # [nb]; E past the last block
    live = block_expert < E
    block_expert = jnp.minimum(block_expert, E - 1)

    def run(xe, e):  # xe [b, H]: one block of one expert's rows
        g = xe @ p["gate"][e] + _bias(p, "gate_bias", e)
        u = xe @ p["up"][e] + _bias(p, "up_bias", e)
        return act(g, u) @ p["down"][e] + _bias(p, "down_bias", e)

    def body(_, inputs):
        xe, e, on = inputs
        return None, jax.lax.cond(on, run, lambda xe, e: jnp.zeros((b, H), x.dtype), xe, e)

    _, yb = jax.lax.scan(body, None, (x[row_token].reshape(nb, b, H), block_expert, live))
    return s.combine(yb.reshape(nb * b, H).at[padded].get(mode="fill", fill_value=0), w)


BACKENDS: dict[str, Callable] = {"dense": dense_dispatch, "grouped": grouped_dispatch, "ragged": ragged_dispatch,
                                 "tokamax": tokamax_dispatch}
AUTO = "auto"


def tokamax_available() -> bool:
    try:
        import tokamax  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Names in ``BACKENDS`` that run here (tokamax only when installed)."""
    return [b for b in BACKENDS if b != "tokamax" or tokamax_available()]


@functools.cache
def _platform_choice(platform: str) -> str:
    """``auto``'s backend on a platform, logged once: tokamax's kernels on GPU/TPU when installed,
    the scan of blocks otherwise."""
    choice = "tokamax" if platform in ("gpu", "cuda", "rocm", "tpu") and tokamax_available() else "grouped"
    log.info("expert dispatch backend 'auto' -> %r on %s", choice, platform)
    return choice


def resolve(backend: str) -> str:
    """The backend ``backend`` names (``auto``: the fastest exact one for the default platform)."""
    if backend == AUTO:
        return _platform_choice(jax.default_backend())
    if backend not in BACKENDS:
        raise ValueError(f"unknown dispatch backend {backend!r}; available: {sorted(BACKENDS) + [AUTO]}")
    return backend


# Mesh axes of expert parallelism (``moe_jax.sharding``: experts over "model", batch rows over "data").
EXPERT_AXIS, TOKEN_AXIS = "model", "data"


def expert_parallel(fn: Callable, x, idx, w, p, act, mesh) -> jax.Array:
    """``fn`` on each device's own experts (``E / m`` of them, ``m`` the ``model`` axis) and own rows
    of ``x`` (split over ``data`` when they divide), summed over ``model``: the expert weights never
    move. An assignment to another shard's expert becomes local id ``E / m`` with weight 0, which
    every backend skips (an id past the last expert)."""
    m = mesh.shape[EXPERT_AXIS]
    local_e = p["gate"].shape[0] // m
    rows = TOKEN_AXIS if TOKEN_AXIS in mesh.axis_names and x.shape[0] % mesh.shape[TOKEN_AXIS] == 0 else None
    P = jax.sharding.PartitionSpec
    p = {name: p[name] for name in EXPERT_KEYS if name in p}

    def local(x, idx, w, p):
        lo = jax.lax.axis_index(EXPERT_AXIS) * local_e
        mine = (idx >= lo) & (idx < lo + local_e)
        y = fn(x, jnp.where(mine, idx - lo, local_e), jnp.where(mine, w, 0), p, act)
        return jax.lax.psum(y, EXPERT_AXIS)

    specs = (P(rows), P(rows), P(rows), {name: P(EXPERT_AXIS) for name in p})
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(rows), check_vma=False)(x, idx, w, p)


def _expert_mesh(num_experts: int):
    """The context mesh (``jax.set_mesh``) when it splits the experts over ``model``, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
        return None
    m = mesh.shape[EXPERT_AXIS]
    return mesh if m > 1 and num_experts % m == 0 else None


def dispatch(x: jax.Array, idx: jax.Array, w: jax.Array, experts: dict, backend: str = AUTO,
             act: Activation = swiglu) -> jax.Array:
    """Runs the routed experts. ``experts`` holds ``gate``, ``up``, ``down`` and optionally
    ``gate_bias``, ``up_bias``, ``down_bias``; ``act`` combines gate and up. Returns ``[T, H]``.

    Under a context mesh (``jax.set_mesh``) whose ``model`` axis divides the experts, each device
    runs its own experts (``expert_parallel``)."""
    fn = BACKENDS[resolve(backend)]
    mesh = _expert_mesh(experts["gate"].shape[0])
    if mesh is not None:
        return expert_parallel(fn, x, idx, w.astype(x.dtype), experts, act, mesh)
    return fn(x, idx, w.astype(x.dtype), experts, act)

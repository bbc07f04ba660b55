"""Expert dispatch backends: how tokens reach their top-k experts. Exact and dropless.

Every backend computes, for ``x [T, H]``, ``idx [T, k]``, ``w [T, k]`` and stacked gated experts
``gate/up [E, H, F]``, ``down [E, F, H]`` (optional biases ``gate_bias/up_bias [E, F]``,
``down_bias [E, H]``)::

    y[t] = sum_j w[t, j] * (act(gate_e x[t] + bg_e, up_e x[t] + bu_e) down_e + bd_e),   e = idx[t, j]

with ``act`` from ``ACTIVATIONS`` (the family's ``expert_act``): ``silu(g) * u``, or GPT-OSS's
clamped form ``(clip(u, -l, l) + 1) * g' * sigmoid(alpha g')`` with ``g' = min(g, l)``.

- ``dense``: every expert on every token, combined with a [T, E] weight matrix. Reference; cheap
  to compile, E/k times the useful FLOPs.
- ``grouped``: the T*k assignments sorted by expert; a loop over the experts that have rows slices
  each one's weights once (never gathered) and runs its rows in chunks of static sizes (512 rows,
  then at most one each of 256, 128, ..., 8, then 8 rows over the last < 8), each chunk gathering its
  tokens and adding its weighted rows into the output. A group of ``n`` rows costs
  ``ceil(n / 8) * 8`` rows, so about ``(T*k + 4E) * 6HF`` FLOPs; the loops' trip counts are data,
  so an empty expert costs nothing. Portable; the fastest backend on CPU (there, few large
  matmuls beat many small ones, and adding each chunk into ``[T, H]`` beats sorting ``[T*k, H]``
  rows back).
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
from absl import flags

from moe_jax.models import layers

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
        n = T * k
        # back to assignment order by a gather through the inverse permutation (on CPU a scatter
        # of the rows costs ~5x the gather)
        where = jnp.zeros((n,), jnp.int32).at[self.order].set(jnp.arange(n, dtype=jnp.int32))
        return jnp.einsum("tkh,tk->th", rows[where].reshape(T, k, -1), w)


def _sorted_grouped(x, idx, w, p, act, matmul):
    """Sort, then three grouped matmuls ``matmul(lhs [T*k, K], rhs [E, K, N], sizes [E])``."""
    E = p["gate"].shape[0]
    s = SortedAssignments(idx, E)
    xs, es = x[s.tokens()], jnp.minimum(s.experts, E - 1)  # an absent id E (weight 0) reads any bias
    g = matmul(xs, p["gate"], s.sizes) + _bias(p, "gate_bias", es)
    u = matmul(xs, p["up"], s.sizes) + _bias(p, "up_bias", es)
    out = matmul(act(g, u), p["down"], s.sizes) + _bias(p, "down_bias", es)  # [T*k, H] sorted
    # rows of an absent id E lie past every group: a kernel may leave them unwritten (tokamax's TPU
    # kernel does: NaN), and weight 0 times NaN is NaN, so they are zeroed rather than weighted
    return s.combine(jnp.where((s.experts < E)[:, None], out, 0), w)


def ragged_dispatch(x, idx, w, p, act):
    return _sorted_grouped(x, idx, w, p, act, jax.lax.ragged_dot)


def tokamax_dispatch(x, idx, w, p, act, implementation=None):
    """``implementation``: tokamax's choice (None: the best for the platform), or a sequence of its
    ragged-dot implementations to try in order (e.g. its TPU kernel in Pallas interpret mode)."""
    tokamax = _import_tokamax()
    if not flags.FLAGS.is_parsed():  # else tokamax parses sys.argv, another program's command line, as absl flags
        flags.FLAGS.mark_as_parsed()
    return _sorted_grouped(x, idx, w, p, act, functools.partial(tokamax.ragged_dot, implementation=implementation))


# ``grouped`` runs each expert's rows in chunks of MAX_CHUNK rows, then one chunk of each smaller
# power of two down to MIN_CHUNK that fits, then one MIN_CHUNK chunk over the last < MIN_CHUNK rows.
MIN_CHUNK, MAX_CHUNK = 8, 512  # on CPU 512 runs ~8% faster than 128 at ~1000 rows per expert, the same below


def chunk_sizes(max_chunk: int = MAX_CHUNK, min_chunk: int = MIN_CHUNK) -> tuple[int, ...]:
    """``(max_chunk, max_chunk / 2, ..., min_chunk)``: powers of two apart, so a group of ``n`` rows
    runs as ``ceil(n / min_chunk) * min_chunk`` rows."""
    ratio = max_chunk // min_chunk if min_chunk >= 1 and max_chunk % min_chunk == 0 else 0
    if ratio < 1 or ratio & (ratio - 1):  # not min_chunk times a power of two
        raise ValueError(f"chunks need max_chunk ({max_chunk}) = min_chunk ({min_chunk}) * a power of two")
    sizes = [max_chunk]
    while sizes[-1] > min_chunk:
        sizes.append(sizes[-1] // 2)
    return tuple(sizes)


def grouped_rows(sizes: jax.Array, min_chunk: int = MIN_CHUNK) -> jax.Array:
    """Rows ``grouped`` computes for groups of ``sizes [E]`` rows: each rounded up to ``min_chunk``."""
    return jnp.sum((sizes + min_chunk - 1) // min_chunk * min_chunk)


def grouped_expert_rows(x, idx, w, p, act, max_chunk: int = MAX_CHUNK, min_chunk: int = MIN_CHUNK,
                        layer: jax.Array | int | None = None):
    """``grouped``'s output ``[T, H]`` and the number of expert rows it computed (counted by its loops).
    With ``layer``, every leaf of ``p`` has a leading layer axis and expert ``e`` is ``p[..][layer, e]``.

    A loop over the experts that have rows (data-dependent trip count: at most ``min(E, T*k)``
    iterations) slices that expert's weights once, then walks its rows (contiguous in the sorted
    order) in chunks of static sizes (``chunk_sizes``): each chunk gathers its tokens from ``x``,
    runs the expert and adds the weighted rows into ``[T, H]`` (float32). Only the last chunk may
    run past the group's end; its rows there get weight 0. An absent id E sorts last, outside
    every group, so it is never run."""
    T, k = idx.shape
    E, H, _ = p["gate"].shape[-3:]
    n = T * k
    sizes = [c for c in chunk_sizes(max_chunk, min_chunk) if c <= n] or [min_chunk]  # no group exceeds n rows
    p = {name: jnp.asarray(p[name]) for name in EXPERT_KEYS if name in p}  # sliced by a traced expert id below
    s = SortedAssignments(idx, E)  # an id E (expert parallelism: another shard's expert) sorts last
    pad = lambda a: jnp.concatenate([a, jnp.zeros((min_chunk,), a.dtype)])  # noqa: E731  the last chunk's overhang
    tokens, weights = pad(s.tokens().astype(jnp.int32)), pad(w.reshape(-1)[s.order].astype(jnp.float32))
    starts = jnp.cumsum(s.sizes) - s.sizes
    used = s.sizes > 0
    order = jnp.nonzero(used, size=E, fill_value=0)[0]  # experts with rows first, ascending

    def expert(i, carry):
        e = order[i]
        at = e if layer is None else (layer, e)  # one slice of the stack, never a copy of the whole layer
        pe = layers.take_row(p, at)  # one copy per expert, shared by its chunks
        wg, wu, wd = pe["gate"], pe["up"], pe["down"]
        bg, bu, bd = (_bias(pe, name) for name in ("gate_bias", "up_bias", "down_bias"))
        end = starts[e] + s.sizes[e]

        def chunk(size, c, last=False):
            pos, y, rows = c
            tok = jax.lax.dynamic_slice_in_dim(tokens, pos, size)
            xe = x[tok]
            out = (act(xe @ wg + bg, xe @ wu + bu) @ wd + bd).astype(jnp.float32)
            out = out * jax.lax.dynamic_slice_in_dim(weights, pos, size)[:, None]
            if last:  # rows past the group's end: another expert's (or padding), add nothing
                out = jnp.where((pos + jnp.arange(size) < end)[:, None], out, 0)
            return pos + size, y.at[tok].add(out), rows + size

        c = (starts[e],) + carry
        c = jax.lax.while_loop(lambda c: end - c[0] >= sizes[0], functools.partial(chunk, sizes[0]), c)
        for size in sizes[1:]:  # then at most one chunk of each smaller size
            c = jax.lax.cond(end - c[0] >= size, functools.partial(chunk, size), lambda c: c, c)
        c = jax.lax.cond(c[0] < end, functools.partial(chunk, min_chunk, last=True), lambda c: c, c)
        return c[1:]

    y, rows = jax.lax.fori_loop(0, jnp.sum(used), expert, (jnp.zeros((T, H), jnp.float32), jnp.zeros((), jnp.int32)))
    return y.astype(x.dtype), rows


def grouped_dispatch(x, idx, w, p, act, max_chunk: int = MAX_CHUNK, min_chunk: int = MIN_CHUNK, layer=None):
    return grouped_expert_rows(x, idx, w, p, act, max_chunk, min_chunk, layer)[0]


BACKENDS: dict[str, Callable] = {"dense": dense_dispatch, "grouped": grouped_dispatch, "ragged": ragged_dispatch,
                                 "tokamax": tokamax_dispatch}
AUTO = "auto"


def _import_tokamax():
    """The ``tokamax`` module; ImportError without the gpu/tpu extra."""
    import tokamax  # here, not at the top: an optional dependency whose import takes seconds
    return tokamax


def tokamax_available() -> bool:
    try:
        _import_tokamax()
    except ImportError:
        return False
    return True


def available_backends() -> list[str]:
    """Names in ``BACKENDS`` that run here (tokamax only when installed)."""
    return [b for b in BACKENDS if b != "tokamax" or tokamax_available()]


@functools.cache
def _platform_choice(platform: str) -> str:
    """``auto``'s backend on a platform, logged once: tokamax's kernels on GPU/TPU when installed,
    the chunked loop over experts (``grouped``) otherwise."""
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


def expert_parallel(fn: Callable, x, idx, w, p, act, mesh, layer: jax.Array | None = None) -> jax.Array:
    """``fn`` on each device's own experts (``E / m`` of them, ``m`` the ``model`` axis) and own rows
    of ``x`` (split over ``data`` when they divide), summed over ``model``: the expert weights never
    move. An assignment to another shard's expert becomes local id ``E / m`` with weight 0, which
    every backend skips (an id past the last expert). ``layer``: as in ``dispatch``."""
    m = mesh.shape[EXPERT_AXIS]
    local_e = p["gate"].shape[-3] // m
    rows = TOKEN_AXIS if TOKEN_AXIS in mesh.axis_names and x.shape[0] % mesh.shape[TOKEN_AXIS] == 0 else None
    P = jax.sharding.PartitionSpec
    p = {name: p[name] for name in EXPERT_KEYS if name in p}

    def local(x, idx, w, p, layer):
        lo = jax.lax.axis_index(EXPERT_AXIS) * local_e
        mine = (idx >= lo) & (idx < lo + local_e)
        y = fn(x, jnp.where(mine, idx - lo, local_e), jnp.where(mine, w, 0), p, act,
               **({} if layer is None else {"layer": layer}))
        return jax.lax.psum(y, EXPERT_AXIS)

    stacked = () if layer is None else (None,)  # the layer axis stays whole on every device
    specs = (P(rows), P(rows), P(rows), {name: P(*stacked, EXPERT_AXIS) for name in p}, P())
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P(rows), check_vma=False)(x, idx, w, p, layer)


def _expert_mesh(num_experts: int):
    """The context mesh (``jax.set_mesh``) when it splits the experts over ``model``, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or EXPERT_AXIS not in mesh.axis_names:
        return None
    m = mesh.shape[EXPERT_AXIS]
    return mesh if m > 1 and num_experts % m == 0 else None


def dispatch(x: jax.Array, idx: jax.Array, w: jax.Array, experts: dict, backend: str = AUTO,
             act: Activation = swiglu, layer: jax.Array | int | None = None) -> jax.Array:
    """Runs the routed experts. ``experts`` holds ``gate``, ``up``, ``down`` and optionally
    ``gate_bias``, ``up_bias``, ``down_bias``; ``act`` combines gate and up. Returns ``[T, H]``.

    ``layer``: every leaf of ``experts`` has a leading layer axis (``[L, E, ...]``, a scan's stacked
    parameters) and layer ``layer``'s experts run. ``grouped`` then slices ``[layer, e]`` per expert
    it runs; a scan body that instead receives the layer's ``[E, ...]`` slice copies all of that
    layer's expert weights first (on CPU 25-33% of a prefill dispatch, ~3x a decode step's). The
    other backends index the layer first.

    Under a context mesh (``jax.set_mesh``) whose ``model`` axis divides the experts, each device
    runs its own experts (``expert_parallel``)."""
    fn = BACKENDS[resolve(backend)]
    if layer is not None and fn is not grouped_dispatch:
        experts, layer = layers.take_row({name: jnp.asarray(experts[name]) for name in EXPERT_KEYS if name in experts},
                                         layer), None
    mesh = _expert_mesh(experts["gate"].shape[-3])
    if mesh is not None:
        return expert_parallel(fn, x, idx, w.astype(x.dtype), experts, act, mesh, layer)
    return fn(x, idx, w.astype(x.dtype), experts, act, **({} if layer is None else {"layer": layer}))

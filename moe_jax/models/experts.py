"""Expert dispatch backends: how tokens reach their top-k experts. Exact and dropless.

Every backend computes, for ``x [T, H]``, ``idx [T, k]``, ``w [T, k]`` and stacked SwiGLU experts
``gate/up [E, H, F]``, ``down [E, F, H]``::

    y[t] = sum_j w[t, j] * down_e(silu(gate_e x[t]) * up_e x[t]),   e = idx[t, j]

- ``dense``: every expert on every token, combined with a [T, E] weight matrix. Reference; cheap
  to compile, E/k times the useful FLOPs.
- ``ragged``: sort the T*k assignments by expert and run grouped matmuls (``jax.lax.ragged_dot``).
  No capacity factor, no padding of groups, no dropped token.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def combine_weights(idx: jax.Array, w: jax.Array, num_experts: int) -> jax.Array:
    """``[T, E]`` matrix holding ``w[t, j]`` at ``(t, idx[t, j])``."""
    return jnp.einsum("tk,tke->te", w, jax.nn.one_hot(idx, num_experts, dtype=w.dtype))


def dense_dispatch(x, idx, w, gate, up, down):
    cw = combine_weights(idx, w, gate.shape[0])
    h = jax.nn.silu(jnp.einsum("th,ehf->tef", x, gate)) * jnp.einsum("th,ehf->tef", x, up)
    return jnp.einsum("tef,efh,te->th", h, down, cw)


def ragged_dispatch(x, idx, w, gate, up, down):
    T, k = idx.shape
    E = gate.shape[0]
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # [T*k] assignment ids sorted by expert
    xs = x[order // k]
    sizes = jnp.bincount(flat, length=E).astype(jnp.int32)
    h = jax.nn.silu(jax.lax.ragged_dot(xs, gate, sizes)) * jax.lax.ragged_dot(xs, up, sizes)
    out = jax.lax.ragged_dot(h, down, sizes)  # [T*k, H] in sorted order
    out = jnp.zeros_like(out).at[order].set(out).reshape(T, k, -1)  # back to assignment order
    return jnp.einsum("tkh,tk->th", out, w)


BACKENDS: dict[str, Callable] = {"dense": dense_dispatch, "ragged": ragged_dispatch}


def dispatch(x: jax.Array, idx: jax.Array, w: jax.Array, experts: dict, backend: str = "dense") -> jax.Array:
    """Runs the routed experts. ``experts`` holds ``gate``, ``up``, ``down``; returns ``[T, H]``."""
    try:
        fn = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown dispatch backend {backend!r}; available: {sorted(BACKENDS)}") from None
    return fn(x, idx, w.astype(x.dtype), experts["gate"], experts["up"], experts["down"])

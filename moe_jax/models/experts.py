"""Expert dispatch backends: how tokens reach their top-k experts. Exact and dropless.

Every backend computes, for ``x [T, H]``, ``idx [T, k]``, ``w [T, k]`` and stacked gated experts
``gate/up [E, H, F]``, ``down [E, F, H]`` (optional biases ``gate_bias/up_bias [E, F]``,
``down_bias [E, H]``)::

    y[t] = sum_j w[t, j] * (act(gate_e x[t] + bg_e, up_e x[t] + bu_e) down_e + bd_e),   e = idx[t, j]

with ``act`` from ``ACTIVATIONS`` (the family's ``expert_act``): ``silu(g) * u``, or GPT-OSS's
clamped form ``(clip(u, -l, l) + 1) * g' * sigmoid(alpha g')`` with ``g' = min(g, l)``.

- ``dense``: every expert on every token, combined with a [T, E] weight matrix. Reference; cheap
  to compile, E/k times the useful FLOPs.
- ``ragged``: sort the T*k assignments by expert and run grouped matmuls (``jax.lax.ragged_dot``).
  No capacity factor, no padding of groups, no dropped token.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array, jax.Array], jax.Array]


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


def _bias(p: dict, name: str, rows: jax.Array | None = None) -> jax.Array | float:
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


def ragged_dispatch(x, idx, w, p, act):
    T, k = idx.shape
    E = p["gate"].shape[0]
    flat = idx.reshape(-1)
    order = jnp.argsort(flat, stable=True)  # [T*k] assignment ids sorted by expert
    xs, es = x[order // k], flat[order]
    sizes = jnp.bincount(flat, length=E).astype(jnp.int32)
    g = jax.lax.ragged_dot(xs, p["gate"], sizes) + _bias(p, "gate_bias", es)
    u = jax.lax.ragged_dot(xs, p["up"], sizes) + _bias(p, "up_bias", es)
    out = jax.lax.ragged_dot(act(g, u), p["down"], sizes) + _bias(p, "down_bias", es)  # [T*k, H] sorted
    out = jnp.zeros_like(out).at[order].set(out).reshape(T, k, -1)  # back to assignment order
    return jnp.einsum("tkh,tk->th", out, w)


BACKENDS: dict[str, Callable] = {"dense": dense_dispatch, "ragged": ragged_dispatch}


def dispatch(x: jax.Array, idx: jax.Array, w: jax.Array, experts: dict, backend: str = "dense",
             act: Activation = swiglu) -> jax.Array:
    """Runs the routed experts. ``experts`` holds ``gate``, ``up``, ``down`` and optionally
    ``gate_bias``, ``up_bias``, ``down_bias``; ``act`` combines gate and up. Returns ``[T, H]``."""
    try:
        fn = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown dispatch backend {backend!r}; available: {sorted(BACKENDS)}") from None
    return fn(x, idx, w.astype(x.dtype), experts, act)

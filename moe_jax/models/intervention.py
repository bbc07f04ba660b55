"""Router interventions as data: per-MoE-layer arrays applied to the logits before the routing rule.

Because every field is an array argument of the jitted forward, a sweep over intervention values
compiles once. The neutral element (``Intervention.none``) changes nothing, bit for bit.

For each token with logits ``z [E]`` of MoE layer ``l``::

    z' = z + bias[l] + std_scale[l] * std(z) + abs_scale[l] * |z|      (soft, proportional, bias)
    z'[e] = max(z') + margin            where mode[l, e] == FORCE       (hard steering: forced on)
    z'[e] = min(z')                     where mode[l, e] == DEMOTE      (hard steering: forced down)
    z'[e] = FORBIDDEN                   where mode[l, e] == FORBID      (masking: the token re-routes)

``std`` is the population standard deviation over all E logits of the token. Sources and the
steering methods built on it: docs/methods.md#router-interventions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FORCE, NONE, DEMOTE, FORBID = 1, 0, -1, -2
FORBIDDEN = -1e9  # finite: a fully forbidden row still gives finite softmax statistics
_FORCE_MARGIN = 1e-4  # relative to max(1, |max z|): above the max in fp32, negligible in the weights


class Intervention(NamedTuple):
    """Per-MoE-layer router edits; every field is ``[moe_layers, experts]``."""

    bias: jax.Array  # float32, additive
    std_scale: jax.Array  # float32, times the per-token std of the logits
    abs_scale: jax.Array  # float32, times |z_e|
    mode: jax.Array  # int32: FORCE / NONE / DEMOTE / FORBID
    # float32 std of the per-token Gaussian offset of a FORCEd logit instead of the margin (0: margin)
    force_noise: jax.Array | None = None
    noise_seed: jax.Array | None = None  # int32, the same in every entry of a layer: seeds that noise

    @classmethod
    def none(cls, num_moe_layers: int, num_experts: int) -> "Intervention":
        z = np.zeros((num_moe_layers, num_experts), np.float32)
        i = np.zeros((num_moe_layers, num_experts), np.int32)
        return cls(z, z.copy(), z.copy(), i, z.copy(), i.copy())

    def layer(self, i: int) -> "Intervention":
        """The ``[experts]`` slice of MoE layer ``i``."""
        return Intervention(*(None if f is None else f[i] for f in self))


def apply(z: jax.Array, iv: Intervention) -> jax.Array:
    """Edits logits ``z [T, E]`` (fp32) with one layer's ``[E]`` intervention."""
    z = z.astype(jnp.float32)
    std = jnp.std(z, axis=-1, keepdims=True)
    out = z + iv.bias + iv.std_scale * std + iv.abs_scale * jnp.abs(z)
    top = jnp.max(out, axis=-1, keepdims=True)
    forced = top + _FORCE_MARGIN * jnp.maximum(1.0, jnp.abs(top))
    if iv.force_noise is not None:
        forced = forced + iv.force_noise * _token_normal(z, iv.noise_seed[0])
    out = jnp.where(iv.mode == FORCE, forced, out)
    out = jnp.where(iv.mode == DEMOTE, jnp.min(out, axis=-1, keepdims=True), out)
    return jnp.where(iv.mode == FORBID, FORBIDDEN, out)


def _token_normal(z: jax.Array, seed: jax.Array) -> jax.Array:
    """Standard normal draws ``[T, E]``, one stream per token keyed by the seed and the token's own
    logits (stateless: the same token gets the same draws in prefill and in decode)."""
    bits = jax.lax.bitcast_convert_type(z, jnp.uint32)
    odd = (2 * jnp.arange(z.shape[-1], dtype=jnp.uint32) + 1) * jnp.uint32(0x9E3779B1)
    token_hash = jnp.sum(bits * odd, axis=-1)  # wraps around: a hash of the row
    base = jax.random.key(seed)
    keys = jax.vmap(lambda h: jax.random.fold_in(base, h))(token_hash)
    return jax.vmap(lambda k: jax.random.normal(k, (z.shape[-1],)))(keys)

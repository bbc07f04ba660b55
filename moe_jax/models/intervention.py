"""Router interventions as data: per-MoE-layer arrays applied to the logits before the routing rule.

Because every field is an array argument of the jitted forward, a sweep over intervention values
compiles once. The neutral element (``Intervention.none``) changes nothing, bit for bit.

For each token with logits ``z [E]`` of MoE layer ``l``::

    z' = z + bias[l] + std_scale[l] * std(z) + abs_scale[l] * |z|      (soft, proportional, bias)
    z'[e] = max(z') + margin            where mode[l, e] == FORCE       (hard steering: forced on)
    z'[e] = min(z')                     where mode[l, e] == DEMOTE      (hard steering: forced down)
    z'[e] = FORBIDDEN                   where mode[l, e] == FORBID      (masking: the token re-routes)

``std`` is the population standard deviation over all E logits of the token. Where ``abs_bf16[l, e]``
is set, the proportional edit is done in bfloat16 as the published steering does it (the vector
``abs_scale`` already holds bf16 values): ``z'[e] = bf16(bf16(z) + bf16(abs_scale * |bf16(z)|))``, each
rounding to nearest even on the float32 bits (explicit, so XLA cannot fuse it away). Sources and
the steering methods built on it: docs/methods.md#router-interventions.
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
    abs_bf16: jax.Array | None = None  # int32, 1: the proportional edit of (l, e) is done in bfloat16

    @classmethod
    def none(cls, num_moe_layers: int, num_experts: int) -> "Intervention":
        z = np.zeros((num_moe_layers, num_experts), np.float32)
        i = np.zeros((num_moe_layers, num_experts), np.int32)
        return cls(z, z.copy(), z.copy(), i, z.copy(), i.copy(), i.copy())

    def layer(self, i: int) -> "Intervention":
        """The ``[experts]`` slice of MoE layer ``i``."""
        return Intervention(*(None if f is None else f[i] for f in self))


MODES = (FORCE, NONE, DEMOTE, FORBID)


def check_mode_counts(mode: np.ndarray, top_k: int, layer_ids, *, allow_over_k: bool = False,
                      what: str = "the intervention", error: type[Exception] = ValueError) -> None:
    """Refuses a ``mode [moe_layers, experts]`` that forces more than ``top_k`` experts in a layer
    (unless ``allow_over_k``) or forbids so many that fewer than ``top_k`` are left (``layer_ids``:
    the decoder layer of each row, for the message)."""
    mode = np.asarray(mode)
    E = mode.shape[-1]
    forced = (mode == FORCE).sum(-1)
    if forced.max(initial=0) > top_k and not allow_over_k:
        layer = layer_ids[int(forced.argmax())]
        raise error(f"{what} forces {int(forced.max())} experts at layer {layer}, more than "
                    f"top-k={top_k}; set allow_over_k=True to do it anyway")
    left = E - (mode == FORBID).sum(-1)
    if left.min(initial=E) < top_k:
        layer = layer_ids[int(left.argmin())]
        raise error(f"masking leaves {int(left.min())} experts at layer {layer}, fewer than top-k={top_k}")


def check(iv: Intervention, top_k: int, layer_ids, num_experts: int, *, allow_over_k: bool = False) -> None:
    """Validates a concrete intervention for a model: every field ``[len(layer_ids), num_experts]``,
    ``mode`` values in ``MODES``, and ``check_mode_counts``. ValueError naming the field otherwise."""
    want = (len(layer_ids), num_experts)
    for name, value in zip(iv._fields, iv):
        if value is not None and tuple(np.shape(value)) != want:
            raise ValueError(f"intervention.{name} has shape {tuple(np.shape(value))}, expected "
                             f"[moe_layers, experts] = {list(want)}")
    mode = np.asarray(iv.mode)
    bad = np.setdiff1d(mode, MODES)
    if bad.size:
        raise ValueError(f"intervention.mode holds {bad.tolist()}; valid modes: FORCE={FORCE}, NONE={NONE}, "
                         f"DEMOTE={DEMOTE}, FORBID={FORBID}")
    check_mode_counts(mode, top_k, layer_ids, allow_over_k=allow_over_k)


def apply(z: jax.Array, iv: Intervention) -> jax.Array:
    """Edits logits ``z [T, E]`` (fp32) with one layer's ``[E]`` intervention."""
    z = z.astype(jnp.float32)
    std = jnp.std(z, axis=-1, keepdims=True)
    out = z + iv.bias + iv.std_scale * std + iv.abs_scale * jnp.abs(z)
    if iv.abs_bf16 is not None:
        zb = round_bf16(z)
        in_bf16 = round_bf16(zb + round_bf16(iv.abs_scale * jnp.abs(zb)))
        out = jnp.where(iv.abs_bf16 != 0, in_bf16 + iv.bias + iv.std_scale * std, out)
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


def round_bf16(x):
    """float32 -> float32 holding the nearest bfloat16 (ties to even), on the bits; NumPy or JAX arrays."""
    xp = jnp if isinstance(x, jax.Array) else np
    x = xp.asarray(x, xp.float32)
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32) if xp is jnp else x.view(np.uint32)
    bits = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) & xp.uint32(0xFFFF0000)
    return jax.lax.bitcast_convert_type(bits, jnp.float32) if xp is jnp else bits.view(np.float32)

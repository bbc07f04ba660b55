"""The key/value cache of greedy generation: a pytree of fixed-size arrays, written in place.

Layout (``L`` decoder layers, ``B`` rows, ``C`` cache slots, ``K`` kv heads, ``D`` head_dim)::

    k, v       [L, B, C, K, D]   rotated keys and values, in the activation dtype
    positions  [B, C] int32      position id of the token in each slot
    valid      [B, C] bool       slot holds a real token (False: padding or not yet written)

Slots are time order: a prompt fills ``[0, P)`` and decode step ``i`` writes slot ``P + i``, so
causality is ``key slot <= query slot`` and the mask needs no cache-length bookkeeping. Positions
are kept per slot (not derived from slot indices) because left padding makes them differ per row;
sliding windows compare positions. All layers share one array so that a step is one in-place
``dynamic_update_slice`` per layer inside ``lax.while_loop``; the decoder's ``lax.scan`` over
layers carries the cache and indexes its layer row with the scanned (traced) layer index.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig


class KVCache(NamedTuple):
    k: jax.Array  # [L, B, C, K, D]
    v: jax.Array  # [L, B, C, K, D]
    positions: jax.Array  # [B, C] int32
    valid: jax.Array  # [B, C] bool

    @property
    def cache_len(self) -> int:
        return self.valid.shape[1]


def init(cfg: ModelConfig, batch: int, cache_len: int, dtype) -> KVCache:
    """An empty cache: every slot invalid."""
    shape = (cfg.num_layers, batch, cache_len, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch, cache_len), jnp.int32), jnp.zeros((batch, cache_len), bool))


def write_tokens(cache: KVCache, positions: jax.Array, valid: jax.Array, index: jax.Array | int) -> KVCache:
    """Records ``positions/valid [B, S]`` of the tokens going to slots ``[index, index + S)``."""
    return cache._replace(
        positions=jax.lax.dynamic_update_slice(cache.positions, positions.astype(jnp.int32), (0, index)),
        valid=jax.lax.dynamic_update_slice(cache.valid, valid.astype(bool), (0, index)))


def write_layer(cache: KVCache, layer: jax.Array | int, k: jax.Array, v: jax.Array,
                index: jax.Array | int) -> KVCache:
    """Writes layer ``layer``'s keys/values ``[B, S, K, D]`` at slots ``[index, index + S)`` (``layer``
    may be traced: the decoder's scan carries the whole cache and writes its row in place)."""
    at = (layer, 0, index, 0, 0)
    return cache._replace(k=jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), at),
                          v=jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), at))


def read_layer(cache: KVCache, layer: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """Layer ``layer``'s keys and values, ``[B, C, K, D]`` each."""
    return (jax.lax.dynamic_index_in_dim(cache.k, layer, keepdims=False),
            jax.lax.dynamic_index_in_dim(cache.v, layer, keepdims=False))

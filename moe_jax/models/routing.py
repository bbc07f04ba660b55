"""Routing rules: how router logits ``z [T, E]`` become top-k weights and expert indices.

One small pure function per rule; ``ROUTING_RULES`` maps a FamilySpec.router name to it.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig


def softmax_topk(z: jax.Array, k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
    """Qwen2/Qwen3/OLMoE: softmax over ALL experts in fp32, then top-k of the probabilities.

    Args:
      z: ``[T, E]`` router logits.
    Returns:
      ``(weights [T, k] float32, indices [T, k] int32)``; weights renormalised to sum 1 if asked.
    """
    probs = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    weights, idx = jax.lax.top_k(probs, k)
    if renormalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, idx.astype(jnp.int32)


def topk_softmax(z: jax.Array, k: int, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """GPT-OSS: top-k of the raw (biased) logits, then softmax over the k selected logits only.

    ``dtype``: the reference takes the softmax in the logits' dtype (the model dtype).
    Returns ``(weights [T, k] float32, indices [T, k] int32)``; the weights always sum to 1.
    """
    vals, idx = jax.lax.top_k(z.astype(dtype), k)
    return jax.nn.softmax(vals, axis=-1).astype(jnp.float32), idx.astype(jnp.int32)


def _masked_softmax_at(scores: jax.Array, threshold: jax.Array, ref: jax.Array, eps: float,
                       at: jax.Array) -> jax.Array:
    """softmax(scores with experts far below ``threshold`` dropped)[at]; distance is measured on ``ref``.
    The drop test runs in the scores' dtype, the softmax in fp32."""
    factor = jnp.maximum(jnp.abs(ref), threshold)
    drop = (threshold - ref) / factor > 2 * eps
    probs = jax.nn.softmax(jnp.where(drop, -jnp.inf, scores.astype(jnp.float32)), axis=-1)
    return jnp.take_along_axis(probs, at, axis=-1)


def sparsemixer_top2(z: jax.Array, eps: float, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """PhiMoE sparsemixer in eval mode (deterministic), top-2.

    ``w_j = softmax(s masked to experts within 2*eps relative distance of the j-th max)[i_j]``;
    the second pass removes the first choice. Weights are NOT renormalised (their sum may reach 2).
    ``dtype``: the reference runs this rule in the model dtype (no fp32 upcast); with bfloat16 the
    relative-distance test then rounds as it does there.
    """
    s = z.astype(dtype)
    m1 = jnp.max(s, axis=-1, keepdims=True)
    i1 = jnp.argmax(s, axis=-1)[:, None]
    w1 = _masked_softmax_at(s, m1, s, eps, i1)
    s2 = jnp.where(jax.nn.one_hot(i1[:, 0], s.shape[-1], dtype=bool), -jnp.inf, s)
    m2 = jnp.max(s2, axis=-1, keepdims=True)
    i2 = jnp.argmax(s2, axis=-1)[:, None]
    w2 = _masked_softmax_at(s2, m2, s, eps, i2)
    return jnp.concatenate([w1, w2], -1), jnp.concatenate([i1, i2], -1).astype(jnp.int32)


def route(z: jax.Array, cfg: ModelConfig, dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Applies the family's routing rule to ``z [T, E]``; ``dtype`` is the model's activation dtype."""
    return ROUTING_RULES[cfg.family.router](z, cfg, dtype)


ROUTING_RULES: dict[str, Callable[..., tuple[jax.Array, jax.Array]]] = {
    # softmax over all experts always runs in fp32, as in the reference
    "softmax_topk": lambda z, cfg, dtype: softmax_topk(z, cfg.top_k, cfg.norm_topk_prob),
    "sparsemixer": lambda z, cfg, dtype: sparsemixer_top2(z, cfg.router_jitter_noise, dtype),
    "topk_softmax": lambda z, cfg, dtype: topk_softmax(z, cfg.top_k, dtype),
}

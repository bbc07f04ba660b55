"""Routing statistics of one batch, reduced on device (pure, jittable).

Notation: L MoE layers, B sequences, S positions, E experts, k experts per token. A token is
*counted* when ``attention_mask & count_mask`` (padding never counts; ``count_mask`` can exclude
chat-template tokens). Every reduction selects with ``where`` rather than multiplying by the mask,
so NaN/inf at padding positions (e.g. rows with no real token) cannot leak into the sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def routing_statistics(router_logits: jax.Array, topk_idx: jax.Array, topk_weights: jax.Array,
                       counted: jax.Array, *, token_topk: bool = False) -> dict[str, jax.Array]:
    """Per-sequence and per-batch statistics from the router outputs of one batch.

    Args:
      router_logits: ``[L, B, S, E]`` raw gate logits (any float dtype; reduced in float32).
      topk_idx: ``[L, B, S, k]`` experts each token was sent to.
      topk_weights: ``[L, B, S, k]`` routing weights of those experts.
      counted: ``[B, S]`` bool, tokens to count.
      token_topk: also return ``token_topk [B, S, L, k]`` int16 (all positions; host keeps counted ones).

    Returns a dict:
      seq_lengths        ``[B]``        int32    counted tokens per sequence
      seq_mean_probs     ``[B, L, E]``  float32  mean over counted tokens of softmax(z) over ALL experts
      seq_topk_freq      ``[B, L, E]``  float32  fraction of counted tokens whose top-k holds e
      seq_topk_weight    ``[B, L, E]``  float32  mean over counted tokens of softmax(z) kept on the token's
                                                 top-k experts and renormalised over them (0 elsewhere)
      seq_gate_weight    ``[B, L, E]``  float32  mean over counted tokens of the routing weight the model gives e
                                                 (``topk_weights`` as it routes; 0 off the top-k)
      seq_token_entropy  ``[B, L]``     float32  mean over counted tokens of H(softmax(z)) in nats
      topk_counts        ``[L, E]``     int32    batch total of top-k activations
      gate_weight_sums   ``[L, E]``     float32  batch total of routing weights per expert
      token_count        ``[]``         int32    counted tokens in the batch
    Rows with no counted token get zeros.
    """
    num_experts = router_logits.shape[-1]
    c = counted.astype(bool)
    c4 = c[None, :, :, None]  # [1, B, S, 1]
    n = jnp.sum(c, axis=1, dtype=jnp.int32)  # [B]
    denom = jnp.maximum(n, 1).astype(jnp.float32)

    z = router_logits.astype(jnp.float32)
    logp = jax.nn.log_softmax(z, axis=-1)  # [L, B, S, E]
    p = jnp.exp(logp)
    # Elementwise products + sums, not einsum: a float32 dot may run in TF32 on GPUs.
    mean_probs = jnp.sum(jnp.where(c4, p, 0.0), axis=2) / denom[None, :, None]  # [L, B, E]
    plogp = jnp.where(p > 0, p * logp, 0.0)  # 0 log 0 = 0 (masked experts with z = -inf)
    tok_entropy = -jnp.sum(plogp, axis=-1)  # [L, B, S]
    entropy = jnp.sum(jnp.where(c[None], tok_entropy, 0.0), axis=2) / denom[None, :]  # [L, B]

    # hit[l,b,s,j,e]: the j-th choice of token (b,s) at layer l is e; fused into the reductions.
    hit = (topk_idx[..., None] == jnp.arange(num_experts, dtype=topk_idx.dtype)) & c4[..., None]
    seq_counts = jnp.sum(hit, axis=(2, 3), dtype=jnp.int32)  # [L, B, E]
    chosen = jnp.any(hit, axis=3)  # [L, B, S, E]: e is among the token's top-k (counted tokens only)
    kept = jnp.where(chosen, p, 0.0)
    kept = kept / jnp.maximum(jnp.sum(kept, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    topk_weight = jnp.sum(kept, axis=2) / denom[None, :, None]  # [L, B, E]
    w = topk_weights.astype(jnp.float32)[..., None]
    seq_gate = jnp.sum(jnp.where(hit, w, 0.0), axis=(2, 3))  # [L, B, E]
    gate_sums = jnp.sum(seq_gate, axis=1)  # [L, E]

    out = {
        "seq_lengths": n,
        "seq_mean_probs": jnp.transpose(mean_probs, (1, 0, 2)),
        "seq_topk_freq": jnp.transpose(seq_counts.astype(jnp.float32) / denom[None, :, None], (1, 0, 2)),
        "seq_topk_weight": jnp.transpose(topk_weight, (1, 0, 2)),
        "seq_gate_weight": jnp.transpose(seq_gate / denom[None, :, None], (1, 0, 2)),
        "seq_token_entropy": jnp.transpose(entropy, (1, 0)),
        "topk_counts": jnp.sum(seq_counts, axis=1, dtype=jnp.int32),
        "gate_weight_sums": gate_sums,
        "token_count": jnp.sum(n, dtype=jnp.int32),
    }
    if token_topk:
        out["token_topk"] = jnp.transpose(topk_idx, (1, 2, 0, 3)).astype(jnp.int16)
    return out

"""Norms, rotary embeddings (default and LongRoPE) and attention, as pure functions.

Shapes: B batch, S sequence, H hidden, N query heads, K kv heads, D head_dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models import kv_cache
from moe_jax.models.config import ModelConfig
from moe_jax.models.kv_cache import KVCache
from moe_jax.models.yarn import yarn_inv_freq


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, scale_in_fp32: bool = False) -> jax.Array:
    """``x / sqrt(mean(x^2) + eps)`` in fp32, cast back to ``x.dtype``, then ``* scale``; with
    ``scale_in_fp32`` (GPT-OSS, whose reference keeps norm weights in fp32) the product is taken in
    fp32 and cast once."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if scale_in_fp32:
        return (scale.astype(jnp.float32) * y).astype(x.dtype)
    return y.astype(x.dtype) * scale


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + eps)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def norm(p: dict, x: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The family's block norm (RMSNorm, RMSNorm scaled in fp32 for GPT-OSS, or LayerNorm with bias for PhiMoE)."""
    if cfg.family.norm == "layer":
        return layer_norm(x, p["scale"], p["bias"], cfg.norm_eps)
    return rms_norm(x, p["scale"], cfg.norm_eps, scale_in_fp32=cfg.family.norm == "rms_fp32_scale")


def take_row(stack, index):
    """``a[index]`` for every leaf ``a`` of ``stack`` (stacked weights, e.g. ``[L, E, ...]``) read
    inside a loop: the row a scan or loop over layers / experts runs.

    The stack passes through ``optimization_barrier`` together with the (loop-varying) index, so
    to XLA it is no longer loop-invariant: on CPU, which upcasts every bfloat16 op to float32
    (float normalization), the upcast of ``stack`` then fuses into the slice and converts one row,
    where otherwise the loop-invariant upcast of the whole stack is hoisted out of the loop (a
    float32 copy of every stacked weight: twice the bfloat16 parameter bytes). No-op elsewhere."""
    stack, index = jax.lax.optimization_barrier((stack, index))
    return jax.tree.map(lambda a: a[index], stack)


def linear(p: dict, x: jax.Array) -> jax.Array:
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def rope_wavelength_base(theta: float, head_dim: int) -> np.ndarray:
    """``theta^(2i/d)`` for i < d/2 in fp32, as the reference computes it: ``[D/2]``."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    return (np.float32(theta) ** exponent).astype(np.float32)


def rope_cos_sin(cfg: ModelConfig, positions: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables ``[B, S, D]`` for ``positions [B, S]`` (default, YaRN or LongRoPE).

    LongRoPE picks the short or long factor set (and mscale) from the current total length,
    ``max(positions) + 1`` over the batch, against ``original_max_position_embeddings``.
    """
    base = jnp.asarray(rope_wavelength_base(cfg.rope_theta, cfg.head_dim))
    lr = cfg.longrope
    if cfg.yarn is not None:  # static frequencies, cos/sin scaled by the attention factor
        inv_freq = jnp.asarray(yarn_inv_freq(cfg.yarn, cfg.rope_theta, cfg.head_dim))
        mscale = jnp.float32(cfg.yarn.attention_factor)
    elif lr is None:
        inv_freq = jnp.float32(1.0) / base
        mscale = jnp.float32(1.0)
    else:
        is_long = (jnp.max(positions) + 1) > lr.original_max_position_embeddings
        factors = jnp.where(is_long, jnp.asarray(lr.long_factor, jnp.float32),
                            jnp.asarray(lr.short_factor, jnp.float32))
        inv_freq = jnp.float32(1.0) / (factors * base)
        mscale = jnp.where(is_long, jnp.float32(lr.long_mscale), jnp.float32(lr.short_mscale))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, S, D/2]
    emb = jnp.concatenate([angles, angles], axis=-1)
    return (jnp.cos(emb) * mscale).astype(dtype), (jnp.sin(emb) * mscale).astype(dtype)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on ``x [B, S, heads, D]`` with ``cos/sin [B, S, D]``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def attention_mask(q_slots: jax.Array, q_pos: jax.Array, k_pos: jax.Array, k_valid: jax.Array,
                   window: int | jax.Array | None = None) -> jax.Array:
    """Which keys each query may attend to: ``[B, S, T]`` bool.

    ``allowed = key valid & key slot <= query slot & (q_pos - k_pos < window)``. Causality compares
    slots (time order in the sequence or cache, ``q_slots [S]`` against ``arange(T)``), so explicit
    positions never reorder tokens; the optional sliding window compares positions ``[B, S]`` and
    ``[B, T]``; it may be traced (a scanned per-layer value; a window beyond every position
    difference, such as int32 max, is full attention).
    """
    causal = jnp.arange(k_pos.shape[1])[None, :] <= q_slots[:, None]  # [S, T]
    allowed = causal[None] & k_valid.astype(bool)[:, None, :]
    if window is not None:
        allowed &= (q_pos[:, :, None] - k_pos[:, None, :]) < window
    return allowed


def attention(p: dict, x: jax.Array, cos: jax.Array, sin: jax.Array, cfg: ModelConfig,
              positions: jax.Array, valid: jax.Array, *, cache: KVCache | None = None,
              layer: jax.Array | int = 0, index: jax.Array | int = 0,
              window: jax.Array | int | None = None) -> tuple[jax.Array, KVCache | None]:
    """Causal GQA self-attention of ``x [B, S, H]`` at ``positions [B, S]``; returns ``([B, S, H], cache)``.

    Without ``cache`` the S tokens attend to each other (``valid [B, S]``: real tokens). With a
    ``KVCache`` whose positions/validity already hold these tokens at slots ``[index, index + S)``
    (``kv_cache.write_tokens``), this layer's keys and values are written there and the queries
    attend to every valid cached slot; the updated cache is returned. Prefill and decode are the
    same call. ``layer`` (the cache row) and ``window`` (sliding window in positions, None: full
    causal) may be traced, as in the decoder's scan over layers.
    """
    B, S, _ = x.shape
    N, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v = linear(p["q"], x), linear(p["k"], x), linear(p["v"], x)
    if cfg.family.qk_norm == "full":  # OLMoE: norm over the whole projection, before the head split
        q = rms_norm(q, p["q_norm"]["scale"], cfg.norm_eps)
        k = rms_norm(k, p["k_norm"]["scale"], cfg.norm_eps)
    if cfg.clip_qkv is not None:
        q, k, v = (jnp.clip(t, -cfg.clip_qkv, cfg.clip_qkv) for t in (q, k, v))
    q, k, v = q.reshape(B, S, N, D), k.reshape(B, S, K, D), v.reshape(B, S, K, D)
    if cfg.family.qk_norm == "head":  # Qwen3: per-head norm over head_dim
        q = rms_norm(q, p["q_norm"]["scale"], cfg.norm_eps)
        k = rms_norm(k, p["k_norm"]["scale"], cfg.norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_pos, k_valid = positions, valid
    if cache is not None:  # keys keep the rotation they were computed with
        cache = kv_cache.write_layer(cache, layer, k, v, index)
        k, v = kv_cache.read_layer(cache, layer)
        k_pos, k_valid = cache.positions, cache.valid
    allowed = attention_mask(index + jnp.arange(S), positions, k_pos, k_valid, window)
    # fp32 additive bias, finite so that rows without any allowed key (padding) stay finite
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None, None]  # [B, 1, 1, S, T]
    # Query head h uses kv head h // (N/K): group the query heads as [K, N/K].
    q = q.reshape(B, S, K, N // K, D)
    scores = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32) * (D ** -0.5)
    logits = scores + bias
    if "sinks" in p:  # GPT-OSS: one learned logit per head joins each softmax; its probability is dropped
        sinks = p["sinks"].astype(jnp.float32).reshape(1, K, N // K, 1, 1)
        logits = jnp.concatenate([logits, jnp.broadcast_to(sinks, logits.shape[:-1] + (1,))], axis=-1)
    probs = jax.nn.softmax(logits, axis=-1)[..., :k.shape[1]].astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v).reshape(B, S, N * D)
    return linear(p["o"], out), cache


def mlp(p: dict, x: jax.Array) -> jax.Array:
    """SwiGLU ``down(silu(gate(x)) * up(x))`` with kernels ``gate/up [H, F]``, ``down [F, H]``."""
    return (jax.nn.silu(x @ p["gate"]) * (x @ p["up"])) @ p["down"]

"""The one decoder of every family: a pure, jittable forward pass over a parameter tree.

Family differences come from ``cfg.family`` (a FamilySpec) and the parameter tree, never from
separate code paths per model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.models import experts as experts_lib
from moe_jax.models import intervention as iv_lib
from moe_jax.models import kv_cache, layers
from moe_jax.models.config import ModelConfig
from moe_jax.models.kv_cache import KVCache
from moe_jax.models.routing import route


class RouterOutput(NamedTuple):
    logits: jax.Array  # [T, E] float32, raw gate output (before any intervention)
    topk_idx: jax.Array  # [T, k] int32, experts used (after the intervention)
    topk_weights: jax.Array  # [T, k] float32


class ModelOutput(NamedTuple):
    logits: jax.Array | None  # [B, S, V]
    router_logits: jax.Array | None = None  # [moe_layers, B, S, E] float32
    topk_idx: jax.Array | None = None  # [moe_layers, B, S, k] int32
    topk_weights: jax.Array | None = None  # [moe_layers, B, S, k] float32


def moe_block(p: dict, x: jax.Array, cfg: ModelConfig, iv: iv_lib.Intervention | None,
              backend: str) -> tuple[jax.Array, RouterOutput]:
    """Routed experts (+ Qwen2's gated shared expert) on ``x [T, H]``."""
    z = layers.linear(p["router"], x).astype(jnp.float32)  # gate runs in the model dtype, as the reference
    weights, idx = route(z if iv is None else iv_lib.apply(z, iv), cfg, x.dtype)
    y = experts_lib.dispatch(x, idx, weights, p, backend, experts_lib.activation(cfg))
    if "shared" in p:
        y = y + jax.nn.sigmoid(x @ p["shared_gate"]["kernel"]) * layers.mlp(p["shared"], x)
    return y, RouterOutput(z, idx, weights)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions from the mask, so left- and right-padded rows both start at 0: ``[B, S]``."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


def decoder_layers(params: dict, cfg: ModelConfig, input_ids: jax.Array, positions: jax.Array,
                   valid: jax.Array, *, cache: KVCache | None = None, index: jax.Array | int = 0,
                   intervention: iv_lib.Intervention | None = None,
                   backend: str = "auto") -> tuple[jax.Array, list[RouterOutput], KVCache | None]:
    """The layer stack, shared by ``forward`` and KV-cache prefill/decode (``generate.py``).

    Args:
      input_ids, positions, valid: ``[B, S]``; ``valid`` marks real tokens.
      cache: None, or a KVCache the S tokens are written to at slots ``[index, index + S)``
        (they attend to every valid slot up to their own).
    Returns:
      hidden states ``[B, S, H]`` before the final norm, one RouterOutput per MoE layer
      (``[B*S, ...]``), the updated cache (None without one).
    """
    B, S = input_ids.shape
    x = params["embed"][input_ids]
    cos, sin = layers.rope_cos_sin(cfg, positions, x.dtype)
    if cache is not None:
        cache = kv_cache.write_tokens(cache, positions, valid, index)
    routers = []
    for i, lp in enumerate(params["layers"]):
        a, cache = layers.attention(lp["attn"], layers.norm(lp["attn_norm"], x, cfg), cos, sin, cfg,
                                    positions, valid, cache=cache, layer=i, index=index,
                                    window=cfg.attention_window(i))
        x = x + a
        h = layers.norm(lp["mlp_norm"], x, cfg)
        if cfg.moe_layers[i]:
            iv = None if intervention is None else intervention.layer(len(routers))
            y, r = moe_block(lp["moe"], h.reshape(B * S, -1), cfg, iv, backend)
            routers.append(r)
            y = y.reshape(B, S, -1)
        else:
            y = layers.mlp(lp["mlp"], h)
        x = x + y
    return x, routers, cache


def lm_head(params: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and output projection: hidden ``[..., H]`` to logits ``[..., V]``."""
    x = layers.norm(params["final_norm"], x, cfg)
    return x @ params["embed"].T if cfg.tie_word_embeddings else layers.linear(params["lm_head"], x)


@functools.partial(jax.jit, static_argnames=("cfg", "return_router", "compute_logits", "backend"))
def forward(params: dict, cfg: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, intervention: iv_lib.Intervention | None = None,
            return_router: bool = False, compute_logits: bool = True, backend: str = "auto") -> ModelOutput:
    """Runs the decoder on ``input_ids [B, S]``.

    Args:
      attention_mask: ``[B, S]``, 1 on real tokens (left or right padding); default all ones.
      positions: ``[B, S]``; default from the mask.
      intervention: router edits, fields ``[moe_layers, experts]`` (see ``intervention.py``).
      return_router: also return router logits, top-k indices and weights of every MoE layer.
      compute_logits: False skips the final norm and lm head (routing collection needs neither).
      backend: expert dispatch backend (``experts.BACKENDS``, or ``"auto"``: the fastest exact one here).
    """
    B, S = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((B, S), jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask)
    x, routers, _ = decoder_layers(params, cfg, input_ids, positions, attention_mask.astype(bool),
                                   intervention=intervention, backend=backend)
    logits = lm_head(params, cfg, x) if compute_logits else None
    if not return_router:
        return ModelOutput(logits)

    def stack(field: str, n: int) -> jax.Array:
        return jnp.stack([getattr(r, field) for r in routers]).reshape(len(routers), B, S, n)
    return ModelOutput(logits, stack("logits", cfg.num_experts), stack("topk_idx", cfg.top_k),
                       stack("topk_weights", cfg.top_k))

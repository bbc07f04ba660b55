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
from moe_jax.models import layers
from moe_jax.models.config import ModelConfig
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
    z = (x @ p["router"]["kernel"]).astype(jnp.float32)  # gate runs in the model dtype, as the reference
    weights, idx = route(z if iv is None else iv_lib.apply(z, iv), cfg, x.dtype)
    y = experts_lib.dispatch(x, idx, weights, p, backend)
    if "shared" in p:
        y = y + jax.nn.sigmoid(x @ p["shared_gate"]["kernel"]) * layers.mlp(p["shared"], x)
    return y, RouterOutput(z, idx, weights)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions from the mask, so left- and right-padded rows both start at 0: ``[B, S]``."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "return_router", "compute_logits", "backend"))
def forward(params: dict, cfg: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, intervention: iv_lib.Intervention | None = None,
            return_router: bool = False, compute_logits: bool = True, backend: str = "dense") -> ModelOutput:
    """Runs the decoder on ``input_ids [B, S]``.

    Args:
      attention_mask: ``[B, S]``, 1 on real tokens (left or right padding); default all ones.
      positions: ``[B, S]``; default from the mask.
      intervention: router edits, fields ``[moe_layers, experts]`` (see ``intervention.py``).
      return_router: also return router logits, top-k indices and weights of every MoE layer.
      compute_logits: False skips the final norm and lm head (routing collection needs neither).
      backend: expert dispatch backend (``experts.BACKENDS``).
    """
    B, S = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((B, S), jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask)
    x = params["embed"][input_ids]
    cos, sin = layers.rope_cos_sin(cfg, positions, x.dtype)
    bias = layers.attention_bias(attention_mask)
    routers = []
    for i, lp in enumerate(params["layers"]):
        x = x + layers.attention(lp["attn"], layers.norm(lp["attn_norm"], x, cfg), cos, sin, bias, cfg)
        h = layers.norm(lp["mlp_norm"], x, cfg)
        if cfg.moe_layers[i]:
            iv = None if intervention is None else intervention.layer(len(routers))
            y, r = moe_block(lp["moe"], h.reshape(B * S, -1), cfg, iv, backend)
            routers.append(r)
            y = y.reshape(B, S, -1)
        else:
            y = layers.mlp(lp["mlp"], h)
        x = x + y
    logits = None
    if compute_logits:
        x = layers.norm(params["final_norm"], x, cfg)
        logits = x @ params["embed"].T if cfg.tie_word_embeddings else layers.linear(params["lm_head"], x)
    if not return_router:
        return ModelOutput(logits)

    def stack(field: str, n: int) -> jax.Array:
        return jnp.stack([getattr(r, field) for r in routers]).reshape(len(routers), B, S, n)
    return ModelOutput(logits, stack("logits", cfg.num_experts), stack("topk_idx", cfg.top_k),
                       stack("topk_weights", cfg.top_k))

"""The one decoder of every family: a pure, jittable forward pass over a parameter tree.

Family differences come from ``cfg.family`` (a FamilySpec) and the parameter tree, never from
separate code paths per model.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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
    # [layers + 1, B, S, H] float32, as transformers' output_hidden_states: entry 0 the embeddings, entry l the
    # residual stream after layer l, the last one after the final norm
    hidden_states: jax.Array | None = None
    last_residual: jax.Array | None = None  # [B, S, H] float32: the last layer's output before the final norm


def moe_block(p: dict, x: jax.Array, cfg: ModelConfig, iv: iv_lib.Intervention | None,
              backend: str, experts: dict | None = None,
              row: jax.Array | int | None = None) -> tuple[jax.Array, RouterOutput]:
    """Routed experts (+ Qwen2's gated shared expert) on ``x [T, H]``.

    ``experts``: the routed experts' leaves stacked over a run's layers (``[L, E, ...]``), of which
    row ``row`` runs (see ``experts.dispatch``'s ``layer``); None: they are in ``p`` (``[E, ...]``)."""
    z = layers.linear(p["router"], x).astype(jnp.float32)  # gate runs in the model dtype, as the reference
    weights, idx = route(z if iv is None else iv_lib.apply(z, iv), cfg, x.dtype)
    y = experts_lib.dispatch(x, idx, weights, p if experts is None else experts, backend,
                             experts_lib.activation(cfg), layer=None if experts is None else row)
    if "shared" in p:
        y = y + jax.nn.sigmoid(x @ p["shared_gate"]["kernel"]) * layers.mlp(p["shared"], x)
    return y, RouterOutput(z, idx, weights)


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Positions from the mask, so left- and right-padded rows both start at 0: ``[B, S]``."""
    return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


class LayerData(NamedTuple):
    """What differs between the layers of one run, as data scanned alongside the stacked params."""

    layer: jax.Array  # [] int32: decoder-layer index (the KV cache's row)
    window: jax.Array | None  # [] int32: sliding window in positions (FULL_WINDOW: full); None: no layer slides
    intervention: iv_lib.Intervention | None  # fields [E]: this MoE layer's row of the intervention


FULL_WINDOW = np.iinfo(np.int32).max  # a window no position difference reaches: full causal attention


def run_data(cfg: ModelConfig, run: int, intervention: iv_lib.Intervention | None) -> LayerData:
    """The per-layer data of run ``run`` (``cfg.layer_runs``), every field with a leading ``[n]``."""
    start, stop, is_moe = cfg.layer_runs[run]
    ids = range(start, stop)
    window = None
    if any(cfg.attention_window(i) is not None for i in range(cfg.num_layers)):
        window = jnp.asarray([cfg.attention_window(i) or FULL_WINDOW for i in ids], jnp.int32)
    iv = None
    if is_moe and intervention is not None:
        m0 = sum(cfg.moe_layers[:start])  # the run's MoE layers are rows [m0, m0 + n) of the intervention
        iv = jax.tree.map(lambda f: f[m0:m0 + stop - start], intervention)
    return LayerData(jnp.arange(start, stop, dtype=jnp.int32), window, iv)


def decoder_layer(lp: dict, d: LayerData, x: jax.Array, cache: KVCache | None, cfg: ModelConfig,
                  rope: tuple[jax.Array, jax.Array], positions: jax.Array, valid: jax.Array,
                  index: jax.Array | int, backend: str, experts: dict | None = None,
                  row: jax.Array | int | None = None) -> tuple[jax.Array, KVCache | None, RouterOutput | None]:
    """One decoder layer on ``x [B, S, H]`` with its params ``lp`` (no leading axis) and data ``d``
    (scalars, intervention fields ``[E]``): ``(x, cache, router output or None for a dense layer)``.
    ``experts``/``row``: the run's stacked routed experts and this layer's row in them (``moe_block``)."""
    B, S, _ = x.shape
    a, cache = layers.attention(lp["attn"], layers.norm(lp["attn_norm"], x, cfg), *rope, cfg, positions, valid,
                                cache=cache, layer=d.layer, index=index, window=d.window)
    x = x + a
    h = layers.norm(lp["mlp_norm"], x, cfg)
    if "moe" not in lp:
        return x + layers.mlp(lp["mlp"], h), cache, None
    y, r = moe_block(lp["moe"], h.reshape(B * S, -1), cfg, d.intervention, backend, experts, row)
    return x + y.reshape(B, S, -1), cache, r


def decoder_layers(params: dict, cfg: ModelConfig, input_ids: jax.Array, positions: jax.Array,
                   valid: jax.Array, *, cache: KVCache | None = None, index: jax.Array | int = 0,
                   intervention: iv_lib.Intervention | None = None, backend: str = "auto",
                   scan_layers: bool = True, return_hidden: bool = False,
                   ) -> tuple[jax.Array, RouterOutput | None, KVCache | None, jax.Array | None]:
    """The layer stack, shared by ``forward`` and KV-cache prefill/decode (``generate.py``).

    Each run of ``params["layers"]`` is one ``lax.scan`` over its stacked params and per-layer data
    (``run_data``), carrying the hidden states and the cache (written in place at the layer's row),
    so the program size does not grow with depth. ``scan_layers=False`` unrolls the same layer
    function over the rows instead (the reference the scan is tested against).

    Args:
      input_ids, positions, valid: ``[B, S]``; ``valid`` marks real tokens.
      cache: None, or a KVCache the S tokens are written to at slots ``[index, index + S)``
        (they attend to every valid slot up to their own).
      return_hidden: also return the residual stream of every layer (a scan output: nothing extra is
        computed, and nothing is kept when not asked).
    Returns:
      hidden states ``[B, S, H]`` before the final norm, the router outputs of the MoE layers
      stacked (fields ``[moe_layers, B*S, ...]``; None without MoE layers), the updated cache
      (None without one), and with ``return_hidden`` the residual stream ``[layers + 1, B, S, H]``
      (entry 0 the embeddings, entry l the output of layer l, before any final norm; else None).
    """
    x = params["embed"][input_ids]
    residuals = [x[None]] if return_hidden else None
    rope = layers.rope_cos_sin(cfg, positions, x.dtype)
    if cache is not None:
        cache = kv_cache.write_tokens(cache, positions, valid, index)
    routers = []
    for run, stack in enumerate(params["layers"]):
        data = run_data(cfg, run, intervention)
        start = cfg.layer_runs[run][0]
        experts = None
        if "moe" in stack:  # the routed experts stay stacked: dispatch reads only the experts it runs
            experts = {k: v for k, v in stack["moe"].items() if k in experts_lib.EXPERT_KEYS}
            stack = {**stack, "moe": {k: v for k, v in stack["moe"].items() if k not in experts}}

        def body(carry, d, stack=stack, experts=experts, start=start):
            x, cache = carry
            row = d.layer - start
            x, cache, r = decoder_layer(layers.take_row(stack, row), d, x, cache, cfg, rope, positions, valid,
                                        index, backend, experts, row)
            return (x, cache), (r, x if return_hidden else None)

        if scan_layers:  # the scan reads each layer's row itself (take_row), so bf16 stacks stay bf16
            (x, cache), (r, h) = jax.lax.scan(body, (x, cache), data)
        else:
            start, stop, _ = cfg.layer_runs[run]
            ys = []
            for row in range(stop - start):
                (x, cache), y = body((x, cache), jax.tree.map(lambda a: a[row], data))
                ys.append(y)
            r = None if ys[0][0] is None else jax.tree.map(lambda *a: jnp.stack(a), *[y[0] for y in ys])
            h = jnp.stack([y[1] for y in ys]) if return_hidden else None
        if r is not None:
            routers.append(r)
        if return_hidden:
            residuals.append(h)
    if return_hidden:
        residuals = jnp.concatenate(residuals)
    if not routers:
        return x, None, cache, residuals
    return x, jax.tree.map(lambda *a: jnp.concatenate(a), *routers), cache, residuals


def final_norm(params: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """The norm after the last layer, on a residual stream ``[..., H]``."""
    return layers.norm(params["final_norm"], x, cfg)


def lm_head(params: dict, cfg: ModelConfig, x: jax.Array) -> jax.Array:
    """Final norm and output projection: hidden ``[..., H]`` to logits ``[..., V]``."""
    x = final_norm(params, cfg, x)
    return x @ params["embed"].T if cfg.tie_word_embeddings else layers.linear(params["lm_head"], x)


@functools.partial(jax.jit, static_argnames=("cfg", "return_router", "compute_logits", "backend", "scan_layers",
                                             "return_hidden_states"))
def forward(params: dict, cfg: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array | None = None,
            positions: jax.Array | None = None, intervention: iv_lib.Intervention | None = None,
            return_router: bool = False, compute_logits: bool = True, backend: str = "auto",
            scan_layers: bool = True, return_hidden_states: bool = False) -> ModelOutput:
    """Runs the decoder on ``input_ids [B, S]``.

    Args:
      attention_mask: ``[B, S]``, 1 on real tokens (left or right padding); default all ones.
      positions: ``[B, S]``; default from the mask.
      intervention: router edits, fields ``[moe_layers, experts]`` (see ``intervention.py``).
      return_router: also return router logits, top-k indices and weights of every MoE layer.
      compute_logits: False skips the final norm and lm head (routing collection needs neither).
      backend: expert dispatch backend (``experts.BACKENDS``, or ``"auto"``: the fastest exact one here).
      scan_layers: False unrolls the layers (reference for tests; compile time grows with depth).
      return_hidden_states: also return ``hidden_states [layers + 1, B, S, H]`` (as transformers'
        ``output_hidden_states``) and ``last_residual [B, S, H]``, float32.
    """
    B, S = input_ids.shape
    if attention_mask is None:
        attention_mask = jnp.ones((B, S), jnp.int32)
    if positions is None:
        positions = default_positions(attention_mask)
    x, r, _, residuals = decoder_layers(params, cfg, input_ids, positions, attention_mask.astype(bool),
                                        intervention=intervention, backend=backend, scan_layers=scan_layers,
                                        return_hidden=return_hidden_states)
    logits = lm_head(params, cfg, x) if compute_logits else None
    hidden = {}
    if return_hidden_states:
        residuals = residuals.astype(jnp.float32)
        normed = final_norm(params, cfg, x).astype(jnp.float32)
        hidden = dict(hidden_states=jnp.concatenate([residuals[:-1], normed[None]]), last_residual=residuals[-1])
    if not return_router:
        return ModelOutput(logits, **hidden)
    M = cfg.num_moe_layers
    return ModelOutput(logits, r.logits.reshape(M, B, S, -1), r.topk_idx.reshape(M, B, S, -1),
                       r.topk_weights.reshape(M, B, S, -1), **hidden)

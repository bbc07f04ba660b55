"""Greedy generation with a KV cache, as pure jitted functions over the parameter tree.

``prefill`` runs the prompts ``[B, P]`` once, writing every layer's keys/values to a ``KVCache``
(``kv_cache.py``) and picking the first token; ``decode`` emits tokens one at a time inside a
``lax.while_loop``, feeding each through the same layer stack as ``forward``
(``decoder.decoder_layers``) at its own cache slot; ``generate`` is both in one program. Prompts may
be padded on either side: positions come from the mask as in ``forward``, padded slots are never
attended to. The router intervention applies at every token, prompt and generated.

A row stops after emitting one of ``stop_token_ids`` (the stop token is emitted and counted); it
then emits ``pad_id``. The loop exits as soon as every row has stopped. Calling ``decode`` again
on the returned state continues the same generation, so a caller can check stop strings between
chunks (and mark rows ``done`` itself).

PhiMoE LongRoPE: each step picks the short or long factors from the current total length
(``max(position) + 1`` over the tokens being fed, every row counted, stopped ones too), as
transformers 4.x does in generation; cached keys keep the rotation they were computed with.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.models import intervention as iv_lib
from moe_jax.models import kv_cache
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import decoder_layers, default_positions, lm_head
from moe_jax.models.kv_cache import KVCache


class DecodeState(NamedTuple):
    cache: KVCache
    next_token: jax.Array  # [B] int32: greedy token to emit (and then feed) next
    position: jax.Array  # [B] int32: position id of next_token
    index: jax.Array  # [] int32: cache slot next_token is written to
    done: jax.Array  # [B] bool: row has stopped
    lengths: jax.Array  # [B] int32: tokens emitted so far


class DecodeOutput(NamedTuple):
    tokens: jax.Array  # [B, num_steps] int32, pad_id after a row stopped
    topk_idx: jax.Array | None  # [moe_layers, B, num_steps, k] int32 (-1 where pad was emitted)
    topk_weights: jax.Array | None  # [moe_layers, B, num_steps, k] float32 (0 where pad was emitted)


class GenerateOutput(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens] int32
    lengths: jax.Array  # [B] int32
    topk_idx: jax.Array | None = None  # [moe_layers, B, max_new_tokens, k]
    topk_weights: jax.Array | None = None


def _greedy(params: dict, cfg: ModelConfig, hidden: jax.Array) -> jax.Array:
    """Argmax token of hidden states ``[B, H]``: ``[B]`` int32."""
    return jnp.argmax(lm_head(params, cfg, hidden), axis=-1).astype(jnp.int32)


def _prefill(params, cfg, input_ids, attention_mask, cache_len, intervention, backend) -> DecodeState:
    B, P = input_ids.shape
    if cache_len < P:
        raise ValueError(f"cache_len={cache_len} is shorter than the prompts ({P} tokens)")
    valid = attention_mask.astype(bool)
    positions = default_positions(attention_mask)
    cache = kv_cache.init(cfg, B, cache_len, params["embed"].dtype)
    x, _, cache, _ = decoder_layers(params, cfg, input_ids, positions, valid, cache=cache, index=0,
                                 intervention=intervention, backend=backend)
    last = P - 1 - jnp.argmax(valid[:, ::-1], axis=1)  # last real token of each row, either padding side
    return DecodeState(cache=cache, next_token=_greedy(params, cfg, x[jnp.arange(B), last]),
                       position=jnp.sum(valid, axis=1, dtype=jnp.int32), index=jnp.int32(P),
                       done=jnp.zeros((B,), bool), lengths=jnp.zeros((B,), jnp.int32))


def _emit(state: DecodeState, stop_token_ids: jax.Array, pad_id) -> tuple[jax.Array, jax.Array, DecodeState]:
    """Emits ``next_token`` on live rows (pad on stopped ones): ``(token [B], emitted [B], state)``."""
    live = ~state.done
    token = jnp.where(live, state.next_token, jnp.asarray(pad_id, jnp.int32))
    stopped = jnp.any(state.next_token[:, None] == stop_token_ids[None, :], axis=-1)
    return token, live, state._replace(done=state.done | stopped, lengths=state.lengths + live)


def _feed(params, cfg, state: DecodeState, intervention, backend):
    """Runs ``next_token`` through the model at its slot; the new state holds the following token."""
    ids, pos = state.next_token[:, None], state.position[:, None]
    x, routers, cache, _ = decoder_layers(params, cfg, ids, pos, jnp.ones_like(ids, bool), cache=state.cache,
                                       index=state.index, intervention=intervention, backend=backend)
    state = state._replace(cache=cache, next_token=_greedy(params, cfg, x[:, 0]), position=state.position + 1,
                           index=state.index + 1)
    return state, routers


def _decode(params, cfg, state, num_steps, stop_token_ids, pad_id, intervention, backend,
            return_router) -> tuple[DecodeState, DecodeOutput]:
    B = state.next_token.shape[0]
    M, k = cfg.num_moe_layers, cfg.top_k
    tokens = jnp.full((B, num_steps), pad_id, jnp.int32)
    topk = (jnp.full((M, B, num_steps, k), -1, jnp.int32), jnp.zeros((M, B, num_steps, k), jnp.float32)) \
        if return_router else None

    def body(carry):
        i, state, tokens, topk = carry
        token, live, state = _emit(state, stop_token_ids, pad_id)
        tokens = tokens.at[:, i].set(token)
        state, routers = _feed(params, cfg, state, intervention, backend)
        if return_router:  # the routing of the token just emitted
            idx = jnp.where(live[None, :, None], routers.topk_idx, -1)  # [moe_layers, B, k]
            w = jnp.where(live[None, :, None], routers.topk_weights, 0.0)
            topk = (topk[0].at[:, :, i].set(idx), topk[1].at[:, :, i].set(w))
        return i + 1, state, tokens, topk

    def cond(carry):
        return (carry[0] < num_steps) & ~jnp.all(carry[1].done)

    _, state, tokens, topk = jax.lax.while_loop(cond, body, (jnp.int32(0), state, tokens, topk))
    return state, DecodeOutput(tokens, *(topk if return_router else (None, None)))


def _generate(params, cfg, input_ids, attention_mask, max_new_tokens, stop_token_ids, pad_id, intervention,
              backend, return_router) -> GenerateOutput:
    # Without router outputs the last token is emitted without being fed: N tokens cost N forwards.
    fed = max_new_tokens if return_router else max_new_tokens - 1
    state = _prefill(params, cfg, input_ids, attention_mask, input_ids.shape[1] + fed, intervention, backend)
    state, out = _decode(params, cfg, state, fed, stop_token_ids, pad_id, intervention, backend, return_router)
    tokens = out.tokens
    if not return_router:
        last, _, state = _emit(state, stop_token_ids, pad_id)
        tokens = jnp.concatenate([tokens, last[:, None]], axis=1)
    return GenerateOutput(tokens, state.lengths, out.topk_idx, out.topk_weights)


_prefill_jit = jax.jit(_prefill, static_argnames=("cfg", "cache_len", "backend"))
_decode_jit = jax.jit(_decode, static_argnames=("cfg", "num_steps", "backend", "return_router"))
_generate_jit = jax.jit(_generate, static_argnames=("cfg", "max_new_tokens", "backend", "return_router"))


def _stop_ids(stop_token_ids) -> jax.Array:
    """``[n]`` int32 (n may be 0): data, so changing the ids does not recompile."""
    if stop_token_ids is None:
        return jnp.zeros((0,), jnp.int32)
    return jnp.asarray(stop_token_ids, jnp.int32).reshape(-1)


def _check_batch(input_ids, attention_mask) -> tuple[jax.Array, jax.Array]:
    ids = jnp.asarray(input_ids, jnp.int32)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, prompt_len], got shape {ids.shape}")
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} differs from input_ids shape {ids.shape}")
    return ids, mask


def prefill(params: dict, cfg: ModelConfig, input_ids, attention_mask, *, cache_len: int,
            intervention: iv_lib.Intervention | None = None, backend: str = "auto") -> DecodeState:
    """Runs prompts ``[B, P]`` (padded on either side, every row with at least one real token)
    into a fresh cache of ``cache_len >= P`` slots; returns the state ``decode`` starts from."""
    ids, mask = _check_batch(input_ids, attention_mask)
    return _prefill_jit(params, cfg, ids, mask, cache_len, intervention, backend)


def decode(params: dict, cfg: ModelConfig, state: DecodeState, *, num_steps: int, stop_token_ids=None,
           pad_id: int = 0, intervention: iv_lib.Intervention | None = None, backend: str = "auto",
           return_router: bool = False) -> tuple[DecodeState, DecodeOutput]:
    """Emits up to ``num_steps`` greedy tokens per row (fewer if every row stops first).

    Each emitted token is fed through the model, so the cache needs ``num_steps`` free slots after
    ``state.index``. ``stop_token_ids``: int32 ``[n]``, data (no recompile when it changes).
    """
    if not isinstance(state.index, jax.core.Tracer):
        free = state.cache.cache_len - int(state.index)
        if num_steps > free:
            raise ValueError(f"decode of num_steps={num_steps} needs {num_steps} free cache slots, "
                             f"the cache has {free} (cache_len={state.cache.cache_len})")
    return _decode_jit(params, cfg, state, num_steps, _stop_ids(stop_token_ids), pad_id, intervention,
                       backend, return_router)


def generate(params: dict, cfg: ModelConfig, input_ids, attention_mask, *, max_new_tokens: int,
             stop_token_ids=None, pad_id: int = 0, intervention: iv_lib.Intervention | None = None,
             backend: str = "auto", return_router: bool = False) -> GenerateOutput:
    """Greedy generation of up to ``max_new_tokens`` per row from prompts ``[B, P]``: prefill and
    decode in one jitted program per (batch, prompt length, max_new_tokens)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    ids, mask = _check_batch(input_ids, attention_mask)
    return _generate_jit(params, cfg, ids, mask, max_new_tokens, _stop_ids(stop_token_ids), pad_id,
                         intervention, backend, return_router)

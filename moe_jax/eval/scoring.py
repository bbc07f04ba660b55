"""Token-level scoring with lm-eval's semantics over a parameter tree: log-likelihoods of
continuations and greedy generation.

Requests are sorted by length (longest first, as lm-eval's HF backend does), cut into batches of
``batch_size`` and padded to a length *bucket* (``bucket_length``) and, for the last batch, to the
full batch size, so that a run over thousands of requests of varied lengths compiles a handful of
programs. ``stats`` (a dict, updated in place) counts compiles (jit cache misses), truncated
requests, batches and padded tokens.

Log-likelihood of a continuation (HF backend semantics): the input is ``(context + continuation)``,
its last ``max_length + 1`` tokens kept and the very last dropped; ``log_softmax`` of the logits
is taken in float32 and the log-probabilities of the continuation tokens summed; ``is_greedy`` says
whether every continuation token is the argmax. Requests whose ``context + continuation[:-1]`` are
equal (multiple choice with one-token answers) share one forward pass.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from moe_jax.models import generate as gen
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import Intervention

STAT_KEYS = ("compiles", "compile_seconds", "truncated", "batches", "tokens", "padded_tokens")


def put_batch(arrays, mesh=None):
    """Host arrays with a leading batch axis onto the devices: split over ``mesh``'s ``data`` axis
    when a mesh is given (the model's parameters are placed by the same mesh), else the default device."""
    if mesh is None:
        return jax.device_put(arrays)
    return jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, PartitionSpec("data"))), arrays)


def replicated(mesh):
    return NamedSharding(mesh, PartitionSpec())


def new_stats() -> dict:
    return {k: 0.0 if k == "compile_seconds" else 0 for k in STAT_KEYS}


def bucket_length(n: int, min_step: int = 8, per_octave: int = 4) -> int:
    """Smallest bucket >= ``n``: multiples of ``min_step`` up to ``per_octave * min_step``, then
    ``per_octave`` evenly spaced lengths per doubling (padding <= 1/per_octave of the length)."""
    if n <= 0:
        raise ValueError(f"sequence length must be positive, got {n}")
    step = max(min_step, 2 ** max(0, math.ceil(math.log2(n)) - 1) // per_octave)
    return -(-n // step) * step


def _count(stats: dict | None, key: str, n: int = 1) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + n


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")
_compiled = {"count": 0, "seconds": 0.0}  # process-wide: every XLA compile, with its trace and lowering time


def _on_event(event: str, duration: float, **kwargs) -> None:
    if event in _COMPILE_EVENTS:
        _compiled["seconds"] += duration
        _compiled["count"] += event == _COMPILE_EVENTS[-1]


jax.monitoring.register_event_duration_secs_listener(_on_event)


class _CompileCounter:
    """Adds the XLA compiles (jit cache misses) and their time during a block to ``stats``."""

    def __init__(self, stats: dict | None):
        self.stats = stats

    def __enter__(self):
        self.before = dict(_compiled)
        return self

    def __exit__(self, *exc):
        _count(self.stats, "compiles", _compiled["count"] - self.before["count"])
        _count(self.stats, "compile_seconds", _compiled["seconds"] - self.before["seconds"])


# --------------------------------------------------------------------------------------------
# Log-likelihood


@functools.partial(jax.jit, static_argnames=("cfg", "backend"))
def score_batch(params: dict, cfg: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array,
                last_index: jax.Array, intervention: Intervention | None = None, backend: str = "auto"):
    """One forward pass over right-padded ``input_ids [B, S]``.

    Returns ``(next_logprob [B, S], greedy [B, S], last_logprobs [B, V])``: the float32 log-prob of
    each next input token (``next_logprob[:, i]`` scores ``input_ids[:, i + 1]``; the last column is
    meaningless), the argmax token at every position, and the full log-softmax row at
    ``last_index [B]`` (the position that predicts the token after the input).
    """
    logits = forward(params, cfg, input_ids, attention_mask, None, intervention, backend=backend).logits
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, S, V]
    nxt = jnp.concatenate([input_ids[:, 1:], input_ids[:, :1]], axis=1)
    next_logprob = jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logp, axis=-1).astype(jnp.int32)
    last = jnp.take_along_axis(logp, last_index[:, None, None], axis=1)[:, 0]
    return next_logprob, greedy, last


def loglikelihood_tokens(params: dict, cfg: ModelConfig, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                         *, max_length: int, batch_size: int, intervention: Intervention | None = None,
                         backend: str = "auto", stats: dict | None = None,
                         progress: Callable[[int], None] | None = None, mesh=None) -> list[tuple[float, bool]]:
    """``(sum of continuation log-probs, is_greedy)`` for each ``(context_ids, continuation_ids)``.

    Both lists must be non-empty and the continuation at most ``max_length`` tokens (as in lm-eval).
    A request longer than ``max_length + 1`` tokens is cut from the left and counted in
    ``stats["truncated"]``. ``progress(n)`` is called after each batch with the requests it finished.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) == 0 or len(cont) == 0:
            raise ValueError(f"request {i}: context and continuation must both be non-empty token lists "
                             f"(got {len(ctx)} and {len(cont)} tokens)")
        if len(cont) > max_length:
            raise ValueError(f"request {i}: continuation of {len(cont)} tokens exceeds max_length {max_length}")
        if len(ctx) + len(cont) > max_length + 1:
            _count(stats, "truncated")
        # Same context + continuation[:-1] -> same model input: one forward pass for all of them.
        groups.setdefault(tuple(ctx) + tuple(cont[:-1]), []).append(i)
    # Longest first, ties by tokens: the order of lm-eval's Collator.
    keys = sorted(groups, key=lambda k: (-(len(k) + 1), k))
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        inputs = [list(k[-max_length:]) for k in chunk]  # == (ctx + cont)[-(max_length + 1):][:-1]
        seq = bucket_length(max(len(x) for x in inputs))
        ids = np.zeros((batch_size, seq), np.int32)
        mask = np.zeros((batch_size, seq), np.int32)
        mask[len(chunk):] = 1  # padding rows: attend to something, results unused
        last = np.zeros((batch_size,), np.int32)
        for r, x in enumerate(inputs):
            ids[r, :len(x)] = x
            mask[r, :len(x)] = 1
            last[r] = len(x) - 1
        with _CompileCounter(stats):
            out = score_batch(params, cfg, *put_batch((ids, mask, last), mesh), intervention,
                              backend=backend)
        next_lp, greedy, last_lp = (np.asarray(a) for a in out)
        _count(stats, "batches")
        real = sum(len(x) for x in inputs)
        _count(stats, "tokens", real)
        _count(stats, "padded_tokens", ids.size - real)
        done = 0
        for r, (key, x) in enumerate(zip(chunk, inputs)):
            n = len(x)
            for i in groups[key]:
                cont = list(requests[i][1])
                c = len(cont)
                logprob = float(np.sum(next_lp[r, n - c:n - 1], dtype=np.float64)) + float(last_lp[r, cont[-1]])
                is_greedy = bool(np.array_equal(greedy[r, n - c:n], cont))
                results[i] = (logprob, is_greedy)
                done += 1
        if progress is not None:
            progress(done)
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Greedy generation


def greedy_until_tokens(params: dict, cfg: ModelConfig, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                        batch_size: int, stop_token_ids: Sequence[int] = (),
                        is_done: Callable[[list[int]], bool] | None = None, chunk: int = 32, pad_id: int = 0,
                        intervention: Intervention | None = None, backend: str = "auto",
                        stats: dict | None = None,
                        progress: Callable[[int], None] | None = None, mesh=None) -> list[list[int]]:
    """Greedy continuation tokens of each prompt (at most ``max_new_tokens``, a stop token included).

    Prompts are left-padded to a length bucket; decoding runs ``chunk`` steps at a time and, between
    chunks, ``is_done(tokens_so_far)`` may end a row (a stop string in its text). A row also ends on
    a token in ``stop_token_ids``. Tokens a row emits after the chunk in which it ended are discarded
    by the caller's own cut (the text is cut at the first stop string), so the result equals
    generating without any early stop and cutting afterwards.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    steps = -(-max_new_tokens // chunk) * chunk
    # One cache length per call, from the longest prompt rounded up to a power of two: decode
    # compiles once per call, and calls of similar lengths (tasks, languages) share it.
    longest = max((len(p) for p in prompts), default=1)
    cache_len = max(bucket_length(longest), 2 ** math.ceil(math.log2(longest))) + steps
    stop_ids = np.asarray(list(stop_token_ids), np.int32).reshape(-1)
    stop_ids = jax.device_put(stop_ids) if mesh is None else jax.device_put(stop_ids, replicated(mesh))
    results: list[list[int] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = bucket_length(max(len(prompts[i]) for i in rows))
        ids = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        mask[len(rows):, -1] = 1  # padding rows: one real token, marked done below
        for r, i in enumerate(rows):
            p = prompts[i]
            ids[r, width - len(p):] = p
            mask[r, width - len(p):] = 1
        with _CompileCounter(stats):
            state = gen.prefill(params, cfg, *put_batch((ids, mask), mesh), cache_len=cache_len,
                                intervention=intervention, backend=backend)
        done = np.asarray(state.done) | (np.arange(batch_size) >= len(rows))
        state = state._replace(done=put_batch(done, mesh))
        tokens = [[] for _ in range(batch_size)]
        emitted = 0
        while emitted < max_new_tokens:
            with _CompileCounter(stats):
                state, out = gen.decode(params, cfg, state, num_steps=chunk, stop_token_ids=stop_ids, pad_id=pad_id,
                                        intervention=intervention, backend=backend)
            new = np.asarray(out.tokens)
            lengths = np.asarray(state.lengths)
            emitted += chunk
            done = np.asarray(state.done).copy()
            for r in range(len(rows)):
                have = len(tokens[r])
                take = min(int(lengths[r]), max_new_tokens) - have
                if take > 0:
                    tokens[r].extend(new[r, :take].tolist())
                if not done[r] and is_done is not None and is_done(tokens[r]):
                    done[r] = True
            if done.all():
                break
            state = state._replace(done=put_batch(done, mesh))
        _count(stats, "batches")
        real = sum(len(prompts[i]) for i in rows)
        _count(stats, "tokens", real)
        _count(stats, "padded_tokens", ids.size - real)
        for r, i in enumerate(rows):
            results[i] = tokens[r][:max_new_tokens]
        if progress is not None:
            progress(len(rows))
    return results  # type: ignore[return-value]

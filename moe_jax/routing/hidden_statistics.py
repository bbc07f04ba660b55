"""Representation summaries reduced on device beside the routing statistics: pooled hidden states in a
fixed random projection, and the logit lens's probability mass on the pivot's and the sentence's own
language's tokens. Only ``[B, layers + 1, ...]`` summaries leave the device.

The projection: ``P [H, k]`` with entries ``N(0, 1/k)`` from a fixed seed, the same for every language
of a run, stored as float16. Inner products and norms are kept in expectation
(``E[(Pu)·(Pv)] = u·v``); for a pair of vectors at cosine ``c`` the projected cosine's standard deviation
is about ``(1 - c^2) / sqrt(k)`` (at most 0.0625 for k = 256), and per-language mean-centring commutes
with the projection (it is linear), so the alignment measures of ``moe_jax.analysis.representations``
read the projected states directly.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models.config import ModelConfig
from moe_jax.models.lens import logit_lens

PROJECTION_DIM = 256
PROJECTION_SEED = 0


def projection(hidden_size: int, dim: int = PROJECTION_DIM, seed: int = PROJECTION_SEED) -> np.ndarray:
    """``[hidden_size, dim]`` float32 with entries ``N(0, 1/dim)`` (a seeded Johnson-Lindenstrauss map);
    ``dim >= hidden_size`` keeps the states as they are (identity)."""
    if dim >= hidden_size:
        return np.eye(hidden_size, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((hidden_size, dim)) / np.sqrt(dim)).astype(np.float32)


def _token_mean(x: jax.Array, counted: jax.Array) -> jax.Array:
    """Mean over the counted tokens: ``x [..., B, S, D]``, ``counted [B, S]`` -> ``[..., B, D]`` float32
    (zeros for a sequence without counted tokens)."""
    w = counted.astype(jnp.float32)
    return jnp.einsum("...bsd,bs->...bd", x.astype(jnp.float32), w) / jnp.maximum(w.sum(-1), 1.0)[:, None]


def pooled_states(hidden: jax.Array, counted: jax.Array, proj: jax.Array) -> jax.Array:
    """Each sequence's mean hidden state over its counted tokens, per layer, projected:
    ``hidden [layers + 1, B, S, H]``, ``counted [B, S]``, ``proj [H, k]`` -> ``[B, layers + 1, k]`` float16."""
    pooled = _token_mean(hidden, counted)  # [layers + 1, B, H]
    return jnp.swapaxes(pooled @ proj.astype(jnp.float32), 0, 1).astype(jnp.float16)


def lens_mass(params: dict, cfg: ModelConfig, residuals: jax.Array, counted: jax.Array,
              token_sets: jax.Array) -> jax.Array:
    """The logit lens's mean probability mass on each token set, per sequence and layer.

    ``residuals [layers + 1, B, S, H]`` (before any final norm, ``lens.residual_stream``), ``counted
    [B, S]``, ``token_sets [n_sets, V]`` (1 on a set's tokens, e.g. the pivot's and the language's
    own) -> ``[B, layers + 1, n_sets]`` float32: for each layer, ``softmax(W_U norm_f(h))`` summed over
    each set, averaged over the counted tokens. One layer's ``[B, S, V]`` probabilities at a time."""
    sets = token_sets.astype(jnp.float32)

    def one_layer(h):
        probs = jax.nn.softmax(logit_lens(params, cfg, h), axis=-1)  # [B, S, V]
        return _token_mean(probs @ sets.T, counted)  # [B, n_sets]

    return jnp.swapaxes(jax.lax.map(one_layer, residuals), 0, 1)


def token_counts(token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """``[V]`` int64 occurrences of each token id in ``token_ids`` (any shape; padding left out first)."""
    return np.bincount(np.asarray(token_ids).ravel(), minlength=vocab_size).astype(np.int64)


def token_languages(counts: Mapping[str, np.ndarray], share: float = 0.5, min_count: int = 1
                    ) -> dict[str, np.ndarray]:
    """``{language: [V] bool}``: a token belongs to a language when at least ``share`` of its occurrences
    over all the languages' corpora (``counts``: ``{language: [V] occurrences}``) are in that language,
    and it occurs there at least ``min_count`` times. With ``share > 0.5`` no token belongs to two."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not counts:
        raise ValueError("token_languages needs the token counts of at least one language")
    sizes = {lang: np.shape(c) for lang, c in counts.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"token counts of different vocabulary sizes: {sizes}")
    total = sum(np.asarray(c, np.int64) for c in counts.values())
    return {lang: (np.asarray(c) >= min_count) & (np.asarray(c) >= share * total) for lang, c in counts.items()}

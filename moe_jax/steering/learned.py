"""Learned steering: fit per-(layer, expert) router biases so that a language's routing moves
towards the pivot language's on parallel text. Model weights stay frozen; gradients flow only into
the bias, and only in the chosen layers.

Per aligned pair i (sentence i in the language and in the pivot) and MoE layer l of the band::

    q_i^l(b) = mean over counted tokens t of softmax(z_t^l + b^l)       (the language, steered)
    p_i^l    = the same statistic of the pivot sentence, unsteered (a constant target)
    loss(b)  = mean_{i, l in band} JS(p_i^l, q_i^l(b)) + l2 * sum_{l in band, e} (b_e^l)^2

``z`` is the raw gate output of the steered forward pass (earlier layers' biases change later
layers' inputs, and the gradient follows through the routing weights). Optimised with Adam
(optax) on a training split of the pairs; the loss on the held-out split is tracked.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from moe_jax.models import experts as experts_lib
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import Intervention
from moe_jax.steering.spec import SteeringSpec

_M_FLOOR = 1e-10  # clamp of the mixture in JS, as the analysis metric


class LearnedBias(NamedTuple):
    bias: np.ndarray  # [moe_layers, experts] float32, zero outside the band
    train_loss: np.ndarray  # [steps + 1] loss on the training pairs (before each step, and final)
    heldout_loss: np.ndarray  # [steps + 1] loss on the held-out pairs (divergence part only)
    train_idx: np.ndarray  # pair indices used for training
    heldout_idx: np.ndarray


def mean_softmax(router_logits: jax.Array, bias: jax.Array, count_mask: jax.Array) -> jax.Array:
    """Per-sequence mean of ``softmax(z + b)`` over counted tokens: ``[L, B, S, E] -> [B, L, E]``."""
    probs = jax.nn.softmax(router_logits + bias[:, None, None, :], axis=-1)
    w = count_mask.astype(jnp.float32)
    return jnp.einsum("lbse,bs->ble", probs, w) / jnp.maximum(w.sum(-1), 1.0)[:, None, None]


def js_divergence(p: jax.Array, q: jax.Array) -> jax.Array:
    """Jensen-Shannon divergence (nats) over the last axis."""
    m = jnp.maximum(0.5 * (p + q), _M_FLOOR)

    def kl(a):
        return jnp.sum(jnp.where(a > 0, a * (jnp.log(jnp.maximum(a, _M_FLOOR)) - jnp.log(m)), 0.0), -1)
    return 0.5 * kl(p) + 0.5 * kl(q)


def differentiable(backend: str) -> str:
    """``backend``, or ``dense`` where it resolves to ``grouped``: its loops have data-dependent trip
    counts, which reverse-mode differentiation cannot go through."""
    resolved = experts_lib.resolve(backend)
    return "dense" if resolved == "grouped" else resolved


def routing_statistic(params: dict, cfg: ModelConfig, ids, mask, count_mask, bias, backend: str = "auto"):
    """``[B, L, E]`` mean full-softmax routing of ``ids [B, S]`` with router ``bias [L, E]`` applied
    (``backend`` must be differentiable when this is: see ``differentiable``)."""
    zeros = jnp.zeros_like(bias)
    iv = Intervention(bias, zeros, zeros, jnp.zeros(bias.shape, jnp.int32))
    out = forward(params, cfg, ids, mask, intervention=iv, return_router=True, compute_logits=False,
                  backend=backend)
    return mean_softmax(out.router_logits, bias, count_mask)


@functools.partial(jax.jit, static_argnames=("cfg", "backend"))
def _loss(bias, params, cfg, ids, mask, count_mask, target, band, l2, backend="auto"):
    bias = bias * band[:, None]  # only the band is a free parameter
    q = routing_statistic(params, cfg, ids, mask, count_mask, bias, differentiable(backend))
    div = js_divergence(target, q)  # [B, L]
    div = jnp.sum(div * band, -1) / jnp.maximum(band.sum(), 1.0)
    return jnp.mean(div) + l2 * jnp.sum(jnp.square(bias)), jnp.mean(div)


_value_and_grad = jax.jit(jax.value_and_grad(_loss, has_aux=True), static_argnames=("cfg", "backend"))


def fit_router_bias(params: dict, cfg: ModelConfig, ids, mask, count_mask, target, band_rows, *,
                    steps: int = 50, learning_rate: float = 0.05, l2: float = 1e-3, heldout_fraction: float = 0.25,
                    seed: int = 0, backend: str = "auto") -> LearnedBias:
    """Fits router biases on the language's sentences ``ids/mask/count_mask [N, S]`` towards the
    pivot's statistic ``target [N, L, E]`` of the aligned sentences, in the MoE layers ``band_rows [L]``.

    Full-batch Adam over the training pairs; ``heldout_fraction`` of the pairs (at least one) is held out.
    """
    ids, mask, count_mask = (jnp.asarray(a) for a in (ids, mask, count_mask))
    target = jnp.asarray(target, jnp.float32)
    band = jnp.asarray(np.asarray(band_rows, np.float32))
    n = int(ids.shape[0])
    if target.shape != (n, cfg.num_moe_layers, cfg.num_experts):
        raise ValueError(f"target must be [sequences, moe_layers, experts] = {(n, cfg.num_moe_layers, cfg.num_experts)}, "
                         f"got {tuple(target.shape)}")
    if band.shape != (cfg.num_moe_layers,) or not bool(band.any()):
        raise ValueError(f"band_rows must be a non-empty [moe_layers={cfg.num_moe_layers}] mask, got {band.shape}")
    if n < 2:
        raise ValueError("learned steering needs at least 2 aligned pairs (one is held out)")
    order = np.random.default_rng(seed).permutation(n)
    n_held = min(max(1, int(round(heldout_fraction * n))), n - 1)
    held, train = np.sort(order[:n_held]), np.sort(order[n_held:])

    def split(idx):
        return ids[idx], mask[idx], count_mask[idx], target[idx]

    tr, ho = split(train), split(held)
    opt = optax.adam(learning_rate)
    bias = jnp.zeros((cfg.num_moe_layers, cfg.num_experts), jnp.float32)
    state = opt.init(bias)
    train_loss, held_loss = [], []
    for _ in range(steps + 1):
        (loss, _), grad = _value_and_grad(bias, params, cfg, *tr, band, l2, backend)
        train_loss.append(float(loss))
        held_loss.append(float(_loss(bias, params, cfg, *ho, band, l2, backend)[1]))
        if len(train_loss) > steps:
            break
        updates, state = opt.update(grad, state, bias)
        bias = optax.apply_updates(bias, updates)
    bias = np.asarray(bias * band[:, None], np.float32)
    return LearnedBias(bias, np.asarray(train_loss), np.asarray(held_loss), train, held)


def learned_spec(fit: LearnedBias, cfg: ModelConfig, name: str = "learned", **provenance) -> SteeringSpec:
    """The fitted biases as a ``bias`` SteeringSpec (lam 1, weight = bias) over the band's experts."""
    rows = np.flatnonzero(np.abs(fit.bias).sum(-1) > 0)
    targets = [(cfg.moe_layer_ids[l], e, float(fit.bias[l, e])) for l in rows for e in range(cfg.num_experts)]
    return SteeringSpec("bias", targets, lam=1.0, name=name,
                        provenance={"rule": "learned", "final_train_loss": float(fit.train_loss[-1]),
                                    "final_heldout_loss": float(fit.heldout_loss[-1]), **provenance})

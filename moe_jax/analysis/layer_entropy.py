"""Routing entropy per layer: how concentrated the router is (falls with depth; docs/methods.md#routing-entropy)."""

from __future__ import annotations

import numpy as np

from moe_jax.analysis.metrics import entropy
from moe_jax.analysis.validate import as_distribution, as_finite


def routing_entropy(seq_token_entropy, seq_lengths=None) -> np.ndarray:
    """Mean token-level router entropy per layer ``[layers]`` (nats).

    ``seq_token_entropy``: ``[sequences, layers]``, each the mean over a sequence's tokens of
    ``H(softmax(z_t))``; ``seq_lengths`` ``[sequences]`` weights sequences by their token counts so
    the result is the mean over all tokens (plain mean over sequences when omitted). Divide by
    ``log E`` for a value in [0, 1].
    """
    h = as_finite(seq_token_entropy, "seq_token_entropy", ndim=2)
    if np.any(h < 0):
        raise ValueError("seq_token_entropy: entropies must be non-negative")
    if seq_lengths is None:
        return h.mean(0)
    w = as_finite(seq_lengths, "seq_lengths", ndim=1)
    if w.shape[0] != h.shape[0] or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"seq_lengths: expected {h.shape[0]} non-negative counts with a positive sum")
    return (w[:, None] * h).sum(0) / w.sum()


def utilization_entropy(topk_counts) -> np.ndarray:
    """Entropy ``[layers]`` (nats) of a language's expert utilisation ``c / sum_e c`` from ``[layers, experts]``.

    Low values mean the language concentrates on few experts (load imbalance); at most ``log E``.
    """
    return entropy(as_distribution(as_finite(topk_counts, "topk_counts", ndim=2), "topk_counts", warn=False))

"""Distances between routing distributions: KL, Jensen-Shannon, entropy-normalised JS, cosine.

All functions take distributions of shape ``[..., experts]`` (broadcastable against each other) and
return ``[...]``, natural log. Rows that do not sum to 1 are normalised with a warning; negative
entries are refused (``moe_jax.analysis.validate``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from moe_jax.analysis.validate import as_distribution, as_finite

M_FLOOR = 1e-10  # entropy-normalised JS: clamp of the mixture m (and of q in KL) so logs stay finite
DENOM_FLOOR = 1e-6  # clamp of the entropy-normalised JS denominator


def _kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """sum_e p log(p/q) for validated arrays, 0 log 0 = 0; clipped at 0 against rounding."""
    return np.maximum((xlogy(p, p) - xlogy(p, q)).sum(-1), 0.0)


def entropy(p) -> np.ndarray:
    """Shannon entropy ``H(p) = -sum_e p log p`` in nats: ``[..., experts] -> [...]``."""
    p = as_distribution(p, "p")
    return np.maximum(-xlogy(p, p).sum(-1), 0.0)


def kl_divergence(p, q, eps: float = M_FLOOR) -> np.ndarray:
    """``KL(p || q)`` in nats: ``[..., experts] -> [...]``; ``q`` clamped at ``eps`` so it stays finite."""
    p, q = as_distribution(p, "p"), as_distribution(q, "q")
    return _kl(p, np.maximum(q, eps))


def _js(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = np.maximum(0.5 * (p + q), M_FLOOR)
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


def js_divergence(p, q) -> np.ndarray:
    """Jensen-Shannon divergence ``KL(p||m)/2 + KL(q||m)/2``, ``m = (p+q)/2`` clamped at 1e-10.

    Symmetric, 0 for identical inputs, at most ``log 2``: ``[..., experts] -> [...]``.
    """
    return _js(as_distribution(p, "p"), as_distribution(q, "q"))


def entropy_normalized_js(p, q) -> np.ndarray:
    """Entropy-normalised JS: ``JSD(p, q) / max(log E - (H(p) + H(q)) / 2, 1e-6)``.

    Raw JSD falls with the routing entropy over depth; dividing by the room left for divergence
    (``JSD <= H(m) - mean H <= log E - mean H``) puts every layer on [0, 1]. Finite for one-hot
    inputs thanks to the clamps (docs/methods.md#distances-between-distributions). ``[..., experts] -> [...]``.
    """
    p, q = as_distribution(p, "p"), as_distribution(q, "q")
    n_experts = p.shape[-1]
    h = 0.5 * (-xlogy(p, p).sum(-1) - xlogy(q, q).sum(-1))
    return _js(p, q) / np.maximum(np.log(n_experts) - h, DENOM_FLOOR)


def cosine_similarity(p, q) -> np.ndarray:
    """Cosine of the angle between ``p`` and ``q`` (any real vectors): ``[..., experts] -> [...]``."""
    p, q = as_finite(p, "p"), as_finite(q, "q")
    np_, nq = np.linalg.norm(p, axis=-1), np.linalg.norm(q, axis=-1)
    if np.any(np_ == 0) or np.any(nq == 0):
        raise ValueError(f"cosine_similarity: {'p' if np.any(np_ == 0) else 'q'} has an all-zero vector")
    return np.clip((p * q).sum(-1) / (np_ * nq), -1.0, 1.0)


def cosine_distance(p, q) -> np.ndarray:
    """``1 - cosine_similarity(p, q)``: ``[..., experts] -> [...]``."""
    return 1.0 - cosine_similarity(p, q)


DIVERGENCES = {
    "entropy_normalized_js": entropy_normalized_js,
    "js_divergence": js_divergence,
    "kl_divergence": kl_divergence,
    "cosine_distance": cosine_distance,
}


def get_divergence(metric: str):
    """The divergence function named ``metric`` (one of ``DIVERGENCES``)."""
    try:
        return DIVERGENCES[metric]
    except KeyError:
        raise ValueError(f"unknown divergence metric {metric!r}; choose from {sorted(DIVERGENCES)}") from None

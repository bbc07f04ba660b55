"""Language-by-language routing similarity per layer or layer band, and hierarchical clustering.

Utilisation vectors are a language's top-k frequencies ``f = c / T`` per layer
(docs/methods.md#language-similarity-and-clustering). The
similarity of two languages is the cosine of their vectors (``metric="cosine"``) or
``1 - entropy-normalised JS`` of the normalised vectors (``metric="js"``). A band's similarity is the
mean of its layers' similarities.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial.distance import squareform

from moe_jax.analysis.metrics import cosine_similarity, entropy_normalized_js
from moe_jax.analysis.validate import as_distribution, as_finite, normalize_band


def layer_similarity(util, metric: str = "cosine") -> np.ndarray:
    """Similarity matrices ``[layers, languages, languages]`` from utilisation ``[languages, layers, experts]``."""
    u = as_finite(util, "utilisation", ndim=3)
    a, b = u[:, None], u[None, :]  # [X, 1, L, E], [1, X, L, E]
    if metric == "cosine":
        s = cosine_similarity(a, b)
    elif metric == "js":
        p = as_distribution(u, "utilisation", warn=False)
        s = 1.0 - entropy_normalized_js(p[:, None], p[None, :])
    else:
        raise ValueError(f"similarity metric must be 'cosine' or 'js', got {metric!r}")
    return np.transpose(s, (2, 0, 1))


def band_similarity(util, band, metric: str = "cosine") -> np.ndarray:
    """Mean similarity ``[languages, languages]`` over the layers ``band`` = (start, end), inclusive."""
    u = as_finite(util, "utilisation", ndim=3)
    s, e = normalize_band(band, u.shape[1], "similarity band")
    return layer_similarity(u[:, s: e + 1], metric).mean(0)


def cluster_languages(similarity, method: str = "average") -> np.ndarray:
    """SciPy linkage matrix ``[languages - 1, 4]`` of languages from a similarity matrix ``[X, X]``.

    Distance = ``1 - similarity`` (symmetrised, clipped at 0, zero diagonal). Draw it with
    ``scipy.cluster.hierarchy.dendrogram(Z, labels=languages)``.
    """
    s = as_finite(similarity, "similarity", ndim=2)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"similarity: expected a square matrix, got {s.shape}")
    if s.shape[0] < 2:
        raise ValueError("cluster_languages: needs at least 2 languages")
    d = np.maximum(1.0 - 0.5 * (s + s.T), 0.0)
    np.fill_diagonal(d, 0.0)
    return hierarchy.linkage(squareform(d, checks=False), method=method)


def leaf_order(linkage) -> np.ndarray:
    """Order of the languages along the dendrogram ``[languages]`` (for sorting heatmaps)."""
    return hierarchy.leaves_list(np.asarray(linkage))

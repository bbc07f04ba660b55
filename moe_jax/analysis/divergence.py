"""Per-layer divergence of every language from a pivot language, its noise floor, the middle band.

Two paths:

* per sequence: ``Div(x, l) = mean_i D(q_i^(pivot, l), q_i^(x, l))`` over aligned
  sequence pairs, from per-sequence distributions ``[sequences, layers, experts]``;
* aggregate: ``D(c^pivot_l / sum c^pivot_l, c^x_l / sum c^x_l)`` from language totals of top-k counts
  ``[layers, experts]`` and token totals ``[layers]``, for users who kept only aggregates.

``split_half_baseline`` measures the same quantities between two random halves of one language, so
that a curve can be read against noise, and ``detect_middle_band`` finds the contiguous layers of low
divergence. Layer positions are 0-indexed positions on the MoE-layer axis. Formulas:
docs/methods.md#divergence-from-the-pivot.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from moe_jax.analysis.metrics import get_divergence
from moe_jax.analysis.validate import (as_distribution, as_finite, check_consistent, check_pivot,
                                       normalize_band)


def pairwise_divergence(p, q, metric: str = "entropy_normalized_js") -> np.ndarray:
    """``D(p_i, q_i)`` for aligned sequences: ``[sequences, layers, experts]`` x2 -> ``[sequences, layers]``."""
    p, q = np.asarray(p), np.asarray(q)
    if p.ndim != 3 or p.shape != q.shape:
        raise ValueError(f"pairwise_divergence: expected two [sequences, layers, experts] arrays of one shape, "
                         f"got {p.shape} and {q.shape}")
    return get_divergence(metric)(p, q)


def _align(ids_pivot: np.ndarray, ids_lang: np.ndarray, lang: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices into pivot and language arrays of their common sequence ids, in pivot order."""
    pos = {str(s): i for i, s in enumerate(ids_lang)}
    ip = [i for i, s in enumerate(ids_pivot) if str(s) in pos]
    if not ip:
        raise ValueError(f"language {lang!r} shares no sequence id with the pivot")
    if len(ip) < len(ids_pivot) or len(ip) < len(ids_lang):
        warnings.warn(f"language {lang!r}: {len(ip)} aligned sequences "
                      f"(pivot has {len(ids_pivot)}, {lang} has {len(ids_lang)})", stacklevel=3)
    return np.asarray(ip), np.asarray([pos[str(ids_pivot[i])] for i in ip])


def pivot_divergence_pairs(seq_dists: Mapping[str, np.ndarray], pivot: str = "eng_Latn",
                           metric: str = "entropy_normalized_js",
                           seq_ids: Mapping[str, Sequence] | None = None) -> dict[str, np.ndarray]:
    """Per-pair divergences ``{language: [pairs, layers]}`` of every non-pivot language from the pivot.

    ``seq_dists``: ``{language: [sequences, layers, experts]}`` per-sequence routing distributions.
    Sequence i of a language is paired with sequence i of the pivot, or, when ``seq_ids``
    (``{language: [sequences]}``) is given, with the pivot sequence of the same id.
    """
    check_pivot(seq_dists, pivot)
    check_consistent(seq_dists, "per-sequence distributions", "[sequences, layers, experts]", 2)
    ref = as_distribution(seq_dists[pivot], f"{pivot} distributions")
    out = {}
    for lang, d in seq_dists.items():
        if lang == pivot:
            continue
        d = as_distribution(d, f"{lang} distributions")
        if seq_ids is not None:
            ip, il = _align(np.asarray(seq_ids[pivot]), np.asarray(seq_ids[lang]), lang)
            a, b = ref[ip], d[il]
        elif d.shape[0] != ref.shape[0]:
            raise ValueError(f"language {lang!r} has {d.shape[0]} sequences, pivot {pivot!r} has "
                             f"{ref.shape[0]}; pass seq_ids to align them")
        else:
            a, b = ref, d
        out[lang] = pairwise_divergence(a, b, metric)
    return out


def pivot_divergence(seq_dists: Mapping[str, np.ndarray], pivot: str = "eng_Latn",
                     metric: str = "entropy_normalized_js",
                     seq_ids: Mapping[str, Sequence] | None = None) -> dict[str, np.ndarray]:
    """``{language: [layers]}``: divergence from the pivot per layer, averaged over aligned pairs.

    See ``pivot_divergence_pairs`` for the arguments; the pivot itself is left out.
    """
    return {l: pair_mean_sem(v)[0] for l, v in pivot_divergence_pairs(seq_dists, pivot, metric, seq_ids).items()}


def pair_mean_sem(pairs) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[layers]`` over pairs of per-pair divergences ``[pairs, layers]`` and its standard error
    (sample std / sqrt(pairs); 0 for a single pair)."""
    v = as_finite(pairs, "per-pair divergences", ndim=2)
    n = v.shape[0]
    sem = v.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros(v.shape[1])
    return v.mean(0), sem


def aggregate_distribution(topk_counts, token_totals, name: str = "topk_counts") -> np.ndarray:
    """Routing distribution ``[layers, experts]`` from top-k counts ``[layers, experts]`` and tokens ``[layers]``.

    ``c / sum_e c`` = top-k frequency ``c / T`` divided by k. The token totals are checked (an expert
    is picked at most once per token), so a store mixing up counts is caught here.
    """
    c = as_finite(topk_counts, name, ndim=2)
    t = as_finite(token_totals, f"{name} token totals", ndim=1)
    if t.shape[0] != c.shape[0]:
        raise ValueError(f"{name}: {c.shape[0]} layers of counts but {t.shape[0]} token totals")
    if np.any(t <= 0):
        raise ValueError(f"{name}: token totals must be positive, got {t}")
    if np.any(c < 0) or np.any(c > t[:, None]):
        raise ValueError(f"{name}: counts must lie in [0, token total] (an expert is picked at most once a token)")
    return as_distribution(c, name, warn=False)


def aggregate_divergence(topk_counts: Mapping[str, np.ndarray], token_totals: Mapping[str, np.ndarray],
                         pivot: str = "eng_Latn", metric: str = "entropy_normalized_js") -> dict[str, np.ndarray]:
    """``{language: [layers]}``: divergence of each language's aggregate routing from the pivot's.

    ``topk_counts``: ``{language: [layers, experts]}``; ``token_totals``: ``{language: [layers]}``.
    """
    check_pivot(topk_counts, pivot)
    check_consistent(topk_counts, "top-k counts", "[layers, experts]", 2)
    missing = set(topk_counts) - set(token_totals)
    if missing:
        raise KeyError(f"token totals missing for languages {sorted(missing)}")
    dist = {l: aggregate_distribution(c, token_totals[l], f"{l} top-k counts") for l, c in topk_counts.items()}
    fn = get_divergence(metric)
    return {l: fn(dist[pivot], d) for l, d in dist.items() if l != pivot}


def split_half_baseline(seq_dists, metric: str = "entropy_normalized_js", mode: str = "pairs",
                        n_repeats: int = 10, seed: int = 0, weights=None,
                        return_repeats: bool = False) -> np.ndarray:
    """Same-language noise floor ``[layers]``: divergence between two random halves of the sequences.

    ``seq_dists``: ``[sequences, layers, experts]`` of one language. ``mode``:

    * ``"pairs"``: the j-th sequence of half A against the j-th of half B, averaged: the per-pair
      estimator of ``pivot_divergence`` applied to unaligned sequences of one language. A
      cross-language curve below it means aligned translations route more alike than two
      different sentences of one language.
    * ``"means"``: the mean distribution of half A against that of half B (weighted by ``weights``
      ``[sequences]``, e.g. token counts, which reproduces the aggregate path on top-k frequencies).

    Averaged over ``n_repeats`` seeded splits (``[n_repeats, layers]`` with ``return_repeats``).
    """
    d = as_distribution(seq_dists, "split-half distributions")
    if d.ndim != 3:
        raise ValueError(f"split_half_baseline: expected [sequences, layers, experts], got {d.shape}")
    n = d.shape[0]
    if n < 2:
        raise ValueError(f"split_half_baseline: needs at least 2 sequences, got {n}")
    if mode not in ("pairs", "means"):
        raise ValueError(f"split_half_baseline: mode must be 'pairs' or 'means', got {mode!r}")
    w = np.ones(n) if weights is None else as_finite(weights, "split-half weights", ndim=1)
    if w.shape[0] != n or np.any(w <= 0):
        raise ValueError(f"split_half_baseline: weights must be {n} positive numbers")
    fn = get_divergence(metric)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_repeats):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2: 2 * (n // 2)]
        if mode == "pairs":
            out.append(fn(d[a], d[b]).mean(0))
        else:
            ma = np.einsum("n,nle->le", w[a], d[a]) / w[a].sum()
            mb = np.einsum("n,nle->le", w[b], d[b]) / w[b].sum()
            out.append(fn(ma, mb))
    out = np.stack(out)
    return out if return_repeats else out.mean(0)


def detect_middle_band(curve, threshold: float = 0.5, override=None) -> tuple[int, int]:
    """The middle band ``(start, end)`` (0-indexed MoE-layer positions, inclusive).

    ``curve``: divergence ``[layers]``, or ``{language: [layers]}`` (averaged over languages). The
    band is the longest contiguous run of layers whose divergence is at most
    ``min + threshold * (max - min)`` (ties: the lower mean), so a lone low first layer (Phi-3.5's
    anomaly) does not capture it. ``override`` (start, end) is checked and returned as is.
    """
    if isinstance(curve, Mapping):
        check_consistent(curve, "divergence curves", "[layers]", 1)
        curve = np.mean([np.asarray(v, np.float64) for v in curve.values()], axis=0)
    c = as_finite(curve, "divergence curve", ndim=1)
    if c.size == 0:
        raise ValueError("detect_middle_band: empty curve")
    if override is not None:
        return normalize_band(override, c.size, "middle band override")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"detect_middle_band: threshold must be in [0, 1], got {threshold}")
    low = c <= c.min() + threshold * (c.max() - c.min())
    best = None  # (length, -mean, start, end)
    start = None
    for i, flag in enumerate(list(low) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            key = (i - start, -c[start:i].mean(), start, i - 1)
            best = key if best is None or key[:2] > best[:2] else best
            start = None
    return int(best[2]), int(best[3])

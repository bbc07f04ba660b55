"""Cross-lingual alignment of hidden representations, per layer: parallel-sentence similarity and retrieval.

Each language holds one pooled hidden state per parallel sentence and layer (``[layers, n, d]``,
row i of every language the same sentence). Per layer:

- **similarity**: the mean over sentences of cos(pivot_i, lang_i) after per-language mean-centring
  (each language's mean vector over its sentences subtracted first: the offset every sentence of a
  language shares says which language it is, not what it means);
- **retrieval**: the share of sentences whose nearest neighbour by cosine among all n candidates of
  the other language is their own translation, pivot -> language and language -> pivot.

Routing alignment and representation alignment are then set side by side against accuracy:
each one's correlation with accuracy, and the partial correlation of each given the other.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
from scipy import stats

from moe_jax.analysis.correlation import MIN_LANGUAGES, correlate
from moe_jax.analysis.validate import as_finite


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows ``[..., n, d]`` mean-centred over n, then scaled to unit norm (a zero row stays zero)."""
    x = x - x.mean(-2, keepdims=True)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _pair(pivot, other, names) -> tuple[np.ndarray, np.ndarray]:
    p = as_finite(pivot, names[0], ndim=3).astype(np.float64)
    o = as_finite(other, names[1], ndim=3).astype(np.float64)
    if p.shape != o.shape:
        raise ValueError(f"{names[0]} has shape {p.shape} but {names[1]} {o.shape}: "
                         "both must be [layers, parallel sentences, dim]")
    if p.shape[1] < 2:
        raise ValueError(f"alignment needs at least 2 parallel sentences, got {p.shape[1]}")
    return _unit_rows(p), _unit_rows(o)


def similarity(pivot, other, names=("pivot", "language")) -> np.ndarray:
    """``[layers]``: mean cosine of parallel sentences after per-language mean-centring, of ``pivot`` and
    ``other`` ``[layers, n, d]`` (row i of both the same sentence)."""
    p, o = _pair(pivot, other, names)
    return (p * o).sum(-1).mean(-1)


def retrieval(pivot, other, names=("pivot", "language")) -> tuple[np.ndarray, np.ndarray]:
    """``(pivot -> other, other -> pivot)``, each ``[layers]``: the share of sentences whose nearest
    neighbour by cosine (after mean-centring) among the other side's n sentences is their translation.
    Ties go to the lowest index (``argmax``), so a tie counts as a hit only for the first candidate."""
    p, o = _pair(pivot, other, names)
    cos = np.einsum("lid,ljd->lij", p, o)  # [layers, n pivot, n other]
    hits = np.arange(p.shape[1])
    return (cos.argmax(-1) == hits).mean(-1), (cos.argmax(-2) == hits).mean(-1)


def alignment_curves(pooled: Mapping[str, np.ndarray], pivot: str) -> dict[str, dict[str, np.ndarray]]:
    """``{language: {"similarity", "retrieval_from_pivot", "retrieval_to_pivot"}: [layers]}`` for every
    language of ``pooled`` (``{language: [layers, n, d]}``) but the pivot."""
    if pivot not in pooled:
        raise ValueError(f"pivot {pivot!r} has no hidden states; languages: {sorted(pooled)}")
    out = {}
    for lang, states in pooled.items():
        if lang == pivot:
            continue
        names = (f"hidden states of {pivot}", f"hidden states of {lang}")
        fwd, back = retrieval(pooled[pivot], states, names)
        out[lang] = {"similarity": similarity(pooled[pivot], states, names), "retrieval_from_pivot": fwd,
                     "retrieval_to_pivot": back}
    return out


@dataclasses.dataclass(frozen=True)
class PartialCorrelation:
    """Pearson correlation of x and y with z held fixed (of their residuals after a linear fit on z)."""
    r: float
    p: float  # two-sided, t distribution with n - 3 degrees of freedom
    ci_low: float
    ci_high: float
    n: int
    n_boot: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _residual_r(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Row-wise partial r of ``[B, n]`` triples; NaN where undefined."""
    def resid(v):
        zc, vc = z - z.mean(1, keepdims=True), v - v.mean(1, keepdims=True)
        denom = (zc * zc).sum(1, keepdims=True)
        beta = np.divide((zc * vc).sum(1, keepdims=True), denom, out=np.zeros_like(denom), where=denom > 0)
        return vc - beta * zc

    rx, ry = resid(x), resid(y)
    sx, sy = np.sqrt((rx ** 2).sum(1)), np.sqrt((ry ** 2).sum(1))
    ok = (sx > 1e-12 * (1 + np.abs(x).max(1))) & (sy > 1e-12 * (1 + np.abs(y).max(1)))
    return np.clip(np.divide((rx * ry).sum(1), sx * sy, out=np.full(len(x), np.nan), where=ok), -1, 1)


def partial_correlation(x, y, z, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> PartialCorrelation:
    """Partial Pearson correlation of ``x`` and ``y`` given ``z`` (each ``[n]``, n >= 4), with a seeded
    percentile bootstrap interval over the n points."""
    x, y, z = (as_finite(v, name, ndim=1).astype(np.float64) for v, name in ((x, "x"), (y, "y"), (z, "z")))
    if not x.shape == y.shape == z.shape:
        raise ValueError(f"x, y and z must have the same length, got {x.size}, {y.size}, {z.size}")
    n = x.size
    if n < MIN_LANGUAGES + 1:
        raise ValueError(f"a partial correlation needs at least {MIN_LANGUAGES + 1} languages, got {n}")
    r = float(_residual_r(x[None], y[None], z[None])[0])
    t = r * np.sqrt((n - 3) / max(1 - r * r, 1e-300))
    p = float(2 * stats.t.sf(abs(t), n - 3)) if np.isfinite(r) else np.nan
    idx = np.random.default_rng(seed).integers(0, n, (max(n_boot, 0), n))
    rb = _residual_r(x[idx], y[idx], z[idx]) if n_boot > 0 else np.empty(0)
    rb = rb[np.isfinite(rb)]
    lo, hi = np.quantile(rb, [(1 - ci) / 2, (1 + ci) / 2]) if rb.size else (np.nan, np.nan)
    return PartialCorrelation(r, p, float(lo), float(hi), n, int(rb.size))


def alignment_accuracy(routing: Mapping[str, float], representation: Mapping[str, float],
                       accuracy: Mapping[str, float], n_boot: int = 1000, seed: int = 0) -> dict:
    """Which alignment predicts accuracy: over the languages in all three maps (middle-band values, one
    per language), each alignment's correlation with accuracy (``correlation.correlate``) and the
    partial correlation of each with accuracy given the other."""
    langs = [l for l in routing if l in representation and l in accuracy]
    if len(langs) < MIN_LANGUAGES + 1:
        raise ValueError(f"comparing the two alignments needs at least {MIN_LANGUAGES + 1} languages with a "
                         f"routing alignment, a representation alignment and an accuracy; have {langs}")
    rt, rp, acc = (np.array([float(m[l]) for l in langs]) for m in (routing, representation, accuracy))
    kw = dict(n_boot=n_boot, seed=seed)
    return {"languages": langs,
            "routing": correlate(rt, acc, names=("routing alignment", "accuracy"), **kw),
            "representation": correlate(rp, acc, names=("representation alignment", "accuracy"), **kw),
            "routing_given_representation": partial_correlation(rt, acc, rp, **kw),
            "representation_given_routing": partial_correlation(rp, acc, rt, **kw)}

"""Paired significance of an accuracy change: steered and baseline runs score the SAME items.

* Exact McNemar test: of the discordant items, ``b`` are right only when steered and ``c`` right
  only at baseline; the two-sided p-value is the binomial test of ``b`` successes in ``b + c``
  trials at 1/2 (1 when there is no discordant item).
* Paired bootstrap of the accuracy difference: resample items with replacement, the SAME indices
  for both runs, and take the percentile interval of ``mean(steered) - mean(baseline)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import stats


class PairedResult(NamedTuple):
    n: int
    baseline: float  # accuracy
    steered: float
    delta: float  # steered - baseline
    ci_low: float  # paired bootstrap percentile interval of delta
    ci_high: float
    b: int  # right only when steered
    c: int  # right only at baseline
    p_mcnemar: float


def _pair(baseline, steered) -> tuple[np.ndarray, np.ndarray]:
    a, s = np.asarray(baseline, bool), np.asarray(steered, bool)
    if a.shape != s.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-D arrays of the same items, got {a.shape} and {s.shape}")
    if a.size == 0:
        raise ValueError("paired scores: no items")
    return a, s


def mcnemar_exact(baseline, steered) -> tuple[int, int, float]:
    """``(b, c, p)``: discordant counts and the exact two-sided McNemar p-value."""
    a, s = _pair(baseline, steered)
    b, c = int(np.sum(s & ~a)), int(np.sum(a & ~s))
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return b, c, p


def paired_bootstrap(baseline, steered, *, n_boot: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``mean(steered) - mean(baseline)`` over item resamples."""
    a, s = _pair(baseline, steered)
    d = s.astype(np.float64) - a.astype(np.float64)
    idx = np.random.default_rng(seed).integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(-1)
    alpha = (1.0 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def paired_comparison(baseline, steered, *, n_boot: int = 10_000, confidence: float = 0.95,
                      seed: int = 0) -> PairedResult:
    """Accuracy change of ``steered`` over ``baseline`` (per-item correctness, same items, same order)."""
    a, s = _pair(baseline, steered)
    b, c, p = mcnemar_exact(a, s)
    lo, hi = paired_bootstrap(a, s, n_boot=n_boot, confidence=confidence, seed=seed)
    return PairedResult(int(a.size), float(a.mean()), float(s.mean()), float(s.mean() - a.mean()), lo, hi, b, c, p)

"""Correlation of routing divergence with per-language accuracy: Pearson and Spearman.

Each statistic comes with a two-sided p-value and a seeded percentile bootstrap confidence interval
over languages. Pearson's p-value is SciPy's (exact under normality); Spearman's is an exact
permutation p-value for up to ``EXACT_SPEARMAN_MAX_N`` languages (SciPy's t approximation gives
absurdly small values for a perfect rank correlation of 5 languages) and SciPy's beyond. Fewer than 3 languages or a constant variable is an error, not
a silent NaN; a single layer whose divergence is constant across languages gets NaN with a note.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping

import numpy as np
from scipy import stats

from moe_jax.analysis.validate import as_finite, normalize_band

MIN_LANGUAGES = 3
EXACT_SPEARMAN_MAX_N = 8  # 8! = 40320 permutations


@dataclasses.dataclass(frozen=True)
class Correlation:
    statistic: str  # "pearson" | "spearman"
    r: float
    p: float
    ci_low: float
    ci_high: float
    n: int  # languages
    n_boot: int  # bootstrap resamples with a defined statistic (both variables non-constant)
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of each row pair ``[B, n]`` and whether it is defined (neither row constant)."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    sx, sy = np.sqrt((xc ** 2).sum(1)), np.sqrt((yc ** 2).sum(1))
    ok = (sx > 1e-12 * (1 + np.abs(x).max(1))) & (sy > 1e-12 * (1 + np.abs(y).max(1)))
    r = np.divide((xc * yc).sum(1), sx * sy, out=np.full(len(x), np.nan), where=ok)
    return np.clip(r, -1, 1), ok


def spearman_pvalue(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p-value of Spearman's rho: exact over all permutations for small n, else SciPy's."""
    n = len(x)
    if n > EXACT_SPEARMAN_MAX_N:
        return float(stats.spearmanr(x, y)[1])
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    perms = np.array(list(itertools.permutations(range(n))))
    r_obs = _rowwise_pearson(rx[None], ry[None])[0][0]
    r_perm = _rowwise_pearson(np.broadcast_to(rx, perms.shape), ry[perms])[0]
    return float(np.mean(np.abs(r_perm) >= abs(r_obs) - 1e-12))


def _is_constant(v: np.ndarray) -> bool:
    return bool(np.ptp(v) <= 1e-12 * (1 + np.abs(v).max()))


def correlate(x, y, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              names: tuple[str, str] = ("x", "y")) -> dict[str, Correlation]:
    """Pearson and Spearman correlation of ``x [n]`` and ``y [n]`` with bootstrap CIs.

    Returns ``{"pearson": Correlation, "spearman": Correlation}``. Raises ``ValueError`` for fewer
    than 3 points, non-finite values or a constant variable (named by ``names``).
    """
    x, y = as_finite(x, names[0], ndim=1), as_finite(y, names[1], ndim=1)
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} has {x.size} values but {names[1]} has {y.size}")
    if x.size < MIN_LANGUAGES:
        raise ValueError(f"a correlation needs at least {MIN_LANGUAGES} languages, got {x.size}")
    for v, name in ((x, names[0]), (y, names[1])):
        if _is_constant(v):
            raise ValueError(f"{name} is constant across languages; the correlation is undefined")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    idx = np.random.default_rng(seed).integers(0, x.size, (max(n_boot, 0), x.size))
    xb, yb = x[idx], y[idx]
    out = {}
    for name, point, bx, by in (
            ("pearson", stats.pearsonr(x, y), xb, yb),
            ("spearman", (stats.spearmanr(x, y)[0], spearman_pvalue(x, y)),
             stats.rankdata(xb, axis=1), stats.rankdata(yb, axis=1))):
        r_b, ok = _rowwise_pearson(bx, by) if n_boot > 0 else (np.empty(0), np.empty(0, bool))
        lo, hi = (np.quantile(r_b[ok], [(1 - ci) / 2, (1 + ci) / 2]) if ok.any() else (np.nan, np.nan))
        note = "" if ok.any() else "no bootstrap resample had two non-constant variables"
        out[name] = Correlation(name, float(point[0]), float(point[1]), float(lo), float(hi), int(x.size),
                                int(ok.sum()), note)
    return out


def _undefined(n: int, note: str) -> dict[str, Correlation]:
    return {s: Correlation(s, np.nan, np.nan, np.nan, np.nan, n, 0, note) for s in ("pearson", "spearman")}


def divergence_accuracy_correlation(divergence: Mapping[str, np.ndarray], accuracy: Mapping[str, float],
                                    band=None, n_boot: int = 1000, seed: int = 0,
                                    ci: float = 0.95) -> dict:
    """Correlation of divergence from the pivot with accuracy, per layer and over the middle band.

    ``divergence``: ``{language: [layers]}``; ``accuracy``: ``{language: float}``; the languages in
    both are used (at least 3). ``band`` (start, end), inclusive MoE-layer positions: the band's
    mean divergence is correlated too. Returns ``{"languages", "accuracy" [n], "per_layer":
    {stat: [Correlation] * layers}, "band": {stat: Correlation} or None, "band_range",
    "band_divergence" [n]}``.
    """
    langs = [l for l in divergence if l in accuracy]
    if len(langs) < MIN_LANGUAGES:
        raise ValueError(
            f"a correlation needs at least {MIN_LANGUAGES} languages with both a divergence and an "
            f"accuracy; have {langs} (divergence: {sorted(divergence)}, accuracy: {sorted(accuracy)})")
    div = np.stack([as_finite(divergence[l], f"divergence of {l}", ndim=1) for l in langs])  # [n, L]
    if len({d.shape for d in div}) != 1:
        raise ValueError("divergence curves have different numbers of layers")
    acc = np.array([float(accuracy[l]) for l in langs])
    for l, a in zip(langs, acc):
        if not np.isfinite(a):
            raise ValueError(f"accuracy of {l!r} is not finite ({a})")
    if _is_constant(acc):
        raise ValueError(f"accuracy is constant across {langs}; the correlation is undefined")
    kw = dict(n_boot=n_boot, seed=seed, ci=ci, names=("divergence", "accuracy"))
    per_layer = {"pearson": [], "spearman": []}
    for l in range(div.shape[1]):
        if _is_constant(div[:, l]):
            res = _undefined(len(langs), "divergence is constant across languages at this layer")
        else:
            res = correlate(div[:, l], acc, **kw)
        for s in per_layer:
            per_layer[s].append(res[s])
    out = {"languages": langs, "accuracy": acc, "per_layer": per_layer, "band": None,
           "band_range": None, "band_divergence": None}
    if band is not None:
        s, e = normalize_band(band, div.shape[1], "middle band")
        bd = div[:, s: e + 1].mean(1)
        out.update(band=(_undefined(len(langs), "band divergence is constant across languages")
                         if _is_constant(bd) else correlate(bd, acc, **kw)),
                   band_range=(s, e), band_divergence=bd)
    return out

"""Input checks shared by the analysis functions: clear errors that name the culprit.

Distributions whose rows do not sum to 1 are normalised with a ``DistributionWarning``; negative,
NaN or all-zero rows are refused. Per-language collections must agree on their layer and expert
axes, and a pivot language must be present.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

SUM_ATOL = 1e-3  # float32 softmax means sum to 1 within ~1e-6; anything beyond this is not rounding


class DistributionWarning(UserWarning):
    """An input distribution did not sum to 1 and was normalised."""


def as_distribution(p, name: str = "p", warn: bool = True) -> np.ndarray:
    """``p [..., experts]`` as float64 rows that sum to 1.

    Rows off by more than rounding are normalised with a ``DistributionWarning`` (silently when
    ``warn=False``, for callers that pass unnormalised counts on purpose).
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] == 0:
        raise ValueError(f"{name}: expected shape [..., experts] with at least one expert, got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name}: contains NaN or inf")
    if np.any(p < 0):
        raise ValueError(f"{name}: has negative entries (min {p.min():.3g}); not a distribution")
    s = p.sum(-1, keepdims=True)
    if np.any(s <= 0):
        raise ValueError(f"{name}: has rows that sum to 0; not a distribution")
    dev = float(np.abs(s - 1.0).max())
    if warn and dev > SUM_ATOL:
        warnings.warn(f"{name}: rows sum to values in [{s.min():.4g}, {s.max():.4g}], not 1; normalising",
                      DistributionWarning, stacklevel=3)
    return p / s


def as_finite(x, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` as a finite float64 array (of ``ndim`` dimensions when given)."""
    x = np.asarray(x, dtype=np.float64)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def check_consistent(arrays: Mapping[str, np.ndarray], what: str, axes: str, trailing: int) -> tuple[int, ...]:
    """All arrays agree on their last ``trailing`` dims (e.g. layers, experts); returns those dims.

    ``what`` names the quantity and ``axes`` the expected shape, both for the error message.
    """
    if not arrays:
        raise ValueError(f"{what}: no languages given")
    ref_lang, ref = next(iter(arrays.items()))
    ref_shape = np.shape(ref)[-trailing:]
    for lang, a in arrays.items():
        shape = np.shape(a)
        if len(shape) < trailing or shape[-trailing:] != ref_shape:
            raise ValueError(f"{what}: language {lang!r} has shape {shape}, but {ref_lang!r} has "
                             f"{np.shape(ref)}; expected {axes} with the same trailing dims {ref_shape}")
    return tuple(ref_shape)


def check_pivot(languages, pivot: str) -> None:
    langs = list(languages)
    if pivot not in langs:
        raise KeyError(f"pivot language {pivot!r} is missing from the data (languages: {sorted(langs)})")


def normalize_band(band, n_layers: int, name: str = "band") -> tuple[int, int]:
    """``(start, end)``: 0-indexed MoE-layer positions, both inclusive, checked against ``n_layers``."""
    try:
        start, end = (int(v) for v in band)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (start, end) MoE-layer positions, got {band!r}") from None
    if not 0 <= start <= end < n_layers:
        raise ValueError(f"{name}: ({start}, {end}) is not a range within 0..{n_layers - 1} (inclusive)")
    return start, end

"""Expert specialisation: task experts, language experts, shared vs language-exclusive experts.

Formulas and sources: docs/methods.md#expert-specialisation. Frequencies are per-sequence relative
activation frequencies ``a_i[e] / L_i`` (the store's
``seq_topk_freq``, ``[sequences, layers, experts]``, each in [0, 1]) or language totals ``c / T``.

* ``specialization``: ``Delta_e = mean_i freq_i(e | target) - mean_i freq_i(e | reference)``
  in [-1, 1]; expert e at layer l is specialised when ``Delta > tau``. Task experts: task data
  against generic data (English); language experts: a language against the pivot.
* ``shared_exclusive_experts``: keep each language's top-k experts per layer, share each
  expert's mass across the language pool; exclusive to x when x's share > thr, shared when used
  by some language's top-k and every share < thr (strict on both sides: an expert whose largest
  share equals thr exactly is neither). The labels depend on the pool.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from moe_jax.analysis.validate import as_finite, check_consistent, check_pivot


@dataclasses.dataclass(frozen=True)
class ExpertSets:
    """Specialised experts per layer: ``scores [layers, experts]`` and ``mask = scores > tau``."""

    scores: np.ndarray
    mask: np.ndarray
    tau: float

    @property
    def experts(self) -> list[np.ndarray]:
        """Expert indices per layer (a list of ``layers`` int arrays)."""
        return [np.flatnonzero(m) for m in self.mask]

    def counts(self) -> np.ndarray:
        """Number of specialised experts per layer ``[layers]``."""
        return self.mask.sum(-1)


def _mean_freq(freq, name: str) -> np.ndarray:
    f = as_finite(freq, name)
    if f.ndim == 2:  # already a mean / aggregate frequency [layers, experts]
        f = f[None]
    if f.ndim != 3 or f.shape[0] == 0:
        raise ValueError(f"{name}: expected [sequences, layers, experts] or [layers, experts], got {f.shape}")
    if np.any(f < 0) or np.any(f > 1 + 1e-6):
        raise ValueError(f"{name}: relative activation frequencies must lie in [0, 1]")
    return f.mean(0)


def specialization(target_freq, reference_freq, tau: float = 0.3) -> ExpertSets:
    """Specialisation: ``Delta [layers, experts]`` of target against reference data, experts with ``Delta > tau``.

    Both inputs ``[sequences, layers, experts]`` (or already averaged ``[layers, experts]``).
    """
    t, r = _mean_freq(target_freq, "target frequencies"), _mean_freq(reference_freq, "reference frequencies")
    if t.shape != r.shape:
        raise ValueError(f"target frequencies have [layers, experts] = {t.shape}, reference {r.shape}")
    delta = t - r
    return ExpertSets(scores=delta, mask=delta > tau, tau=float(tau))


def task_experts(task_freq, generic_freq, tau: float = 0.3) -> ExpertSets:
    """Task experts: task data (e.g. English math) against generic data (English FLORES)."""
    return specialization(task_freq, generic_freq, tau)


def language_experts(freqs: Mapping[str, np.ndarray], pivot: str = "eng_Latn",
                     tau: float = 0.3) -> dict[str, ExpertSets]:
    """Language experts ``{language: ExpertSets}``: each non-pivot language against the pivot.

    ``freqs``: ``{language: [sequences, layers, experts]}`` relative activation frequencies.
    """
    check_pivot(freqs, pivot)
    check_consistent(freqs, "activation frequencies", "[sequences, layers, experts]", 2)
    return {l: specialization(f, freqs[pivot], tau) for l, f in freqs.items() if l != pivot}


@dataclasses.dataclass(frozen=True)
class SharedExclusive:
    """Shared / language-exclusive experts of a pool of languages.

    ``share [languages, layers, experts]``: each language's top-k frequency over the pool's sum;
    ``in_topk`` marks the kept (non-zero) experts; ``exclusive = share > thr``; ``shared [layers,
    experts]``: in some language's top-k and every share ``< thr``. A tie (largest share ``== thr``)
    is neither exclusive nor shared.
    """

    languages: tuple[str, ...]
    share: np.ndarray
    in_topk: np.ndarray
    exclusive_mask: np.ndarray
    shared_mask: np.ndarray
    top_k: int
    thr: float

    def exclusive(self, lang: str) -> list[np.ndarray]:
        """Experts exclusive to ``lang``, per layer."""
        return [np.flatnonzero(m) for m in self.exclusive_mask[self.languages.index(lang)]]

    def shared(self) -> list[np.ndarray]:
        """Shared experts, per layer."""
        return [np.flatnonzero(m) for m in self.shared_mask]


def shared_exclusive_experts(freqs: Mapping[str, np.ndarray], top_k: int = 16,
                             thr: float = 0.5) -> SharedExclusive:
    """Shared vs language-exclusive experts from ``{language: [layers, experts]}`` frequencies.

    ``top_k`` is clipped to the number of experts; experts with zero frequency never count as kept;
    experts tied at the top-k cut keep the lowest expert id (a stable sort), deterministically.
    With ``thr < 0.5`` an expert may be exclusive to two languages (as the definition says).
    """
    check_consistent(freqs, "activation frequencies", "[layers, experts]", 2)
    if not 0 < thr <= 1:
        raise ValueError(f"shared/exclusive threshold must be in (0, 1], got {thr}")
    langs = tuple(freqs)
    f = np.stack([as_finite(freqs[l], f"{l} frequencies", ndim=2) for l in langs])  # [X, L, E]
    if np.any(f < 0):
        raise ValueError("activation frequencies must be non-negative")
    k = int(min(max(top_k, 1), f.shape[-1]))
    order = np.argsort(-f, axis=-1, kind="stable")[..., :k]
    keep = np.zeros(f.shape, bool)
    np.put_along_axis(keep, order, True, axis=-1)
    keep &= f > 0
    kept = np.where(keep, f, 0.0)
    total = kept.sum(0, keepdims=True)
    share = np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)
    exclusive = share > thr
    shared = keep.any(0) & (share < thr).all(0)  # strict on both sides: a share == thr is neither
    return SharedExclusive(langs, share, keep, exclusive, shared, k, float(thr))


def expert_overlap(a, b) -> dict[str, np.ndarray | list]:
    """Overlap of two per-layer expert sets given as masks ``[layers, experts]`` (or ``ExpertSets``).

    Returns ``n_a, n_b, n_both [layers]``, ``jaccard [layers]`` (0 where both are empty) and
    ``both`` (the shared expert indices per layer).
    """
    ma = np.asarray(a.mask if isinstance(a, ExpertSets) else a, bool)
    mb = np.asarray(b.mask if isinstance(b, ExpertSets) else b, bool)
    if ma.shape != mb.shape or ma.ndim != 2:
        raise ValueError(f"expert_overlap: masks must both be [layers, experts], got {ma.shape} and {mb.shape}")
    both, union = ma & mb, (ma | mb).sum(-1)
    return {"n_a": ma.sum(-1), "n_b": mb.sum(-1), "n_both": both.sum(-1),
            "jaccard": np.divide(both.sum(-1), union, out=np.zeros(len(union)), where=union > 0),
            "both": [np.flatnonzero(m) for m in both]}

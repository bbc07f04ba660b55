"""Steering targets: which (MoE layer, expert) pairs a router intervention acts on, chosen from
routing statistics (NumPy in, NumPy out).

Every rule returns a ``Targets``: a boolean ``mask [moe_layers, experts]``, the rule's ``scores``
(Delta or share) and per-target ``weights``, restricted to a band of decoder layers. Rules:

* ``task_targets``: experts a task uses more than generic text,
  ``Delta[l, e] = mean_i f_i(e | task) - mean_i f_i(e | generic) > tau`` (f: per-sequence top-k
  activation frequency), inside the band.
* ``language_targets``: the same with a language's text against the pivot language's (the control
  that hurts in the multilingual-routing study).
* ``shared_targets`` / ``exclusive_targets``: per language keep the top-k experts by frequency, share
  each expert's mass across the languages, ``p_x = f_x / sum_x' f_x'``; shared experts (every share
  ``< thr``) weighted by the first (dominant) language's share, or experts exclusive to the given
  languages, e.g. for masking: the SUM of their shares ``> thr`` (the published rule), or, as an
  option, any one of their shares ``> thr``. Top-k ties keep the lowest expert id.
* controls: ``random_targets`` (the same number of random experts per layer, seeded) and
  ``shifted_band`` (the same rule in an early or late band of the same width).

Bands are inclusive pairs of decoder-layer numbers (0-indexed, as ``ModelConfig.moe_layer_ids``);
dense layers inside a band are skipped. An empty selection is an error that says why.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from moe_jax.analysis.experts import shared_exclusive_experts, specialization


class EmptySelectionError(ValueError):
    """A target rule selected no expert."""


@dataclasses.dataclass(frozen=True)
class Targets:
    """Selected experts of one rule: ``mask``, ``scores`` and ``weights``, all ``[moe_layers, experts]``."""

    mask: np.ndarray  # bool
    scores: np.ndarray  # float64: the rule's statistic (Delta, share)
    weights: np.ndarray  # float64: per-target weight (1, or the dominant language's share); 0 off target
    moe_layer_ids: tuple[int, ...]  # decoder-layer index of each row
    rule: str
    params: Mapping[str, Any]  # what the selection depends on (tau, band, thr, seed, languages, ...)

    def counts(self) -> np.ndarray:
        """Targets per MoE layer ``[moe_layers]``."""
        return self.mask.sum(-1)

    def pairs(self) -> list[tuple[int, int, float]]:
        """``(decoder layer, expert, weight)`` of every target, layer-major."""
        return [(self.moe_layer_ids[l], int(e), float(self.weights[l, e])) for l, e in zip(*np.nonzero(self.mask))]


def band_rows(moe_layer_ids: Sequence[int], band: tuple[int, int] | None) -> np.ndarray:
    """``[moe_layers]`` bool: MoE layers whose decoder-layer number lies in ``band`` (inclusive).

    ``None`` selects every MoE layer."""
    ids = np.asarray(tuple(moe_layer_ids), np.int64)
    if band is None:
        return np.ones(ids.shape, bool)
    lo, hi = (int(b) for b in band)
    if lo > hi:
        raise ValueError(f"band {band}: first layer {lo} is after last layer {hi}")
    rows = (ids >= lo) & (ids <= hi)
    if not rows.any():
        raise ValueError(f"band {band} holds no MoE layer; MoE layers are {ids.tolist()}")
    return rows


def band_from_analysis(moe_band: tuple[int, int], moe_layer_ids: Sequence[int]) -> tuple[int, int]:
    """The analysis' middle band (inclusive MoE-layer positions) in decoder-layer numbers."""
    ids = tuple(moe_layer_ids)
    lo, hi = (int(b) for b in moe_band)
    if not 0 <= lo <= hi < len(ids):
        raise ValueError(f"middle band {moe_band} is outside the {len(ids)} MoE layers")
    return ids[lo], ids[hi]


def _restrict(mask: np.ndarray, scores: np.ndarray, weights: np.ndarray, moe_layer_ids: Sequence[int],
              band, rule: str, params: dict, why_empty: str) -> Targets:
    rows = band_rows(moe_layer_ids, band)
    if mask.shape[0] != rows.size:
        raise ValueError(f"statistics have {mask.shape[0]} layers but {rows.size} MoE layer ids were given")
    mask = mask & rows[:, None]
    if not mask.any():
        raise EmptySelectionError(f"{rule}: no expert selected in band {band}: {why_empty}")
    return Targets(mask, scores, np.where(mask, weights, 0.0), tuple(int(i) for i in moe_layer_ids), rule,
                   {**params, "band": None if band is None else tuple(int(b) for b in band)})


def _delta_targets(target_freq, reference_freq, moe_layer_ids, band, tau: float, rule: str,
                   params: dict) -> Targets:
    if not 0 <= tau < 1:  # Delta is a difference of two shares in [0, 1]: it lies in [-1, 1]
        raise ValueError(f"tau is {tau}: the {rule} targets are the experts with Delta > tau, and Delta (a difference "
                         "of two routing shares) lies in [-1, 1], so tau must be in [0, 1); a negative tau would "
                         "select nearly every expert. Give steer.taus values such as 0.1 or 0.3")
    sets = specialization(target_freq, reference_freq, tau)
    rows = band_rows(moe_layer_ids, band)
    best = float(sets.scores[rows].max()) if sets.scores.shape[0] == rows.size else float("nan")
    return _restrict(sets.mask, sets.scores, np.ones_like(sets.scores), moe_layer_ids, band, rule,
                     {**params, "tau": float(tau)}, f"the largest Delta there is {best:.4f}, tau is {tau}")


def task_targets(task_freq, generic_freq, moe_layer_ids: Sequence[int], band: tuple[int, int] | None,
                 tau: float = 0.3) -> Targets:
    """Task experts: ``Delta > tau`` of task data against generic data, inside ``band``.

    ``task_freq``, ``generic_freq``: per-sequence top-k frequencies ``[sequences, moe_layers, experts]``
    (a routing store's ``seq_topk_freq``) or their means ``[moe_layers, experts]``.
    """
    return _delta_targets(task_freq, generic_freq, moe_layer_ids, band, tau, "task", {})


def language_targets(lang_freq, pivot_freq, moe_layer_ids: Sequence[int], band: tuple[int, int] | None,
                     tau: float = 0.3, language: str = "", pivot: str = "eng_Latn") -> Targets:
    """Language experts: ``Delta > tau`` of a language's text against the pivot's, inside ``band``."""
    return _delta_targets(lang_freq, pivot_freq, moe_layer_ids, band, tau, "language",
                          {"language": language, "pivot": pivot})


def shared_targets(freqs: Mapping[str, np.ndarray], moe_layer_ids: Sequence[int],
                   band: tuple[int, int] | None, top_k: int = 20, thr: float = 0.7) -> Targets:
    """Experts shared by the languages of ``freqs`` (``{language: [moe_layers, experts]}`` frequencies,
    the dominant language FIRST); weight = the dominant language's share."""
    se = shared_exclusive_experts(freqs, top_k=top_k, thr=thr)
    dominant = se.share[0]
    langs = list(se.languages)
    return _restrict(se.shared_mask, dominant, dominant, moe_layer_ids, band, "shared",
                     {"languages": langs, "top_k": se.top_k, "thr": float(thr)},
                     f"no expert has every share below thr={thr} among {langs} (top_k={se.top_k})")


EXCLUSIVE_COMBINE = ("sum", "any")


def exclusive_targets(freqs: Mapping[str, np.ndarray], of: Sequence[str], moe_layer_ids: Sequence[int],
                      band: tuple[int, int] | None, top_k: int = 15, thr: float = 0.4,
                      combine: str = "sum") -> Targets:
    """Experts exclusive to the languages ``of`` within the pool ``freqs`` (``{language: [moe_layers,
    experts]}``): ``combine="sum"`` (published) where the sum of their shares ``> thr``; ``"any"``
    where any one of their shares ``> thr``. Scores: that sum, or the largest share."""
    if combine not in EXCLUSIVE_COMBINE:
        raise ValueError(f"exclusive_targets: combine {combine!r} is not one of {list(EXCLUSIVE_COMBINE)}")
    se = shared_exclusive_experts(freqs, top_k=top_k, thr=thr)
    unknown = [l for l in of if l not in se.languages]
    if unknown or not of:
        raise ValueError(f"exclusive_targets: languages {list(of) or '[]'} must be a non-empty subset "
                         f"of the pool {list(se.languages)}")
    rows = [se.languages.index(l) for l in of]
    share = se.share[rows].sum(0) if combine == "sum" else se.share[rows].max(0)
    mask = share > thr
    return _restrict(mask, share, np.ones_like(share), moe_layer_ids, band, "exclusive",
                     {"languages": list(se.languages), "of": list(of), "top_k": se.top_k, "thr": float(thr),
                      "combine": combine},
                     f"no expert of {list(of)} has a {'summed ' if combine == 'sum' else ''}share above "
                     f"thr={thr} (top_k={se.top_k})")


def random_targets(like: Targets, seed: int = 0, exclude_targets: bool = True) -> Targets:
    """Control: per layer, as many experts as ``like`` selects there, drawn uniformly (seeded),
    by default among the experts ``like`` does not select; weight 1."""
    rng = np.random.default_rng(seed)
    L, E = like.mask.shape
    mask = np.zeros((L, E), bool)
    for l, n in enumerate(like.counts()):
        pool = np.flatnonzero(~like.mask[l]) if exclude_targets else np.arange(E)
        if n > pool.size:
            raise EmptySelectionError(f"random control: layer {like.moe_layer_ids[l]} needs {n} experts "
                                      f"outside the {int(like.mask[l].sum())} targets, only {pool.size} exist")
        mask[l, rng.choice(pool, size=int(n), replace=False)] = True
    return Targets(mask, np.zeros((L, E)), mask.astype(np.float64), like.moe_layer_ids, "random",
                   {"like": like.rule, **like.params, "seed": int(seed), "exclude_targets": exclude_targets})


def cap_per_layer(targets: Targets, k: int) -> Targets:
    """At most ``k`` targets per layer: the highest-scoring ones (ties: the lower expert index).
    Hard steering uses it with the model's top-k, since forcing more than k experts derails the model."""
    if k < 1:
        raise ValueError(f"cap_per_layer: k must be >= 1, got {k}")
    if targets.counts().max(initial=0) <= k:
        return targets
    order = np.argsort(-np.where(targets.mask, targets.scores, -np.inf), axis=-1, kind="stable")[:, :k]
    keep = np.zeros_like(targets.mask)
    np.put_along_axis(keep, order, True, axis=-1)
    mask = targets.mask & keep
    return dataclasses.replace(targets, mask=mask, weights=np.where(mask, targets.weights, 0.0),
                               params={**targets.params, "max_per_layer": int(k)})


def shifted_band(band: tuple[int, int], moe_layer_ids: Sequence[int], where: str) -> tuple[int, int]:
    """Control band: as many MoE layers as ``band`` holds, at the start (``"early"``) or the end
    (``"late"``) of the model, in decoder-layer numbers."""
    ids = tuple(int(i) for i in moe_layer_ids)
    n = int(band_rows(ids, band).sum())
    if where == "early":
        return ids[0], ids[n - 1]
    if where == "late":
        return ids[-n], ids[-1]
    raise ValueError(f"shifted_band: where must be 'early' or 'late', got {where!r}")

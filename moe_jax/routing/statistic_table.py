"""The routing statistics that expert rules select from, and how a language's sequences are pooled
into one ``[layers, experts]`` value: one table shared by the analyze and steer stages.

Statistics (per token t, layer l, expert e; ``topk(t)`` the experts the token is sent to):

==============  ==================================================================  =================
name            per-token value                                                     store arrays
==============  ==================================================================  =================
``topk_freq``   ``1[e in topk(t)]`` (activation frequency)                          seq_topk_freq,
                                                                                    topk_counts
``gate_weight`` the routing weight the model gives e (0 off the top-k), as it       seq_gate_weight,
                routes (softmax-then-top-k models: not renormalised)                gate_weight_sums
``topk_weight`` ``softmax(z)`` kept on ``topk(t)`` and renormalised over it          seq_topk_weight
                ("total actual weight")
``mean_probs``  ``softmax(z)`` over all experts                                      seq_mean_probs
==============  ==================================================================  =================

Poolings of a language's N sequences (``L_i`` counted tokens of sequence i, ``m_i`` its token mean):

* ``token``: totals over all the language's tokens, ``sum_i L_i m_i / sum_i L_i`` (the language's
  counts over its token total, ``c / T``, for ``topk_freq``; its weight sums over ``T`` for
  ``gate_weight``: read from the language totals, exact).
* ``sequence``: ``mean_i m_i`` over the sequences with at least one counted token.

Each rule defaults to its study's choice (``RULE_DEFAULTS``; formulas and sources in
docs/methods.md#pooling).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from moe_jax.artifacts.routing_store import repair_hint


@dataclasses.dataclass(frozen=True)
class Statistic:
    seq_key: str  # [N, L, E] per-sequence token mean
    total_key: str | None  # [L, E] language total (token pooling reads it when present), or None
    distribution: bool  # rows sum to 1: usable as a routing distribution (divergences)


STATISTICS: dict[str, Statistic] = {
    "topk_freq": Statistic("seq_topk_freq", "topk_counts", False),
    "gate_weight": Statistic("seq_gate_weight", "gate_weight_sums", False),
    "topk_weight": Statistic("seq_topk_weight", None, True),
    "mean_probs": Statistic("seq_mean_probs", None, True),
}
POOLINGS = ("token", "sequence")
DISTRIBUTIONS = tuple(n for n, s in STATISTICS.items() if s.distribution)

# rule -> (statistic, pooling) as published: shared / exclusive experts pool tokens (c / T); the
# task-expert rule (and the language rule built like it) averages per-sequence frequencies
RULE_DEFAULTS: dict[str, tuple[str, str]] = {
    "shared": ("topk_freq", "token"),
    "exclusive": ("topk_freq", "token"),
    "task": ("topk_freq", "sequence"),
    "language": ("topk_freq", "sequence"),
}


class StatisticUnavailable(ValueError):
    """The store lacks an array the chosen statistic and pooling need (collected before it existed)."""


def resolve(rule: str, statistic: str = "", pooling: str = "", where: str = "") -> tuple[str, str]:
    """``(statistic, pooling)`` of ``rule``: the given ones, or the rule's published default for "";
    a ValueError naming the option (``where``, e.g. ``"steer"``) for an unknown one."""
    if rule not in RULE_DEFAULTS:
        raise ValueError(f"no statistic default for rule {rule!r}; rules: {sorted(RULE_DEFAULTS)}")
    prefix = f"{where}." if where else ""
    if statistic and statistic not in STATISTICS:
        raise ValueError(f"{prefix}statistic {statistic!r} is not one of {sorted(STATISTICS)}")
    if pooling and pooling not in POOLINGS:
        raise ValueError(f"{prefix}pooling {pooling!r} is not one of {list(POOLINGS)}")
    default = RULE_DEFAULTS[rule]
    return statistic or default[0], pooling or default[1]


def required_keys(statistic: str, pooling: str) -> tuple[str, ...]:
    s = STATISTICS[statistic]
    if pooling == "token" and s.total_key:
        return (s.total_key, "token_totals")
    return (s.seq_key, "seq_lengths")


def check_available(arrays: Mapping[str, np.ndarray], statistic: str, pooling: str, store: str, lang: str,
                    option: str) -> None:
    """Refuses language ``lang`` of ``store`` without the arrays of ``statistic`` x ``pooling``, naming the
    collect command (after deleting the store: a rerun keeps the languages it already holds) and the
    other choice (``option``, e.g. ``"steer.statistic / steer.pooling"``)."""
    missing = [k for k in required_keys(statistic, pooling) if k not in arrays]
    if missing:
        raise StatisticUnavailable(
            f"{store} ({lang}) has no {missing} (collected before it existed), needed for statistic {statistic!r} "
            f"with {pooling!r} pooling; delete {store}, then {repair_hint(store)}; or choose another {option}")


def pooled(arrays: Mapping[str, np.ndarray], statistic: str, pooling: str) -> np.ndarray:
    """``[layers, experts]`` float64: one language's ``statistic`` pooled over its sequences."""
    s = STATISTICS[statistic]
    if pooling == "token" and s.total_key:
        totals = np.asarray(arrays["token_totals"], np.float64)
        return np.asarray(arrays[s.total_key], np.float64) / np.maximum(totals, 1)[:, None]
    m = np.asarray(arrays[s.seq_key], np.float64)  # [N, L, E]
    lengths = np.asarray(arrays["seq_lengths"], np.float64)  # [N]
    if pooling == "token":
        return np.einsum("n,nle->le", lengths, m) / max(lengths.sum(), 1.0)
    if pooling == "sequence":
        keep = lengths > 0
        return m[keep].mean(0) if keep.any() else np.zeros(m.shape[1:])
    raise ValueError(f"pooling {pooling!r} is not one of {list(POOLINGS)}")

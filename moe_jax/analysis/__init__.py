"""Routing analysis on plain NumPy arrays (NumPy in, NumPy out), methods in docs/methods.md.

Distributions are ``[..., experts]``; per-sequence statistics ``[sequences, layers, experts]``;
aggregates ``[layers, experts]``; layers are positions on the MoE-layer axis. The ``analyze`` stage
(``moe_jax.pipeline.analyze``) applies everything to a routing store.
"""

from moe_jax.analysis.accuracy import load_accuracy, to_flores
from moe_jax.analysis.consistency import jaccard, sample_token_pairs, token_consistency
from moe_jax.analysis.correlation import Correlation, correlate, divergence_accuracy_correlation
from moe_jax.analysis.divergence import (aggregate_distribution, aggregate_divergence, detect_middle_band,
                                         pair_mean_sem, pairwise_divergence, pivot_divergence, pivot_divergence_pairs,
                                         split_half_baseline)
from moe_jax.analysis.layer_entropy import routing_entropy, utilization_entropy
from moe_jax.analysis.experts import (ExpertSets, SharedExclusive, expert_overlap, language_experts,
                                      shared_exclusive_experts, specialization, task_experts)
from moe_jax.analysis.metrics import (DIVERGENCES, cosine_distance, cosine_similarity, entropy,
                                      entropy_normalized_js, get_divergence, js_divergence, kl_divergence)
from moe_jax.analysis.similarity import band_similarity, cluster_languages, layer_similarity, leaf_order
from moe_jax.analysis.validate import DistributionWarning, as_distribution

__all__ = [
    "load_accuracy", "to_flores", "jaccard", "sample_token_pairs", "token_consistency", "Correlation", "correlate",
    "divergence_accuracy_correlation", "aggregate_distribution", "aggregate_divergence", "detect_middle_band",
    "pair_mean_sem", "pairwise_divergence", "pivot_divergence", "pivot_divergence_pairs", "split_half_baseline",
    "routing_entropy", "utilization_entropy", "ExpertSets", "SharedExclusive", "expert_overlap",
    "language_experts", "shared_exclusive_experts", "specialization", "task_experts", "DIVERGENCES",
    "cosine_distance", "cosine_similarity", "entropy", "entropy_normalized_js", "get_divergence",
    "js_divergence", "kl_divergence", "band_similarity", "cluster_languages", "layer_similarity", "leaf_order",
    "DistributionWarning", "as_distribution",
]

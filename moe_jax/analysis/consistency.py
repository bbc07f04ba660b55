"""Token-to-token routing consistency: Jaccard overlap of the top-k sets of sampled token pairs."""

from __future__ import annotations

import numpy as np


def jaccard(a, b) -> np.ndarray:
    """Jaccard index of top-k index sets ``[..., k]`` x2 -> ``[...]`` (indices within a set are distinct)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[-1] == 0 or b.shape[-1] == 0:
        raise ValueError("jaccard: empty top-k sets")
    inter = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1)
    return inter / (a.shape[-1] + b.shape[-1] - inter)


def sample_token_pairs(seq_lengths, n_pairs: int, seed: int = 0, scope: str = "sequence") -> tuple[np.ndarray, np.ndarray]:
    """Two index arrays ``[n_pairs]`` into the concatenated tokens of all sequences (``[T]``).

    ``scope="sequence"``: the first token uniformly among tokens of sequences with at least 2
    tokens, the second uniformly among the *other* tokens of the same sequence (pairs within a
    sequence, docs/methods.md#token-consistency). ``scope="language"``: two distinct tokens anywhere.
    """
    lengths = np.asarray(seq_lengths, np.int64)
    if lengths.ndim != 1 or np.any(lengths < 0):
        raise ValueError("seq_lengths: expected [sequences] non-negative counts")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rng = np.random.default_rng(seed)
    if scope == "language":
        total = int(lengths.sum())
        if total < 2:
            raise ValueError("token consistency needs at least 2 tokens")
        i = rng.integers(0, total, n_pairs)
        j = rng.integers(0, total - 1, n_pairs)
        return i, j + (j >= i)
    if scope != "sequence":
        raise ValueError(f"scope must be 'sequence' or 'language', got {scope!r}")
    ok = np.flatnonzero(lengths >= 2)
    if ok.size == 0:
        raise ValueError("token consistency needs a sequence with at least 2 tokens")
    # token-uniform choice of the sequence, then of two distinct positions in it
    seq = rng.choice(ok, size=n_pairs, p=lengths[ok] / lengths[ok].sum())
    n = lengths[seq]
    pi = rng.integers(0, n)
    pj = rng.integers(0, n - 1)
    pj = pj + (pj >= pi)
    return starts[seq] + pi, starts[seq] + pj


def token_consistency(token_topk, seq_lengths, n_pairs: int = 2000, seed: int = 0,
                      scope: str = "sequence") -> np.ndarray:
    """Mean Jaccard of the top-k sets of ``n_pairs`` seeded token pairs, per layer ``[layers]``.

    ``token_topk``: ``[tokens, layers, k]`` top-k experts of every counted token, concatenated over
    sequences of lengths ``seq_lengths`` ``[sequences]`` (the store's ``token_topk``).
    """
    t = np.asarray(token_topk)
    if t.ndim != 3:
        raise ValueError(f"token_topk: expected [tokens, layers, k], got {t.shape}")
    total = int(np.sum(seq_lengths))
    if t.shape[0] != total:
        raise ValueError(f"token_topk has {t.shape[0]} tokens but seq_lengths sum to {total}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be positive, got {n_pairs}")
    i, j = sample_token_pairs(seq_lengths, n_pairs, seed, scope)
    return jaccard(t[i], t[j]).mean(0)

"""What the benchmarks share: random left-padded prompts and best-of interleaved timing."""

from __future__ import annotations

import time

import numpy as np


def tokens(vocab: int, batch: int, seq: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids ``[batch, seq]`` int32, left-padded: row lengths between half and all of ``seq``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((batch, seq), np.int32)
    for row, n in enumerate(rng.integers(seq // 2, seq + 1, batch)):
        mask[row, seq - n:] = 1
    return np.where(mask == 1, rng.integers(1, vocab, (batch, seq)), 0).astype(np.int32), mask


def best_of(fns: dict, repeats: int) -> dict[str, float]:
    """Best wall time of each function, interleaved so that they share the background load."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best

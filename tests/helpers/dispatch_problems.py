"""Random expert-dispatch problems: tokens, top-k choices, weights and expert parameters."""

import numpy as np


def problem(T, k, E, seed, biases=False, idx=None, H=16, F=8):
    rng = np.random.default_rng(seed)
    shapes = {"gate": (E, H, F), "up": (E, H, F), "down": (E, F, H)}
    if biases:
        shapes.update(gate_bias=(E, F), up_bias=(E, F), down_bias=(E, H))
    p = {n: rng.normal(size=s).astype(np.float32) * 0.4 for n, s in shapes.items()}
    x = rng.normal(size=(T, H)).astype(np.float32)
    if idx is None:  # experts 0 and E-1 never chosen: empty groups at both ends
        idx = np.stack([rng.choice(np.arange(1, E - 1), size=k, replace=False) for _ in range(T)])
    w = rng.uniform(size=(T, k)).astype(np.float32)
    return x, np.asarray(idx, np.int32), w, p


def stacked_problem():
    """Two layers' experts stacked on a leading axis ([2, E, ...]), as a layer scan holds them."""
    x, idx, w, p0 = problem(29, 3, 8, seed=12, biases=True)
    p1 = problem(29, 3, 8, seed=13, biases=True)[3]
    return x, idx, w, (p0, p1), {n: np.stack([p0[n], p1[n]]) for n in p0}

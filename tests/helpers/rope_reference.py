"""Independent NumPy reference of RoPE / Phi-3.5 LongRoPE (float64), shared by the rope and parity tests."""

import numpy as np


def np_rope_cos_sin(positions, head_dim, theta, longrope=None):
    """cos/sin ``[B, S, D]``: LongRoPE factors and mscale chosen by total length = max(positions)+1."""
    exps = np.arange(0, head_dim, 2) / head_dim
    factors, mscale = np.ones(head_dim // 2), 1.0
    if longrope is not None:
        long = positions.max() + 1 > longrope["original_max_position_embeddings"]
        factors = np.asarray(longrope["long_factor" if long else "short_factor"], np.float64)
        mscale = longrope["long_mscale" if long else "short_mscale"]
    inv = 1.0 / (factors * theta ** exps)
    ang = positions[..., None].astype(np.float64) * inv
    emb = np.concatenate([ang, ang], -1)
    return np.cos(emb) * mscale, np.sin(emb) * mscale

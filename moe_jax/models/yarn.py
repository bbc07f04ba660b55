"""YaRN rotary frequencies, computed on the host in float32 step by step as transformers does.

With ``d`` the head dimension, ``b`` the base (rope_theta) and ``L`` the original max positions::

    inv_extra[i] = 1 / b^(2i/d)                      (plain RoPE: extrapolation)
    inv_inter[i] = inv_extra[i] / factor             (position interpolation)
    dim(r) = d * ln(L / (2 pi r)) / (2 ln b)         (dimension that turns r times over L tokens)
    low, high = dim(beta_fast), dim(beta_slow)       (floor/ceil when ``truncate``; clipped to [0, d-1])
    ramp[i] = clip((i - low) / (high - low), 0, 1)
    inv_freq = inv_inter * ramp + inv_extra * (1 - ramp)

and cos/sin are multiplied by ``attention_factor`` (``0.1 ln(factor) + 1`` by default).
"""

from __future__ import annotations

import math

import numpy as np

from moe_jax.models.config import YarnConfig


def yarn_inv_freq(yarn: YarnConfig, theta: float, head_dim: int) -> np.ndarray:
    """Inverse frequencies ``[head_dim / 2]`` float32."""
    dim, f32 = head_dim, np.float32
    exponent = np.arange(0, dim, 2, dtype=np.int64).astype(f32) / f32(dim)
    pos_freqs = (f32(theta) ** exponent).astype(f32)
    inv_extra = (f32(1.0) / pos_freqs).astype(f32)
    inv_inter = (f32(1.0) / (f32(yarn.factor) * pos_freqs)).astype(f32)

    def correction_dim(rotations: float) -> float:
        turns = yarn.original_max_position_embeddings / (rotations * 2 * math.pi)
        return (dim * math.log(turns)) / (2 * math.log(theta))

    low, high = correction_dim(yarn.beta_fast), correction_dim(yarn.beta_slow)
    if yarn.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as the reference: avoids a zero-width ramp
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1).astype(f32)
    extra = (f32(1) - ramp).astype(f32)
    return (inv_inter * (f32(1) - extra) + inv_extra * extra).astype(f32)

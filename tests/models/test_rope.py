"""RoPE tables (default and Phi-3.5 LongRoPE, short and long regimes) against NumPy."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import layers
from moe_jax.models.config import ModelConfig
from moe_jax.convert.tiny import tiny_hf_config
from tests.helpers.rope_reference import np_rope_cos_sin


@pytest.mark.parametrize("family,length", [("qwen2_moe", 300), ("phimoe", 40), ("phimoe", 200)])
def test_cos_sin_match_numpy(family, length):
    cfg = ModelConfig.from_hf(tiny_hf_config(family))
    pos = np.stack([np.arange(length), np.maximum(np.arange(length) - 7, 0)])
    cos, sin = layers.rope_cos_sin(cfg, jnp.asarray(pos, jnp.int32), jnp.float32)
    lr = None if cfg.longrope is None else dataclasses.asdict(cfg.longrope)
    rc, rs = np_rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, lr)
    np.testing.assert_allclose(np.asarray(cos), rc, atol=2e-5 * max(1, length / 100))
    np.testing.assert_allclose(np.asarray(sin), rs, atol=2e-5 * max(1, length / 100))


def test_longrope_switches_on_total_length():
    cfg = ModelConfig.from_hf(tiny_hf_config("phimoe"))
    orig = cfg.longrope.original_max_position_embeddings
    short = layers.rope_cos_sin(cfg, jnp.arange(orig)[None], jnp.float32)[0]
    longer = layers.rope_cos_sin(cfg, jnp.arange(orig + 1)[None], jnp.float32)[0]
    # Same positions, different regime: the first rows differ once the total length passes orig.
    assert not np.allclose(np.asarray(short[0, 1]), np.asarray(longer[0, 1]))
    np.testing.assert_allclose(np.asarray(short[0, 0, 0]), cfg.longrope.short_mscale, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(longer[0, 0, 0]), cfg.longrope.long_mscale, rtol=1e-6)


def test_apply_rope_rotates_half():
    x = np.random.default_rng(0).normal(size=(1, 3, 2, 8)).astype(np.float32)
    cos = np.random.default_rng(1).normal(size=(1, 3, 8)).astype(np.float32)
    sin = np.random.default_rng(2).normal(size=(1, 3, 8)).astype(np.float32)
    got = np.asarray(layers.apply_rope(x, cos, sin))
    rot = np.concatenate([-x[..., 4:], x[..., :4]], -1)
    np.testing.assert_allclose(got, x * cos[:, :, None] + rot * sin[:, :, None], rtol=1e-6)

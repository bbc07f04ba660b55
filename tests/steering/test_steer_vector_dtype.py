"""steer.vector_dtype="bfloat16": the proportional vector and edit rounded as the published steering
does it, bit for bit against a NumPy emulation of bfloat16 written here."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from moe_jax.models import intervention as iv_lib
from moe_jax.models.config import ModelConfig
from moe_jax.steering.spec import SteeringSpec, SteeringSpecError
from moe_jax.steering import sweep as sweep_lib
from moe_jax.steering import targets as tg
from moe_jax.convert.tiny import tiny_hf_config


def bf16(x) -> np.ndarray:
    """float32 -> the nearest bfloat16 as float32: keep the upper 16 bits, rounding the lower 16 to
    nearest, ties to an even upper half."""
    bits = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    upper, lower = bits >> 16, bits & 0xFFFF
    up = (lower > 0x8000) | ((lower == 0x8000) & (upper & 1 == 1))
    return ((upper + up) << 16).astype(np.uint32).view(np.float32)


def test_the_emulation_is_round_to_nearest_even():
    x = np.random.default_rng(0).normal(size=10_000).astype(np.float32)
    x = np.concatenate([x, np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], np.float32)])  # exact ties
    assert np.array_equal(bf16(x).view(np.uint32), x.astype(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32))
    assert bf16(np.float32(1 + 2 ** -8)) == 1.0 and bf16(np.float32(1 + 3 * 2 ** -8)) == 1 + 2 ** -6


CFG = ModelConfig.from_hf(tiny_hf_config("qwen2_moe", num_experts=64))
IDS = CFG.moe_layer_ids


def _spec(dtype: str, lam=0.022, seed=0) -> tuple[SteeringSpec, np.ndarray]:
    w = np.random.default_rng(seed).uniform(0.05, 0.7, (2, 64))  # float64 shares, as the rule gives them
    targets = [(IDS[l], e, float(w[l, e])) for l in range(2) for e in range(64)]
    return SteeringSpec("proportional", targets, lam, vector_dtype=dtype), w


def test_the_vector_is_bit_exact():
    spec, w = _spec("bfloat16")
    iv = spec.to_intervention(CFG)
    want = bf16(np.float32(0.022) * bf16(w.astype(np.float32)))
    assert np.array_equal(np.asarray(iv.abs_scale).view(np.uint32), want.view(np.uint32))
    assert np.all(np.asarray(iv.abs_bf16) == 1)
    f32 = _spec("float32")[0].to_intervention(CFG)
    assert not np.any(f32.abs_bf16)
    rel = np.abs(np.asarray(iv.abs_scale) / np.asarray(f32.abs_scale) - 1)
    assert 0 < rel.max() < 2 ** -7  # the rounding moves coefficients, by under half a bf16 step of each


def test_the_edit_is_bit_exact_and_leaves_other_experts_alone():
    spec, _ = _spec("bfloat16", lam=0.034, seed=1)
    spec = SteeringSpec("proportional", spec.targets[:40], spec.lam, vector_dtype="bfloat16")  # experts 0..39
    iv = spec.to_intervention(CFG)
    z = np.random.default_rng(2).normal(0, 3, (16, 64)).astype(np.float32)
    out = np.asarray(jax.jit(iv_lib.apply)(jnp.asarray(z), iv.layer(0)))
    v = np.asarray(iv.abs_scale[0])
    zb = bf16(z)
    want = np.where(np.arange(64) < 40, bf16(zb + bf16(v * np.abs(zb))), z)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_option_reaches_proportional_settings_only_and_round_trips():
    with pytest.raises(SteeringSpecError, match=r"vector_dtype 'float16' is not one of"):
        _spec("float16")
    spec = _spec("bfloat16")[0]
    assert SteeringSpec.from_dict(spec.to_dict()) == spec
    assert "vector_dtype" not in _spec("float32")[0].to_dict()  # float32 specs stay as they were written
    mask = np.zeros((2, 64), bool)
    mask[:, :3] = True
    t = tg.Targets(mask, mask * 1.0, mask * 0.5, IDS, "shared", {})
    grid = sweep_lib.Grid(methods=("proportional", "soft"), lambdas=(0.022,), bands=((IDS[0], IDS[1]),),
                          controls=(), vector_dtype="bfloat16")
    specs = sweep_lib.build_settings(lambda tau, band: t, grid, IDS, "shared")
    ivs = {s.method: s.to_intervention(CFG) for s in specs}
    assert ivs["proportional"].abs_bf16.any() and not ivs["soft"].abs_bf16.any()
    assert np.asarray(ivs["soft"].std_scale)[0, 0] == np.float32(0.022 * 0.5)  # soft: float32 as before


def test_the_steer_option_is_checked():
    import ml_collections

    from moe_jax.errors import StageError
    from moe_jax.pipeline import steer as steer_stage
    c = ml_collections.ConfigDict({"steer": steer_stage.default_config()})
    assert steer_stage.options(c).vector_dtype == "float32"  # the default keeps float32 steering
    c.steer.vector_dtype = "float16"
    with pytest.raises(StageError, match=r"steer.vector_dtype 'float16' is not one of \['float32', 'bfloat16'\]"):
        steer_stage.options(c)

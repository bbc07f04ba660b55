"""The TPU kernel path, executed on CPU: on TPU ``backend="auto"`` resolves to ``tokamax``, whose
ragged dot is tokamax's Pallas Mosaic TPU kernel (``PallasMosaicTpuRaggedDot``, Megablox). Here that
kernel runs in Pallas interpret mode under the project's ``tokamax`` dispatch (sort, three ragged
dots, combine) and must match the ``grouped`` backend on routed batches: random routing with empty
experts, every assignment on one expert, and assignments to another shard's expert (id E, weight 0,
as expert parallelism passes them)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import experts

# The kernel needs every dimension of lhs [T*k, H] and rhs [E, H, W] to be at least 128.
T, K, E, H, W = 64, 4, 8, 128, 256


@pytest.fixture(scope="module")
def tpu_ragged_dot():
    """tokamax's TPU ragged dot in interpret mode. Its ``supported_on`` accepts TPUs only, and the
    kernel's block tiling reads the chip's parameters even when interpreted: the CPU device is
    described as a v5e (one TensorCore) for the duration of the module."""
    from absl import flags
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    from jax._src.pallas.mosaic import tpu_info
    from tokamax._src.ops.ragged_dot.pallas_mosaic_tpu import PallasMosaicTpuRaggedDot

    class Interpreted(PallasMosaicTpuRaggedDot):
        def supported_on(self, device) -> bool:
            return self.interpret  # the interpreter runs on any device

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                   lambda: tpu_info._get_tpu_info_impl(tpu_info.ChipVersion.TPU_V5E, 1))
        yield Interpreted(interpret=True)


def expert_params(rng):
    p = {name: rng.standard_normal(shape).astype(np.float32) * 0.1 for name, shape in
         (("gate", (E, H, W)), ("up", (E, H, W)), ("down", (E, W, H)), ("gate_bias", (E, W)), ("up_bias", (E, W)),
          ("down_bias", (E, H)))}
    return jax.tree.map(jnp.asarray, p)


def routings(rng):
    """``name -> (idx [T, K] int32, weights [T, K] float32)``."""
    out = {}
    scores = rng.standard_normal((T, E))
    scores[:, [1, 5]] = -np.inf  # experts 1 and 5 get no token
    idx = np.argsort(-scores, axis=1)[:, :K]
    out["random, two empty experts"] = idx
    out["every assignment on expert 3"] = np.full((T, K), 3)
    shard = idx.copy()
    shard[rng.random((T, K)) < 0.3] = E  # another shard's expert
    out["another shard's expert (id E)"] = shard
    result = {}
    for name, i in out.items():
        w = rng.random((T, K)).astype(np.float32)
        w = np.where(i == E, 0.0, w / w.sum(1, keepdims=True))
        result[name] = (jnp.asarray(i, jnp.int32), jnp.asarray(w, jnp.float32))
    return result


@pytest.mark.slow
def test_tokamax_tpu_kernel_in_interpret_mode_matches_grouped(tpu_ragged_dot):
    rng = np.random.default_rng(0)
    p = expert_params(rng)
    x = jnp.asarray(rng.standard_normal((T, H)), jnp.float32)
    kernel = jax.jit(functools.partial(experts.tokamax_dispatch, act=experts.swiglu, implementation=(tpu_ragged_dot,)))
    grouped = jax.jit(functools.partial(experts.grouped_dispatch, act=experts.swiglu))
    for name, (idx, w) in routings(rng).items():
        got, want = np.asarray(kernel(x, idx, w, p)), np.asarray(grouped(x, idx, w, p))
        assert np.all(np.isfinite(got)), name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.abs(want).max() > 0.01, name  # the comparison is not between zeros

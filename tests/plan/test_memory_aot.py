"""No whole-model float32 copy: XLA's memory analysis of the bfloat16 programs at the released
Qwen3-30B-A3B shapes (48 layers, 128 experts; 56.9 GiB of weights) with 4 x 2048 tokens, compiled
ahead of time on CPU from shapes (nothing is allocated). CPU's XLA upcasts every bfloat16 op to
float32; before ``layers.take_row`` the upcast of each stacked weight was hoisted out of the layer
loop, and the temporaries were 2.0x the parameter bytes. They must stay under 25% of them for the
forward with router logits, the KV-cache decode step and the collection step."""

import jax
import jax.numpy as jnp
import pytest

from moe_jax import sharding as shd
from moe_jax import xla_memory as xm
from moe_jax.models import generate as gen
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import param_shapes
from tests.helpers.released import RELEASED

QWEN3 = ModelConfig.from_hf(RELEASED["Qwen3-30B-A3B"][0])
BATCH, SEQ = 4, 2048
BF16_PARAM_BYTES = 2 * sum(x.size for x in jax.tree.leaves(param_shapes(QWEN3)))
LIMIT = 0.25  # temporaries / parameter bytes


@pytest.fixture(scope="module")
def placed():
    """(mesh of one device, the bf16 parameter structs placed on it, token ids struct)."""
    mesh = shd.make_mesh({"data": 1, "model": 1}, jax.devices()[:1])
    return mesh, xm.param_structs(QWEN3, mesh, jnp.bfloat16), jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32)


def test_the_shapes_are_the_released_model():
    assert 56 * 2 ** 30 < BF16_PARAM_BYTES < 58 * 2 ** 30  # 30.5B parameters


def test_forward_with_router_logits_keeps_no_float32_copy():
    ids = jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32)
    compiled = forward.lower(param_shapes(QWEN3, jnp.bfloat16), QWEN3, ids, ids, return_router=True).compile()
    m = xm.ProgramMemory.of(compiled)
    assert m.arguments >= BF16_PARAM_BYTES  # the weights are arguments in bf16, not copied
    assert m.temporaries <= LIMIT * BF16_PARAM_BYTES, m


@pytest.mark.slow
def test_decode_step_keeps_no_float32_copy(placed):
    mesh, params, ids = placed
    state = jax.eval_shape(lambda p, i, m: gen._prefill(p, QWEN3, i, m, SEQ + xm.DECODE_CHUNK, None, "auto"),
                           params, ids, ids)
    m = xm.ProgramMemory.of(xm.decode_program(QWEN3, params, mesh, state))
    assert m.temporaries <= LIMIT * BF16_PARAM_BYTES, m


@pytest.mark.slow
def test_collection_step_keeps_no_float32_copy(placed):
    mesh, params, _ = placed
    m = xm.ProgramMemory.of(xm.collect_program(QWEN3, params, mesh, BATCH, SEQ))
    assert m.temporaries <= LIMIT * BF16_PARAM_BYTES, m

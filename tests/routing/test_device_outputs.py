"""What leaves the device, by XLA's own accounting of the compiled programs (README claims):
router outputs cost nothing unless asked for; collection returns per-sequence summaries only,
with a token axis only when per-token top-k is asked for."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax import sharding as shd
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import init_params
from moe_jax.routing import collect
from moe_jax.convert.tiny import tiny_hf_config

B, S = 4, 48  # S differs from every other axis (L=2, E=8, k=2, V=128), so a token axis is visible


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig.from_hf(tiny_hf_config("olmoe"))
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=0))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (B, S)), jnp.int32)
    return cfg, params, ids, jnp.ones((B, S), jnp.int32)


def assert_output_bytes(compiled, n_outputs, data_bytes):
    """XLA's output size: the buffers plus, for several outputs, a tuple's index table (8 bytes each)."""
    got = compiled.memory_analysis().output_size_in_bytes
    assert data_bytes <= got <= data_bytes + (8 * n_outputs if n_outputs > 1 else 0), (got, data_bytes)


def compiled_forward(model, **kw):
    cfg, params, ids, mask = model
    return jax.jit(lambda p, i, m: forward(p, cfg, i, m, **kw)).lower(params, ids, mask).compile()


@pytest.mark.slow  # compiles the forward pass twice
def test_router_outputs_cost_nothing_unless_asked(model):
    cfg = model[0]
    bare = compiled_forward(model, return_router=False)
    asked = compiled_forward(model, return_router=True)
    logits_bytes = B * S * cfg.vocab_size * 4
    # the bare program's only output buffer is the logits
    assert [x.shape for x in jax.tree.leaves(bare.out_info)] == [(B, S, cfg.vocab_size)]
    assert_output_bytes(bare, 1, logits_bytes)
    L, E, k = cfg.num_moe_layers, cfg.num_experts, cfg.top_k
    assert_output_bytes(asked, 4, logits_bytes + L * B * S * (E + 2 * k) * 4)
    # no work is spent on them: the router logits are needed for routing anyway
    assert bare.cost_analysis()["flops"] <= asked.cost_analysis()["flops"]
    assert bare.cost_analysis()["transcendentals"] <= asked.cost_analysis()["transcendentals"]


@pytest.mark.parametrize("token_topk", [pytest.param(False, marks=pytest.mark.slow), True])
def test_collect_step_returns_per_sequence_summaries_only(model, token_topk):
    cfg, params, ids, mask = model
    step = collect.make_collect_step(cfg, shd.make_mesh({"data": -1}), token_topk=token_topk)
    compiled = step.lower(params, ids, mask, mask).compile()
    shapes = {k: v.shape for k, v in compiled.out_info.items()}
    L, E, k = cfg.num_moe_layers, cfg.num_experts, cfg.top_k
    want = {"seq_lengths": (B,), "seq_mean_probs": (B, L, E), "seq_topk_freq": (B, L, E),
            "seq_topk_weight": (B, L, E), "seq_gate_weight": (B, L, E), "seq_token_entropy": (B, L),
            "topk_counts": (L, E), "gate_weight_sums": (L, E), "token_count": ()}
    if token_topk:
        want["token_topk"] = (B, S, L, k)
    assert shapes == want
    summary_bytes = 4 * (B + 4 * B * L * E + B * L + 2 * L * E + 1)
    token_bytes = 2 * B * S * L * k if token_topk else 0  # int16
    assert_output_bytes(compiled, len(want), summary_bytes + token_bytes)

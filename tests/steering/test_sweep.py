"""How many routing decisions a steering setting changes (``sweep.topk_change``): the top-k SET per
token, not its order, against an unsteered forward pass computed here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import FORBID, Intervention
from moe_jax.models.params import init_params
from moe_jax.steering import sweep
from moe_jax.convert.tiny import tiny_hf_config


def setup(num_experts, top_k):
    cfg = ModelConfig.from_hf(tiny_hf_config("olmoe", num_experts=num_experts, num_experts_per_tok=top_k))
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=3))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)), jnp.int32)
    counted = np.ones((2, 10), np.int32)
    counted[1, :4] = 0  # e.g. prompt tokens not counted
    return cfg, params, ids, jnp.ones((2, 10), jnp.int32), jnp.asarray(counted)


def test_reordering_within_the_top_k_is_no_change():
    cfg, params, ids, mask, counted = setup(num_experts=2, top_k=2)  # the set is always both experts
    iv = Intervention.none(cfg.num_moe_layers, cfg.num_experts)
    iv = iv._replace(bias=iv.bias + np.array([0.0, 50.0], np.float32))  # expert 1 always ranked first
    base = np.asarray(forward(params, cfg, ids, mask, return_router=True, compute_logits=False).topk_idx)
    assert (base[..., 0] == 0).any()  # so the order does change somewhere
    np.testing.assert_array_equal(np.asarray(sweep.topk_change(params, cfg, ids, mask, counted, iv)), 0.0)


@pytest.mark.slow  # another compile of topk_change (the other test is the fast lane's)
def test_forbidding_an_expert_changes_exactly_the_tokens_that_used_it():
    cfg, params, ids, mask, counted = setup(num_experts=8, top_k=2)
    base = np.asarray(forward(params, cfg, ids, mask, return_router=True, compute_logits=False).topk_idx)
    e = int(np.bincount(base[0].ravel()).argmax())  # the first MoE layer's most used expert
    iv = Intervention.none(cfg.num_moe_layers, cfg.num_experts)
    iv = iv._replace(mode=iv.mode.copy())
    iv.mode[0, e] = FORBID
    got = np.asarray(sweep.topk_change(params, cfg, ids, mask, counted, iv))
    used = (base[0] == e).any(-1) & np.asarray(counted, bool)  # [B, S]: the first layer's changed tokens
    assert got[0] == pytest.approx(used.sum() / 16, abs=1e-7) and used.sum() > 0

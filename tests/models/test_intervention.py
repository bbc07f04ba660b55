"""The intervention input: forcing, forbidding, soft steering, neutrality, no retracing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models import intervention as iv_lib
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import Intervention
from moe_jax.models.params import init_params
from moe_jax.convert.tiny import tiny_hf_config


# whole-model forwards (two compiles per family) out of the fast lane; apply's unit tests stay in it
@pytest.fixture(scope="module", params=[pytest.param(f, marks=pytest.mark.slow) for f in ("qwen3_moe", "phimoe")])
def setup(request):
    cfg = ModelConfig.from_hf(tiny_hf_config(request.param))
    params = jax.tree.map(jnp.asarray, init_params(cfg, seed=1))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 24)), jnp.int32)
    return cfg, params, ids


def run(setup, iv):
    cfg, params, ids = setup
    return forward(params, cfg, ids, intervention=iv, return_router=True)


def test_zero_intervention_changes_nothing(setup):
    cfg = setup[0]
    base = run(setup, None)
    out = run(setup, Intervention.none(cfg.num_moe_layers, cfg.num_experts))
    for a, b in zip(base, out):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_forced_expert_is_selected_and_forbidden_never(setup):
    cfg = setup[0]
    L, E = cfg.num_moe_layers, cfg.num_experts
    base = np.asarray(run(setup, None).topk_idx)
    # Force the expert least used in layer 0, forbid the most used one in the last layer.
    counts0 = np.bincount(base[0].ravel(), minlength=E)
    countsL = np.bincount(base[-1].ravel(), minlength=E)
    forced, forbidden = int(np.argmin(counts0)), int(np.argmax(countsL))
    mode = np.zeros((L, E), np.int32)
    mode[0, forced] = iv_lib.FORCE
    mode[-1, forbidden] = iv_lib.FORBID
    iv = Intervention.none(L, E)._replace(mode=mode)
    idx = np.asarray(run(setup, iv).topk_idx)
    assert (idx[0] == forced).any(-1).all(), "forced expert missing from some token's top-k"
    assert not (idx[-1] == forbidden).any(), "forbidden expert was selected"
    assert (base[-1] == forbidden).any()  # the edit had something to change


def test_soft_bias_matches_manual_logit_edit():
    z = np.random.default_rng(4).normal(size=(6, 5)).astype(np.float32)
    bias = np.array([0.5, 0, 0, -1, 0], np.float32)
    std_scale = np.array([0, 0.5, 0, 0, 0], np.float32)
    abs_scale = np.array([0, 0, 0.03, 0, 0], np.float32)
    iv = Intervention(bias, std_scale, abs_scale, np.array([0, 0, 0, 0, iv_lib.DEMOTE], np.int32))
    got = np.asarray(iv_lib.apply(z, iv))
    want = z + bias + std_scale * z.std(-1, keepdims=True) + abs_scale * np.abs(z)
    want[:, 4] = want.min(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_changing_values_does_not_retrace(setup):
    cfg, params, ids = setup
    L, E = cfg.num_moe_layers, cfg.num_experts
    run(setup, Intervention.none(L, E))
    before = forward._cache_size()
    outs = []
    for lam in (0.5, -0.5, 1.0):
        iv = Intervention.none(L, E)._replace(std_scale=np.full((L, E), lam, np.float32) * (np.arange(E) < 2))
        outs.append(np.asarray(run(setup, iv).topk_idx))
    assert forward._cache_size() == before
    assert not np.array_equal(outs[0], outs[1])  # the values did reach the router


def test_router_logits_stay_raw_under_an_intervention(setup):
    """Edit only the last MoE layer: nothing upstream changes, so every layer's router_logits must equal
    the un-intervened run bit for bit, while the last layer's choices follow the edit."""
    cfg = setup[0]
    L, E = cfg.num_moe_layers, cfg.num_experts
    base = run(setup, None)
    top = np.asarray(base.topk_idx[-1, ..., 0])  # each token's first choice in the last layer
    mode = np.zeros((L, E), np.int32)
    mode[-1, np.bincount(top.ravel(), minlength=E).argmax()] = iv_lib.FORBID
    bias = np.zeros((L, E), np.float32)
    bias[-1] = np.linspace(-3, 3, E)
    out = run(setup, Intervention.none(L, E)._replace(mode=mode, bias=bias))
    np.testing.assert_array_equal(np.asarray(out.router_logits), np.asarray(base.router_logits))
    assert not np.array_equal(np.asarray(out.topk_idx[-1]), np.asarray(base.topk_idx[-1]))
    np.testing.assert_array_equal(np.asarray(out.topk_idx[:-1]), np.asarray(base.topk_idx[:-1]))


def test_forced_experts_rank_strictly_above_every_other():
    """Two forced experts must both beat the token's own top expert: a tie would leave the choice to
    top-k's index order (here the unforced expert 0 would win)."""
    from moe_jax.models.routing import softmax_topk
    z = np.random.default_rng(5).normal(size=(8, 5)).astype(np.float32)
    z[:, 0] = z.max(-1) + 1.0  # expert 0 is every token's favourite
    mode = np.array([0, 0, 0, iv_lib.FORCE, iv_lib.FORCE], np.int32)
    got = np.asarray(iv_lib.apply(z, Intervention.none(1, 5).layer(0)._replace(mode=mode)))
    assert (got[:, 3:].min(-1) > got[:, :3].max(-1)).all()
    _, idx = softmax_topk(got, 2, renormalize=False)
    np.testing.assert_array_equal(np.sort(np.asarray(idx), -1), np.tile([3, 4], (8, 1)))

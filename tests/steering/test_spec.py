"""Steering specs: JSON round trip, validation against the model, and what each method does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import DEMOTE, FORBID, FORCE, Intervention
from moe_jax.models.params import init_params
from moe_jax.steering import targets as tg
from moe_jax.steering.spec import SteeringSpec, SteeringSpecError, specs_to_interventions
from moe_jax.convert.tiny import tiny_hf_config

# qwen2_moe tiny: 3 decoder layers, layer 1 dense -> MoE layers (0, 2); 8 experts, top-3
CFG = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))


@pytest.fixture(scope="module")
def model():
    params = jax.tree.map(jnp.asarray, init_params(CFG, seed=3))
    ids = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 20)), jnp.int32)
    return params, ids


def test_json_round_trip_and_file(tmp_path):
    spec = SteeringSpec("soft", [(0, 3, 1.0), (2, 5, 0.5)], lam=0.5, name="math",
                        provenance={"rule": "task", "tau": 0.3, "band": [0, 2]})
    again = SteeringSpec.from_json(spec.to_json())
    assert again == spec and again.targets == ((0, 3, 1.0), (2, 5, 0.5))
    path = tmp_path / "s.json"
    path.write_text(spec.to_json())
    assert SteeringSpec.load(path) == spec


def test_arrays_of_each_method():
    t = ((0, 3, 1.0), (2, 5, 0.5))
    soft = SteeringSpec("soft", t, lam=0.4).to_intervention(CFG)
    assert soft.std_scale[0, 3] == pytest.approx(0.4) and soft.std_scale[1, 5] == pytest.approx(0.2)
    assert np.count_nonzero(soft.std_scale) == 2 and not np.any(soft.bias) and not np.any(soft.mode)
    prop = SteeringSpec("proportional", t, lam=0.02).to_intervention(CFG)
    assert prop.abs_scale[1, 5] == pytest.approx(0.01) and np.count_nonzero(prop.abs_scale) == 2
    bias = SteeringSpec("bias", t, lam=2.0).to_intervention(CFG)
    assert bias.bias[0, 3] == 2.0 and bias.bias[1, 5] == 1.0
    assert SteeringSpec("hard", t, lam=1).to_intervention(CFG).mode[1, 5] == FORCE
    assert SteeringSpec("hard", t, lam=-1).to_intervention(CFG).mode[0, 3] == DEMOTE
    mask = SteeringSpec("mask", t).to_intervention(CFG).mode
    assert mask[0, 3] == FORBID and np.count_nonzero(mask) == 2


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="steer", targets=[(0, 1, 1)]), r"'steer' is not one of"),
    (dict(method="soft", targets=[]), "has no targets"),
    (dict(method="soft", targets=[(0, 1, 1), (0, 1, 2)]), r"repeat \(layer, expert\) pairs \[\(0, 1\)\]"),
    (dict(method="soft", targets=[(0, 1)]), r"\(layer, expert, weight\) triples"),
    (dict(method="soft", targets=[(0, 1, 1)], lam=float("nan")), "must be finite"),
])
def test_malformed_specs(kwargs, match):
    with pytest.raises(SteeringSpecError, match=match):
        SteeringSpec(**kwargs)


@pytest.mark.parametrize("spec, match", [
    (SteeringSpec("soft", [(1, 0, 1)]), r"layer 1 is a dense layer; MoE layers: \[0, 2\]"),
    (SteeringSpec("soft", [(7, 0, 1)]), r"layer 7 is outside 0..2"),
    (SteeringSpec("soft", [(0, 8, 1)]), r"expert 8 at layer 0 is outside 0..7"),
    (SteeringSpec("hard", [(2, e, 1) for e in range(4)]), r"forces 4 experts at layer 2, more than top-k=3"),
    (SteeringSpec("mask", [(0, e, 1) for e in range(6)]), r"leaves 2 experts at layer 0, fewer than top-k=3"),
])
def test_specs_that_do_not_fit_the_model(spec, match):
    with pytest.raises(SteeringSpecError, match=match):
        spec.to_intervention(CFG)


def test_over_k_allowed_explicitly_and_unknown_fields():
    iv = SteeringSpec("hard", [(2, e, 1) for e in range(4)], lam=1, allow_over_k=True).to_intervention(CFG)
    assert (iv.mode[1] == FORCE).sum() == 4
    with pytest.raises(SteeringSpecError, match=r"unknown steering spec field\(s\) \['lambda'\]"):
        SteeringSpec.from_dict({"method": "soft", "targets": [[0, 1, 1]], "lambda": 0.5})


@pytest.mark.slow  # forward passes of the tiny model
def test_forced_experts_used_by_every_token_and_masked_by_none(model):
    params, ids = model
    base = np.asarray(forward(params, CFG, ids, return_router=True).topk_idx)  # [L, B, S, k]
    # force at layer 0 the expert the baseline uses least, mask at layer 2 the one it uses most
    rare = int(np.bincount(base[0].ravel(), minlength=8).argmin())
    common = int(np.bincount(base[1].ravel(), minlength=8).argmax())
    hard = SteeringSpec("hard", [(0, rare, 1.0)], lam=1.0).to_intervention(CFG)
    mask = SteeringSpec("mask", [(2, common, 1.0)]).to_intervention(CFG)
    out_h = np.asarray(forward(params, CFG, ids, intervention=hard, return_router=True).topk_idx)
    out_m = np.asarray(forward(params, CFG, ids, intervention=mask, return_router=True).topk_idx)
    assert (out_h[0] == rare).any(-1).all()
    assert not (out_m[1] == common).any()
    assert (base[1] == common).any()


def test_from_targets_and_stacked_sweep():
    freq = np.full((2, 8), 0.1)
    task = freq.copy()
    task[1, 6] = 0.9
    t = tg.task_targets(task, freq, CFG.moe_layer_ids, band=None, tau=0.3)
    spec = SteeringSpec.from_targets("soft", t, lam=0.5, name="task")
    assert spec.targets == ((2, 6, 1.0),) and spec.provenance == {"rule": "task", "tau": 0.3, "band": None}
    assert SteeringSpec.from_json(spec.to_json()) == spec
    sweep = specs_to_interventions([spec, SteeringSpec("mask", [(0, 1, 1)])], CFG)
    assert isinstance(sweep, Intervention) and sweep.std_scale.shape == (2, 2, 8)
    assert sweep.std_scale[0, 1, 6] == 0.5 and sweep.mode[1, 0, 1] == FORBID


@pytest.mark.slow
def test_forced_and_masked_experts_in_generation(model):
    """Generation applies the spec at every decoded token as scoring does at every position."""
    from moe_jax.models.generate import generate

    params, ids = model
    mask = jnp.ones_like(ids)
    base = generate(params, CFG, ids, mask, max_new_tokens=6, return_router=True)
    used = np.asarray(base.topk_idx)  # [moe_layers, B, N, k]
    rare = int(np.bincount(used[0].ravel(), minlength=8).argmin())
    common = int(np.bincount(used[1].ravel(), minlength=8).argmax())
    iv = SteeringSpec("hard", [(0, rare, 1.0)], lam=1.0).to_intervention(CFG)
    iv = iv._replace(mode=iv.mode + SteeringSpec("mask", [(2, common, 1.0)]).to_intervention(CFG).mode)
    out = generate(params, CFG, ids, mask, max_new_tokens=6, intervention=iv, return_router=True)
    got = np.asarray(out.topk_idx)
    assert (got[0] == rare).any(-1).all() and not (got[1] == common).any()
    assert (used[1] == common).any()


@pytest.mark.slow
def test_hard_noise_orders_forced_experts_by_seeded_draws(model):
    """With the study's noise, which of more-than-k forced experts win varies with the seed and token,
    reproducibly; with the deterministic margin the lowest indices always win."""
    params, ids = model
    forced = [(0, e, 1.0) for e in range(5)]  # 5 forced experts at layer 0, top-3
    det = SteeringSpec("hard", forced, lam=1, allow_over_k=True).to_intervention(CFG)
    out = np.asarray(forward(params, CFG, ids, intervention=det, return_router=True).topk_idx)[0]
    assert (np.sort(out, -1) == [0, 1, 2]).all()

    def chosen(seed):
        iv = SteeringSpec("hard", forced, lam=1, allow_over_k=True, noise=1e-5, seed=seed).to_intervention(CFG)
        np.testing.assert_allclose(iv.force_noise[0, :5], 1e-5)
        assert iv.force_noise[0, 5:].max() == 0 and iv.force_noise[1].max() == 0 and (iv.noise_seed == seed).all()
        return np.sort(np.asarray(forward(params, CFG, ids, intervention=iv, return_router=True).topk_idx)[0], -1)
    a, b, c = chosen(1), chosen(1), chosen(2)
    np.testing.assert_array_equal(a, b)
    assert (a < 5).all() and not (a == [0, 1, 2]).all() and not np.array_equal(a, c)
    assert len({tuple(r) for r in a.reshape(-1, 3)}) > 1  # the draws differ between tokens
    with pytest.raises(SteeringSpecError, match="noise must be a finite std >= 0"):
        SteeringSpec("hard", forced, noise=-1.0)

"""Tiny configs and random HF checkpoints (moe_jax.convert.tiny), checked against transformers; hf_reference helpers."""

import ml_dtypes
import numpy as np
import pytest
import torch
from tests.helpers.hf_reference import build_hf_model, expected_params, flatten, reference_forward
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM

from moe_jax.convert.loader import load_params
from moe_jax.models.config import ModelConfig, UnsupportedModelError
from moe_jax.models.params import unstack_layers
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

FAMILIES = ["qwen2_moe", "qwen3_moe", "olmoe", "phimoe"]


def test_qwen2_moe_features():
    c = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))
    assert c.moe_layers == (True, False, True)  # mlp_only_layers=[1]
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (4, 2, 16)
    assert (c.shared_expert_width, c.dense_width, c.expert_width) == (48, 96, 24)
    assert (c.qkv_bias, c.o_bias, c.norm_topk_prob, c.top_k, c.rope_theta) == (True, False, False, 3, 1e6)


def test_qwen3_moe_features():
    c = ModelConfig.from_hf(tiny_hf_config("qwen3_moe"))
    assert c.head_dim == 24 and c.num_heads * c.head_dim != c.hidden_size
    assert c.num_kv_heads < c.num_heads and c.norm_topk_prob and c.rope_theta == 1e6
    assert not c.qkv_bias and all(c.moe_layers)


def test_olmoe_features():
    c = ModelConfig.from_hf(tiny_hf_config("olmoe"))
    assert c.num_heads * c.head_dim == c.hidden_size and c.num_kv_heads == 2
    assert not c.norm_topk_prob and c.clip_qkv is None and c.rope_theta == 1e4 and c.norm_eps == 1e-5
    assert ModelConfig.from_hf(tiny_hf_config("olmoe", clip_qkv=0.5)).clip_qkv == 0.5


def test_phimoe_features():
    c = ModelConfig.from_hf(tiny_hf_config("phimoe"))
    assert c.qkv_bias and c.o_bias and c.lm_head_bias and c.rope_theta == 1e4
    lr = c.longrope
    assert len(lr.short_factor) == len(lr.long_factor) == c.head_dim // 2 == 8
    assert lr.short_factor != lr.long_factor and lr.short_mscale != lr.long_mscale
    assert lr.original_max_position_embeddings == 64 < c.max_position_embeddings == 256
    # head_dim follows the overrides
    c2 = ModelConfig.from_hf(tiny_hf_config("phimoe", hidden_size=96, num_attention_heads=4))
    assert len(c2.longrope.short_factor) == 12


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_reads_the_same_config(family):
    d = tiny_hf_config(family, vocab_size=512)
    c, hc = ModelConfig.from_hf(d), AutoConfig.for_model(**d)
    assert CONFIG_MAPPING[family](**d).to_dict() == hc.to_dict()  # the config class directly
    assert hc.model_type == family and hc.vocab_size == c.vocab_size == 512
    assert hc.rope_parameters["rope_theta"] == c.rope_theta
    assert getattr(hc, "head_dim", hc.hidden_size // hc.num_attention_heads) == c.head_dim
    assert hc.num_key_value_heads == c.num_kv_heads and hc.num_experts_per_tok == c.top_k
    assert (getattr(hc, "num_experts", None) or hc.num_local_experts) == c.num_experts
    if family == "phimoe":
        rp = hc.rope_parameters
        assert rp["rope_type"] == "longrope" and tuple(rp["short_factor"]) == c.longrope.short_factor
        assert rp["original_max_position_embeddings"] == 64
    if family == "qwen2_moe":
        assert hc.mlp_only_layers == [1] and hc.shared_expert_intermediate_size == c.shared_expert_width


def test_unknown_family():
    with pytest.raises(UnsupportedModelError, match="'llama'"):
        tiny_hf_config("llama")


VARIANTS = {"sharded": dict(num_shards=3), "fused": dict(fused_experts=True), "bf16": dict(dtype="bfloat16")}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_random_checkpoint_loads_in_transformers(family, variant, tmp_path):
    d = tiny_hf_config(family)
    path = write_random_hf_checkpoint(tmp_path / "ckpt", d, seed=5, **VARIANTS[variant])
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    cfg, params = load_params(path)
    got, want = flatten(unstack_layers(params, cfg)), expected_params(cfg, model)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    if variant == "bf16":  # stored values are bf16-representable
        assert all(np.array_equal(x, x.astype(ml_dtypes.bfloat16).astype(np.float32)) for x in got.values())


def test_random_weights_are_away_from_identity(tmp_path):
    path = write_random_hf_checkpoint(tmp_path / "ckpt", tiny_hf_config("phimoe"), seed=0)
    _, params = load_params(path)
    for k, x in flatten(params).items():
        if k[-1] == "scale":
            assert np.all(x != 1.0) and 0.05 < np.std(x) < 0.2, k
        if k[-1] == "bias":
            assert np.all(x != 0.0), k
        if k[-2:] == ("router", "kernel"):
            assert 0.1 < np.std(x) < 0.3, k  # 0.02 * router_scale 10


def test_random_checkpoints_depend_on_seed_only(tmp_path):
    d = tiny_hf_config("olmoe")
    a = load_params(write_random_hf_checkpoint(tmp_path / "a", d, seed=1))[1]
    b = load_params(write_random_hf_checkpoint(tmp_path / "b", d, seed=1, num_shards=2))[1]
    c = load_params(write_random_hf_checkpoint(tmp_path / "c", d, seed=2))[1]
    fa, fb, fc = flatten(a), flatten(b), flatten(c)
    assert all(np.array_equal(fa[k], fb[k]) for k in fa)
    assert not np.array_equal(fa[("embed",)], fc[("embed",)])


@pytest.fixture(scope="module")
def qwen2_model():
    return build_hf_model(tiny_hf_config("qwen2_moe"), seed=0)


def test_build_hf_model_perturbs_norms_biases_and_routers(qwen2_model):
    sd = qwen2_model.state_dict()
    assert not qwen2_model.training
    for name in ("model.norm.weight", "model.layers.0.input_layernorm.weight"):
        assert not torch.allclose(sd[name], torch.ones_like(sd[name]))
    assert torch.all(sd["model.layers.0.self_attn.q_proj.bias"] != 0)
    assert 0.1 < sd["model.layers.0.mlp.gate.weight"].std() < 0.3


def test_reference_forward_captures_raw_router_logits(qwen2_model):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (2, 7))
    mask = np.ones((2, 7), np.int64)
    mask[1, :2] = 0
    logits, router = reference_forward(qwen2_model, ids, mask)
    assert logits.shape == (2, 7, 128) and logits.dtype == np.float32
    assert router.shape == (2, 2, 7, 8) and router.dtype == np.float32  # layers 0 and 2 are MoE
    # raw logits = post-attention-norm hidden state @ W_g.T: recompute layer 0 from a hook on its input
    seen = []
    block = qwen2_model.model.layers[0].mlp
    h = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        out = qwen2_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    h.remove()
    want = (seen[0] @ block.gate.weight.detach().T).numpy()
    np.testing.assert_allclose(router[0], want.reshape(2, 7, 8), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=1e-6, atol=1e-6)
    assert not np.allclose(np.exp(router).sum(-1), 1.0)  # not probabilities

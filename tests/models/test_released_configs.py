"""The released checkpoints' config.json values give the published model sizes.

The dicts below carry the architecture keys of the released ``config.json`` files (values as in
ARCHITECTURES.md, key variants as the files spell them). Total and active parameter counts of our
parameter layout must match the published sizes, which checks every width, the dense/MoE layer
rule, GQA and head_dim handling at real scale without downloading anything.
"""

import dataclasses
import math

import jax
import pytest

from moe_jax.models.config import ModelConfig
from moe_jax.models.params import param_shapes
from tests.helpers.released import ACTIVE_WITHOUT_EMBEDDING, RELEASED

def counts(cfg):
    """(total, active) parameters: active counts top_k of num_experts routed experts per MoE layer."""
    shapes = param_shapes(cfg)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    routed = sum(math.prod(layer["moe"][n].shape) for layer in shapes["layers"] if "moe" in layer
                 for n in ("gate", "up", "down"))
    return total, total - routed + routed * cfg.top_k / cfg.num_experts


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_parameter_counts_match_published_sizes(name):
    hf, total, active, tol = RELEASED[name]
    cfg = ModelConfig.from_hf(hf)
    got_total, got_active = counts(cfg)
    if name in ACTIVE_WITHOUT_EMBEDDING:
        got_active -= cfg.vocab_size * cfg.hidden_size
    assert abs(got_total / total - 1) < tol, f"{name}: {got_total / 1e9:.2f}B total"
    assert abs(got_active / active - 1) < 2 * tol, f"{name}: {got_active / 1e9:.2f}B active"


def test_released_config_details():
    qwen3 = ModelConfig.from_hf(RELEASED["Qwen3-30B-A3B"][0])
    assert qwen3.head_dim == 128 and qwen3.num_heads * qwen3.head_dim == 4096 != qwen3.hidden_size
    assert qwen3.num_moe_layers == 48 and qwen3.norm_topk_prob and qwen3.family.qk_norm == "head"
    phi = ModelConfig.from_hf(RELEASED["Phi-3.5-MoE-instruct"][0])
    assert phi.longrope.original_max_position_embeddings == 4096 and len(phi.longrope.long_factor) == 64
    assert phi.qkv_bias and phi.o_bias and phi.lm_head_bias and phi.family.router == "sparsemixer"
    olmoe = ModelConfig.from_hf(RELEASED["OLMoE-1B-7B-0125-Instruct"][0])
    assert olmoe.clip_qkv is None and olmoe.family.qk_norm == "full" and olmoe.dtype == "bfloat16"
    oss = ModelConfig.from_hf(RELEASED["gpt-oss-20b"][0])
    assert oss.yarn.factor == 32 and oss.yarn.original_max_position_embeddings == 4096 and not oss.yarn.truncate
    assert oss.rope_theta == 150000 and oss.yarn.attention_factor == pytest.approx(0.1 * math.log(32) + 1)
    assert [oss.attention_window(i) for i in range(4)] == [128, None, 128, None]
    assert oss.swiglu_limit == 7.0 and oss.swiglu_alpha == 1.702 and oss.family.router == "topk_softmax"
    assert oss.qkv_bias and oss.o_bias and not oss.tie_word_embeddings and oss.num_moe_layers == 24
    qwen15 = ModelConfig.from_hf(dict(RELEASED["Qwen1.5-MoE-A2.7B"][0], mlp_only_layers=[0, 5]))
    assert qwen15.moe_layer_ids == tuple(i for i in range(24) if i not in (0, 5)) and qwen15.dense_width == 5632


def test_qwen2_57b_and_olmoe_0924_details():
    q = ModelConfig.from_hf(RELEASED["Qwen2-57B-A14B"][0])
    assert (q.num_heads, q.num_kv_heads, q.head_dim) == (28, 4, 128)  # GQA 7:1, head_dim from hidden / heads
    assert q.moe_layer_ids == tuple(range(28)) and q.dense_width == 0  # no mlp_only_layers key: every layer MoE
    assert (q.expert_width, q.shared_expert_width, q.num_experts, q.top_k) == (2560, 20480, 64, 8)
    assert q.qkv_bias and not q.o_bias and not q.norm_topk_prob and q.rope_theta == 1e6 and q.norm_eps == 1e-6
    o24, o25 = (ModelConfig.from_hf(RELEASED[n][0]) for n in ("OLMoE-1B-7B-0924", "OLMoE-1B-7B-0125-Instruct"))
    assert o24.longrope is None and o24.rope_theta == 1e4 and o24.clip_qkv is None and o24.norm_eps == 1e-5
    assert o24.max_position_embeddings == 4096 and not o24.qkv_bias and not o24.o_bias
    # the two releases share one architecture: only the recorded dtype differs
    assert dataclasses.replace(o24, dtype=o25.dtype) == o25

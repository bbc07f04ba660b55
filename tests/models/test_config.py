"""ModelConfig.from_hf: class defaults for absent keys agree with transformers' config classes,
key variants (v4/v5) give the same config, and bad configs are named."""

import pytest
import transformers

from moe_jax.models.config import ModelConfig, UnsupportedModelError
from moe_jax.convert.tiny import tiny_hf_config

CLASSES = {"qwen2_moe": "Qwen2MoeConfig", "qwen3_moe": "Qwen3MoeConfig", "olmoe": "OlmoeConfig",
           "phimoe": "PhimoeConfig"}
DEFAULTED = ("rms_norm_eps", "norm_topk_prob", "rope_theta", "rope_scaling", "rope_parameters", "qkv_bias",
             "attention_bias", "router_jitter_noise", "head_dim", "decoder_sparse_step", "mlp_only_layers")


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_absent_keys_take_the_reference_class_defaults(family):
    minimal = {k: v for k, v in tiny_hf_config(family).items() if k not in DEFAULTED}
    ours = ModelConfig.from_hf(minimal)
    ref = ModelConfig.from_hf(getattr(transformers, CLASSES[family])(**minimal).to_dict())
    assert ours == ref


@pytest.mark.parametrize("family", sorted(CLASSES))
def test_v4_and_v5_key_variants_agree(family):
    v4 = tiny_hf_config(family)  # rope_theta / rope_scaling / torch_dtype style
    v5 = getattr(transformers, CLASSES[family])(**v4).to_dict()  # rope_parameters / dtype style
    assert "rope_parameters" in v5
    assert ModelConfig.from_hf(v4) == ModelConfig.from_hf(v5)


def test_unknown_model_type_is_named():
    with pytest.raises(UnsupportedModelError, match="'mixtral'.*supported"):
        ModelConfig.from_hf(dict(tiny_hf_config("olmoe"), model_type="mixtral"))


def test_missing_key_is_named():
    cfg = tiny_hf_config("qwen3_moe")
    del cfg["moe_intermediate_size"]
    with pytest.raises(ValueError, match="moe_intermediate_size"):
        ModelConfig.from_hf(cfg)

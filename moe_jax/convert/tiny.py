"""Tiny models of every family, for tests and the offline demo (no torch).

``tiny_hf_config(model_type, **overrides)`` returns a ``config.json`` dict that both
``ModelConfig.from_hf`` and transformers (``AutoConfig.for_model(**d)``) accept, exercising the
features of each family: Qwen2-MoE (GQA, shared expert, a dense layer via ``mlp_only_layers``),
Qwen3-MoE (explicit head_dim != hidden/heads, GQA, norm_topk_prob), OLMoE (full-width qk-norm,
GQA, optional ``clip_qkv``), PhiMoE (biases, lm_head bias, LongRoPE with distinct short/long
factors and mscales), GPT-OSS (router and expert biases, clamped SwiGLU, attention sinks, sliding
window 8 on the layers ``layer_types`` names, YaRN; expert width 32 so MXFP4 groups of 32 fit).
Expert widths keep ``2 * I != H`` so fused-expert layouts are unambiguous.
``write_random_hf_checkpoint`` writes such a model with random weights as HF safetensors.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from moe_jax.convert.export import params_to_hf_tensors, write_hf_checkpoint
from moe_jax.convert.loader import resolve_dtype
from moe_jax.models.config import ModelConfig, UnsupportedModelError
from moe_jax.models.params import init_params

_COMMON = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
               hidden_act="silu", initializer_range=0.02, tie_word_embeddings=False, use_cache=True,
               attention_dropout=0.0, bos_token_id=None, eos_token_id=None, pad_token_id=None, dtype="float32")

_TINY: dict[str, dict[str, Any]] = {
    "qwen2_moe": dict(
        architectures=["Qwen2MoeForCausalLM"], num_hidden_layers=3, intermediate_size=96,
        moe_intermediate_size=24, shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=3,
        decoder_sparse_step=1, mlp_only_layers=[1], norm_topk_prob=False, qkv_bias=True, rms_norm_eps=1e-6,
        rope_theta=1e6, max_position_embeddings=256, use_sliding_window=False, sliding_window=None,
        max_window_layers=3, router_aux_loss_coef=0.001, output_router_logits=False),
    "qwen3_moe": dict(
        architectures=["Qwen3MoeForCausalLM"], num_hidden_layers=2, head_dim=24, intermediate_size=96,
        moe_intermediate_size=24, num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1,
        mlp_only_layers=[], norm_topk_prob=True, attention_bias=False, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=256, use_sliding_window=False, sliding_window=None,
        router_aux_loss_coef=0.001, output_router_logits=False),
    "olmoe": dict(
        architectures=["OlmoeForCausalLM"], num_hidden_layers=2, intermediate_size=24, num_experts=8,
        num_experts_per_tok=2, norm_topk_prob=False, attention_bias=False, clip_qkv=None, rms_norm_eps=1e-5,
        rope_theta=1e4, max_position_embeddings=256, router_aux_loss_coef=0.01, output_router_logits=False),
    "phimoe": dict(
        architectures=["PhimoeForCausalLM"], num_hidden_layers=2, intermediate_size=40, num_local_experts=4,
        num_experts_per_tok=2, attention_bias=True, lm_head_bias=True, rms_norm_eps=1e-5, rope_theta=1e4,
        max_position_embeddings=256, sliding_window=None, router_jitter_noise=0.01, input_jitter_noise=0.0,
        router_aux_loss_coef=0.001, output_router_logits=False),
    "gpt_oss": dict(
        architectures=["GptOssForCausalLM"], num_hidden_layers=3, head_dim=16, intermediate_size=32,
        num_local_experts=8, num_experts_per_tok=4, attention_bias=True, rms_norm_eps=1e-5,
        max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0, beta_slow=1.0,
                             truncate=False, original_max_position_embeddings=64),
        swiglu_limit=7.0, swiglu_alpha=1.702, router_aux_loss_coef=0.001, output_router_logits=False),
}


def _longrope(head_dim: int, original_max: int) -> dict[str, Any]:
    n = head_dim // 2
    return {"type": "longrope",
            "short_factor": [round(1.0 + 0.05 * i, 4) for i in range(n)],
            "long_factor": [round(1.5 + 0.4 * i, 4) for i in range(n)],
            "short_mscale": 1.1, "long_mscale": 1.243163121016122,
            "original_max_position_embeddings": original_max}


def tiny_hf_config(model_type: str, **overrides: Any) -> dict[str, Any]:
    """``config.json`` dict of a tiny ``model_type`` model; ``overrides`` replace/add keys.

    PhiMoE's ``rope_scaling`` is rebuilt for the final head_dim (``hidden/heads``) unless given;
    its ``original_max_position_embeddings`` is 64 (``max_position_embeddings`` 256), so the long
    factors are reachable with short sequences.
    """
    if model_type not in _TINY:
        raise UnsupportedModelError(f"no tiny config for model_type {model_type!r}; known: {sorted(_TINY)}")
    d = {**_COMMON, **_TINY[model_type], "model_type": model_type, **overrides}
    if model_type == "gpt_oss" and "num_hidden_layers" in overrides and "layer_types" not in overrides:
        d.pop("layer_types")  # transformers' default pattern for the new depth
    if model_type == "phimoe" and "rope_scaling" not in overrides:
        d["rope_scaling"] = _longrope(d["hidden_size"] // d["num_attention_heads"], 64)
    if model_type == "qwen2_moe" and "max_window_layers" not in overrides:
        d["max_window_layers"] = d["num_hidden_layers"]
    return d


def write_random_hf_checkpoint(out_dir: str | os.PathLike, hf_config: dict[str, Any], seed: int = 0,
                               num_shards: int = 1, fused_experts: bool = False, dtype: str = "float32",
                               router_scale: float = 10.0) -> str:
    """Writes a random HF-layout checkpoint of ``hf_config`` (no torch); returns ``out_dir``.

    Weights from ``init_params`` (normal, std 0.02; norm scales ~1 +- 0.1, biases ~ +-0.02, all
    away from 1/0 so they are tested); router kernels times ``router_scale`` so routing is far
    from uniform. ``dtype``: float32 | bfloat16 | float16 (also written into config.json).
    """
    np_dtype = resolve_dtype(dtype)
    cfg = ModelConfig.from_hf(hf_config)
    params = init_params(cfg, seed=seed, dtype=np.float32)
    for layer in params["layers"]:
        if "moe" in layer:
            layer["moe"]["router"]["kernel"] *= router_scale
    tensors = {n: x.astype(np_dtype) for n, x in params_to_hf_tensors(cfg, params).items()}
    config = {**hf_config, "dtype": np_dtype.name}
    config.pop("torch_dtype", None)
    return write_hf_checkpoint(out_dir, config, tensors, num_shards=num_shards, fused_experts=fused_experts)


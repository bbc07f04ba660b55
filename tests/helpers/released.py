"""The architecture keys of released checkpoints' ``config.json`` files (key variants as the files
spell them) with their published total and active parameter counts."""

LONGROPE = {"type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.5] * 64,
            "short_mscale": 1.243163121016122, "long_mscale": 1.243163121016122,
            "original_max_position_embeddings": 4096}

GPT_OSS_YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                "original_max_position_embeddings": 4096}

# OpenAI's model card counts active parameters without the input embedding table (a lookup, no compute):
# 3.61B for gpt-oss-20b, of which 0.58B unembedding.
ACTIVE_WITHOUT_EMBEDDING = {"gpt-oss-20b"}

RELEASED = {
    # name: (config.json subset, published total params, published active params, relative tolerance)
    "OLMoE-1B-7B-0125-Instruct": (dict(
        model_type="olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8, rope_theta=10000.0,
        rms_norm_eps=1e-5, clip_qkv=None, norm_topk_prob=False, tie_word_embeddings=False,
        torch_dtype="bfloat16"), 6.92e9, 1.28e9, 0.01),
    "OLMoE-1B-7B-0924": (dict(
        model_type="olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8, rope_theta=10000.0,
        rope_scaling=None, rms_norm_eps=1e-5, clip_qkv=None, norm_topk_prob=False, attention_bias=False,
        max_position_embeddings=4096, tie_word_embeddings=False), 6.92e9, 1.28e9, 0.01),
    "Qwen2-57B-A14B": (dict(
        model_type="qwen2_moe", vocab_size=151936, hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, intermediate_size=18944, moe_intermediate_size=2560,
        shared_expert_intermediate_size=20480, num_experts=64, num_experts_per_tok=8, decoder_sparse_step=1,
        norm_topk_prob=False, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False, max_window_layers=28,
        tie_word_embeddings=False, torch_dtype="bfloat16"), 57.4e9, 14e9, 0.01),
    "Qwen1.5-MoE-A2.7B": (dict(
        model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=5632, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, num_experts=60, num_experts_per_tok=4, decoder_sparse_step=1,
        mlp_only_layers=[], norm_topk_prob=False, rope_theta=1e6, rms_norm_eps=1e-6, use_sliding_window=False,
        tie_word_embeddings=False, torch_dtype="bfloat16"), 14.3e9, 2.7e9, 0.01),
    "Qwen3-30B-A3B": (dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        attention_bias=False, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
        torch_dtype="bfloat16"), 30.5e9, 3.3e9, 0.01),
    "Phi-3.5-MoE-instruct": (dict(
        model_type="phimoe", vocab_size=32064, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=6400, num_local_experts=16, num_experts_per_tok=2,
        attention_bias=True, lm_head_bias=True, rms_norm_eps=1e-5, rope_theta=10000.0, router_jitter_noise=0.01,
        max_position_embeddings=131072, rope_scaling=LONGROPE, torch_dtype="bfloat16"), 41.9e9, 6.6e9, 0.01),
    "gpt-oss-20b": (dict(
        model_type="gpt_oss", vocab_size=201088, hidden_size=2880, num_hidden_layers=24, num_attention_heads=64,
        num_key_value_heads=8, head_dim=64, intermediate_size=2880, num_local_experts=32, num_experts_per_tok=4,
        experts_per_token=4, attention_bias=True, rms_norm_eps=1e-5, sliding_window=128, swiglu_limit=7.0,
        layer_types=["sliding_attention", "full_attention"] * 12, max_position_embeddings=131072,
        initial_context_length=4096, rope_theta=150000, rope_scaling=GPT_OSS_YARN, tie_word_embeddings=False,
        quantization_config={"quant_method": "mxfp4"}, torch_dtype="bfloat16"), 20.9e9, 3.6e9, 0.01),
}

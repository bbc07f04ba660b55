"""Qwen1.5-MoE-A2.7B-Chat (24 layers, 60 experts, top-4, shared expert; 14.3B params, 29 GB in bf16).

The common community choice for re-implementations. Needs hub access (or model.source="hf_dir").
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    return common.hub_model_config("Qwen/Qwen1.5-MoE-A2.7B-Chat", batch_size=32, model_axis=1)

"""OLMoE-1B-7B-0125-Instruct (16 layers, 64 experts, top-8; ~7B params, 14 GB in bf16: one GPU per replica).

The weakest multilingual contrast in Bandarkar et al.'s routing study. Needs hub access (or model.source="hf_dir").
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    return common.hub_model_config("allenai/OLMoE-1B-7B-0125-Instruct", batch_size=32, model_axis=1)

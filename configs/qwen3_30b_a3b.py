"""Qwen3-30B-A3B (48 layers, 128 experts, top-8; 30.5B params, 61 GB in bf16), thinking disabled.

Main model of studies R and U. The whole mesh is one model replica (experts split over all devices),
which fits one 80 GB GPU or spreads over several. Needs hub access (or model.source="hf_dir").
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    c = common.hub_model_config("Qwen/Qwen3-30B-A3B", batch_size=16, model_axis=-1)
    c.data.enable_thinking = False  # chat template with thinking disabled, as in studies R and U
    c.steer = common.study_steer(band="7-34", tau=0.4)  # Bandarkar et al.: band 8-35 (1-indexed), tau 0.4
    return c

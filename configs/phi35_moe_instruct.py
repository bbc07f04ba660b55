"""Phi-3.5-MoE-instruct (32 layers, 16 experts, top-2 sparsemixer; 42B params, 84 GB in bf16).

Does not fit one 80 GB GPU: the whole mesh is one model replica (16 experts split over 2, 4, 8 or 16
devices). Its first layer sends all languages to the same few experts (Bandarkar et al.). Needs hub access.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    c = common.hub_model_config("microsoft/Phi-3.5-MoE-instruct", batch_size=16, model_axis=-1)
    c.steer = common.study_steer(band="7-16", tau=0.3)  # Bandarkar et al.: band 8-17 (1-indexed), tau 0.3
    return c

"""GPT-OSS-20B (24 layers, 32 experts, top-4; 20.9B params, 42 GB in bf16 once its MXFP4 experts are
dequantised by the converter).

The third model of Bandarkar et al.'s routing study, where decoder layers 4-19 of 24 form its middle band (the band the
study steers); this config lets the analysis detect the band from the divergence curve, to be
compared with that one (set ``--config.analysis.middle_band='(4, 19)'`` to impose it). Alternating
sliding-window (128) and full attention layers, attention sinks, YaRN rope. Fits one 80 GB GPU with
data parallelism over the rest of the mesh. Needs hub access (or model.source="hf_dir").
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    c = common.hub_model_config("openai/gpt-oss-20b", batch_size=16, model_axis=1)
    c.steer = common.study_steer(band="3-18", tau=0.3, methods="hard,soft")  # Bandarkar et al.: 4-19 (1-indexed), hard
    return c

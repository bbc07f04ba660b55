"""Offline demo: a tiny RANDOM qwen2_moe model on the built-in corpus, every stage, CPU, < 2 minutes.

    python -m moe_jax.launch --config=configs/demo.py --workdir=/tmp/moe_jax_demo

The weights are random: the numbers exercise the pipeline and mean nothing.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location("moe_jax_configs_common", os.path.join(os.path.dirname(__file__), "common.py"))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config():
    c = common.default_config()
    c.model.source = "tiny_random"
    c.model.dtype = "float32"
    c.model.tiny.model_type = "qwen2_moe"  # GQA, shared expert, one dense layer (3 layers, 8 experts, top-3)
    c.data.source = "builtin"
    c.collect.batch_size = 8
    c.collect.pad_to_multiple = 32
    c.collect.token_topk = True  # enables the token-consistency analysis
    c.mesh.shape = {"data": -1, "model": 1}
    return c

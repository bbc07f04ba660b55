"""The public Python API: ``moe_jax.load`` (a checkpoint directory -> a callable ``MoeModel``) and
the names a notebook needs first. ``moe_jax/__init__`` re-exports ``load``.

    model = moe_jax.load("runs/demo/checkpoint")
    out = model(ids, attention_mask=mask, return_router_logits=True)
    out.router_logits                                   # [moe_layers, B, S, E] float32
"""

from __future__ import annotations

from moe_jax.convert.loader import load_model as load  # the loading lives in convert/ (layer 3): stages use it too
from moe_jax.models.config import ModelConfig
from moe_jax.models.intervention import Intervention
from moe_jax.models.model import MoeModel

__all__ = ["Intervention", "ModelConfig", "MoeModel", "load"]

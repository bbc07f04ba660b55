"""The public Python API: ``moe_jax.load`` (a checkpoint directory -> a callable ``MoeModel``) and
the names a notebook needs first. ``moe_jax/__init__`` re-exports ``load``.

    model = moe_jax.load("runs/demo/checkpoint")
    out = model(ids, attention_mask=mask, return_router_logits=True)
    out.router_logits                                   # [moe_layers, B, S, E] float32
"""

from __future__ import annotations

import os
from typing import Any

from moe_jax.convert.loader import load_params
from moe_jax.convert.tokenizer import load_tokenizer
from moe_jax.io import storage
from moe_jax.models.config import ModelConfig
from moe_jax.models.intervention import Intervention
from moe_jax.models.model import MoeModel

__all__ = ["Intervention", "ModelConfig", "MoeModel", "load"]


def load(path: str | os.PathLike, dtype: str = "float32", *, shardings: Any = None,
         backend: str = "auto", load_tokenizer: bool = True) -> MoeModel:
    """Loads an HF checkpoint directory or a converted moe_jax directory.

    Args:
      path: directory with ``config.json`` + safetensors, or the output of ``moe_jax.convert``.
      dtype: parameter/activation dtype, "float32", "bfloat16", "float16" or "auto" (the checkpoint's
        own). Loading a conversion that narrowed its source (float32 -> bfloat16) as float32 logs a
        warning: its logits stay ~1e-2 off the float32 reference.
      shardings: optional tree of ``jax.sharding.Sharding`` matching the params (see
        ``moe_jax.sharding``); each tensor is placed as it is read.
    """
    cfg, params = load_params(path, dtype=dtype, shardings=shardings)
    tokenizer = _maybe_tokenizer(path) if load_tokenizer else None
    return MoeModel(cfg, params, tokenizer=tokenizer, backend=backend)


def _maybe_tokenizer(path) -> Any:
    """The checkpoint's tokenizer (local or ``gs://``, see ``convert.tokenizer``), or None without one."""
    path = os.fspath(path)
    if not any(storage.exists(storage.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return load_tokenizer(path)

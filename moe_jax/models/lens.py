"""The logit lens: the model's own final norm and unembedding applied to an intermediate residual stream.

For layer ``l`` the lens reads ``residual_stream(out)[l]`` (the stream before any final norm) as if it
were the last layer's output: ``softmax(W_U · norm_f(h_l))``. At the last layer it equals the model's
logits. Pure functions over the parameter tree, usable on any layer's states from a notebook::

    out = model(ids, attention_mask=mask, return_hidden_states=True)
    lens = logit_lens(model.param_tree, model.cfg, residual_stream(out)[6])   # [B, S, V]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import ModelOutput, lm_head


def residual_stream(out: ModelOutput) -> jax.Array:
    """``[layers + 1, B, S, H]`` float32: entry 0 the embeddings, entry l the residual stream after layer
    l, none after the final norm (``out.hidden_states`` with its last entry replaced by ``out.last_residual``).
    ``out`` must come from a forward with ``return_hidden_states=True``."""
    if out.hidden_states is None or out.last_residual is None:
        raise ValueError("the forward ran without return_hidden_states=True: it returned no hidden states")
    return jnp.concatenate([out.hidden_states[:-1], out.last_residual[None]])


def logit_lens(params: dict, cfg: ModelConfig, residual: jax.Array) -> jax.Array:
    """Logits ``[..., V]`` float32 that the final norm and unembedding give a residual stream ``[..., H]``
    (run in the parameters' dtype, as the model's own head)."""
    return lm_head(params, cfg, residual.astype(params["embed"].dtype)).astype(jnp.float32)

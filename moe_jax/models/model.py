"""A thin Flax NNX module around the pure ``forward`` (``moe_jax.load`` builds one from a checkpoint).

Router outputs and hidden states are sown as ``nnx.Intermediate`` when asked for, so both styles work::

    out = model(ids, attention_mask=mask, return_router_logits=True, return_hidden_states=True)
    out.router_logits                                   # [moe_layers, B, S, E] float32
    out.hidden_states                                   # [layers + 1, B, S, H] float32

    out, inter = nnx.capture(model, nnx.Intermediate)(ids, return_router_logits=True)
    inter["router_logits"]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import ModelOutput, forward
from moe_jax.models.generate import GenerateOutput, generate
from moe_jax.models import intervention as iv_lib
from moe_jax.models.intervention import Intervention


def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


class MoeModel(nnx.Module):
    """Holds a parameter tree as ``nnx.Param`` leaves; calls the jitted pure forward."""

    def __init__(self, cfg: ModelConfig, params: dict, tokenizer: Any = None, backend: str = "auto"):
        self.cfg = cfg
        self.backend = backend
        self.tokenizer = tokenizer
        self.params = nnx.data(jax.tree.map(nnx.Param, params))

    @property
    def param_tree(self) -> dict:
        """The plain parameter pytree (what ``forward`` takes)."""
        return jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_var)

    def __call__(self, input_ids, attention_mask=None, *, positions=None,
                 intervention: Intervention | None = None, return_router_logits: bool = False,
                 return_hidden_states: bool = False, compute_logits: bool = True,
                 allow_over_k: bool = False) -> ModelOutput:
        """Forward of ``input_ids [B, S]`` (or ``[S]``: one sequence, batch 1), checked first
        (``check_inputs``); ``allow_over_k`` lets an intervention force more than top-k experts.
        ``return_hidden_states``: ``out.hidden_states [layers + 1, B, S, H]`` as transformers'
        ``output_hidden_states`` and ``out.last_residual [B, S, H]`` (before the final norm)."""
        ids, mask = check_inputs(self.cfg, input_ids, attention_mask, intervention, allow_over_k)
        out = forward(self.param_tree, self.cfg, ids, mask, positions, intervention,
                      return_router=return_router_logits, compute_logits=compute_logits,
                      backend=self.backend, return_hidden_states=return_hidden_states)
        # Sow only under nnx.capture (which sets __captures__): sow outside it is deprecated and
        # would keep per-call arrays alive on the module.
        if hasattr(self, "__captures__"):
            sown = (("router_logits", "topk_idx", "topk_weights") if return_router_logits else ()) + \
                   (("hidden_states", "last_residual") if return_hidden_states else ())
            for name in sown:
                self.sow(nnx.Intermediate, name, getattr(out, name))
        return out

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 64, stop_token_ids=None,
                 intervention: Intervention | None = None, return_router: bool = False,
                 allow_over_k: bool = False) -> GenerateOutput:
        """Greedy generation with a KV cache (``generate.generate``) from prompts ``[B, P]`` padded on
        either side (or ``[P]``: one prompt, batch 1), checked first (``check_inputs``).
        ``stop_token_ids`` None: the tokenizer's eos token when there is one (pass ``[]`` for none);
        ``max_new_tokens`` a positive int and stop ids in the vocabulary (``check_generation``).
        Padding emitted after a stop is the tokenizer's pad token, else 0."""
        input_ids, attention_mask = check_inputs(self.cfg, input_ids, attention_mask, intervention, allow_over_k)
        tok = self.tokenizer
        if stop_token_ids is None:
            eos = getattr(tok, "eos_token_id", None)
            stop_token_ids = [] if eos is None else [eos]
        check_generation(self.cfg, max_new_tokens, stop_token_ids)
        pad = getattr(tok, "pad_token_id", None)
        return generate(self.param_tree, self.cfg, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                        stop_token_ids=stop_token_ids, pad_id=0 if pad is None else pad,
                        intervention=intervention, backend=self.backend, return_router=return_router)

    def no_intervention(self) -> Intervention:
        return Intervention.none(self.cfg.num_moe_layers, self.cfg.num_experts)


def check_inputs(cfg: ModelConfig, input_ids, attention_mask=None, intervention: Intervention | None = None,
                 allow_over_k: bool = False) -> tuple[jax.Array, jax.Array | None]:
    """``(ids [B, S] int32, mask [B, S] int32 or None)`` from a public entry point's arguments: integer
    ids in ``[0, vocab_size)`` (``[S]`` becomes ``[1, S]``), a mask of the same shape, and an
    intervention that fits the model (``intervention.check``). ValueError naming the culprit otherwise.
    Values are checked only when concrete (not under an outer ``jit``)."""
    ids = input_ids if isinstance(input_ids, jax.Array) else np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq] or [seq], got shape {tuple(ids.shape)}")
    if ids.size and not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
    if ids.size and not isinstance(ids, jax.core.Tracer):
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"input_ids holds token id {lo if lo < 0 else hi}, outside the vocabulary "
                             f"[0, {cfg.vocab_size}) of this model (vocab_size={cfg.vocab_size})")
    mask = None
    if attention_mask is not None:
        mask = attention_mask if isinstance(attention_mask, jax.Array) else np.asarray(attention_mask)
        if mask.ndim == 1 and np.ndim(input_ids) == 1:
            mask = mask[None]
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"attention_mask has shape {tuple(np.shape(attention_mask))}, input_ids "
                             f"{tuple(np.shape(input_ids))}: they must be equal")
        mask = jnp.asarray(mask, jnp.int32)
    if intervention is not None and not any(isinstance(f, jax.core.Tracer) for f in intervention):
        iv_lib.check(intervention, cfg.top_k, cfg.moe_layer_ids, cfg.num_experts, allow_over_k=allow_over_k)
    return jnp.asarray(ids, jnp.int32), mask


def check_generation(cfg: ModelConfig, max_new_tokens, stop_token_ids) -> None:
    """ValueError unless ``max_new_tokens`` is a positive int and every stop id is in ``[0, vocab_size)``."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    bad = [t for t in stop_token_ids if not 0 <= int(t) < cfg.vocab_size]
    if bad:
        raise ValueError(f"stop_token_ids holds {bad}, outside the vocabulary [0, {cfg.vocab_size}) of this model")

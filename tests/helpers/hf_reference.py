"""Test-only helpers around transformers (torch): tiny reference models and their raw outputs.

Import from tests as ``from tests.helpers.hf_reference import ...``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM


def build_hf_model(hf_config: dict[str, Any], seed: int = 0, router_scale: float = 10.0) -> torch.nn.Module:
    """A float32 eager transformers model of ``hf_config`` in eval mode, with random weights.

    Norm weights are ``1 + 0.2 N(0,1)``, every bias (norms, attention, lm_head, router, experts)
    ``0.1 N(0,1)``, attention sinks ``N(0,1)``, so none sits at its 1/0 init; router weights are scaled by ``router_scale`` so that routing is
    far from uniform (and top-k choices are not near-ties).
    """
    torch.manual_seed(seed)
    config = AutoConfig.for_model(**hf_config)
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_config(config, experts_implementation="eager", **kwargs)
    except TypeError:  # transformers v4: no experts_implementation
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    routers = {id(m) for m in _routers(model)}
    with torch.no_grad():
        for name, module in model.named_modules():
            if id(module) in routers:
                module.weight.mul_(router_scale)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".sinks"):  # GPT-OSS attention sinks, on the scale of attention logits
                p.copy_(torch.randn(p.shape, generator=gen))
            elif "norm" in name.rsplit(".", 2)[-2] and p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def save_hf_model(model: torch.nn.Module, out_dir: str | os.PathLike, max_shard_size: str | int | None = None,
                  **kwargs: Any) -> str:
    """``save_pretrained`` with safetensors (``max_shard_size`` e.g. "20KB" gives several shards);
    extra kwargs go to ``save_pretrained`` (e.g. ``save_original_format=False`` for fused experts)."""
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(os.fspath(out_dir), **kwargs)
    return os.fspath(out_dir)


def _routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The gate module of every MoE layer, in layer order (dense layers have none)."""
    num_experts = getattr(model.config, "num_experts", None) or getattr(model.config, "num_local_experts")
    out = []
    for layer in model.model.layers:
        block = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe")
        for attr in ("gate", "router"):
            m = getattr(block, attr, None)
            w = getattr(m, "weight", None)
            if w is not None and w.ndim == 2 and w.shape[0] == num_experts:
                out.append(m)
                break
    return out


def reference_forward(model: torch.nn.Module, input_ids: Any, attention_mask: Any = None,
                      position_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Runs the model; returns ``(logits [B,S,V], router_logits [L_moe,B,S,E])`` as float32 NumPy.

    Router logits are the raw gate outputs ``x @ W_g.T`` captured by forward hooks on the gate
    modules (v5 routers return ``(logits, weights, indices)``; v4 gates are plain Linear).
    """
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    mask = None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask), dtype=torch.long)
    pos = None if position_ids is None else torch.as_tensor(np.asarray(position_ids), dtype=torch.long)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handles = [m.register_forward_hook(hook) for m in _routers(model)]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    B, S = ids.shape
    router = np.stack([c.float().numpy().reshape(B, S, -1) for c in captured]) if captured else \
        np.zeros((0, B, S, 0), np.float32)
    return out.logits.float().numpy(), router.astype(np.float32)


def expected_params(cfg: Any, model: torch.nn.Module) -> dict[tuple, np.ndarray]:
    """``{param path: array}`` the converted params must equal, read by hand from the model's
    in-memory (transformers v5) state dict: Linear weights transposed, fused experts
    ``gate_up_proj [E, 2I, H]`` split (gate rows first), ``down_proj [E, H, I]`` transposed.
    An independent statement of the layout, to check ``moe_jax.convert`` against."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out: dict[tuple, np.ndarray] = {("embed",): sd["model.embed_tokens.weight"]}
    I = cfg.expert_width

    def norm(path, name):
        out[path + ("scale",)] = sd[f"{name}.weight"]
        if f"{name}.bias" in sd:
            out[path + ("bias",)] = sd[f"{name}.bias"]

    norm(("final_norm",), "model.norm")
    if not cfg.tie_word_embeddings:
        out[("lm_head", "kernel")] = sd["lm_head.weight"].T
        if "lm_head.bias" in sd:
            out[("lm_head", "bias")] = sd["lm_head.bias"]
    for i in range(cfg.num_layers):
        p, L = f"model.layers.{i}.", ("layers", i)
        norm(L + ("attn_norm",), p + "input_layernorm")
        norm(L + ("mlp_norm",), p + "post_attention_layernorm")
        for x in "qkvo":
            out[L + ("attn", x, "kernel")] = sd[f"{p}self_attn.{x}_proj.weight"].T
            if f"{p}self_attn.{x}_proj.bias" in sd:
                out[L + ("attn", x, "bias")] = sd[f"{p}self_attn.{x}_proj.bias"]
        for x in ("q_norm", "k_norm"):
            if f"{p}self_attn.{x}.weight" in sd:
                out[L + ("attn", x, "scale")] = sd[f"{p}self_attn.{x}.weight"]
        if f"{p}mlp.experts.gate_up_proj" not in sd:  # dense layer
            for x in ("gate", "up", "down"):
                out[L + ("mlp", x)] = sd[f"{p}mlp.{x}_proj.weight"].T
            continue
        router = sd.get(f"{p}mlp.gate.weight", sd.get(f"{p}mlp.router.weight"))
        out[L + ("moe", "router", "kernel")] = router.T
        gate_up = sd[f"{p}mlp.experts.gate_up_proj"]
        out[L + ("moe", "gate")] = gate_up[:, :I, :].transpose(0, 2, 1)
        out[L + ("moe", "up")] = gate_up[:, I:, :].transpose(0, 2, 1)
        out[L + ("moe", "down")] = sd[f"{p}mlp.experts.down_proj"].transpose(0, 2, 1)
        if f"{p}mlp.shared_expert_gate.weight" in sd:
            for x in ("gate", "up", "down"):
                out[L + ("moe", "shared", x)] = sd[f"{p}mlp.shared_expert.{x}_proj.weight"].T
            out[L + ("moe", "shared_gate", "kernel")] = sd[f"{p}mlp.shared_expert_gate.weight"].T
    return out


def flatten(tree: Any, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    """``{path: leaf as NumPy}`` of a param tree (list indices as int)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, prefix + (key,)).items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in flatten(sub, prefix + (i,)).items()}
    return {prefix: np.asarray(tree)}

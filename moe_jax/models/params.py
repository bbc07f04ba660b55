"""The parameter tree of every family: shapes, logical sharding axes and random init.

Layout (kernels are ``[in, out]`` so that ``y = x @ kernel``)::

    {"embed": [vocab, hidden],
     "layers": [  # one dict per run of layers (ModelConfig.layer_runs); every leaf below has a
                  # leading axis [n] over the run's n layers (logical axis "layers", never sharded)
        {"attn_norm": {"scale": [hidden], "bias": [hidden] (LayerNorm only)},
         "attn": {"q": {"kernel": [hidden, heads*head_dim], "bias"?},
                  "k": {"kernel": [hidden, kv_heads*head_dim], "bias"?},
                  "v": {"kernel": [hidden, kv_heads*head_dim], "bias"?},
                  "o": {"kernel": [heads*head_dim, hidden], "bias"?},
                  "q_norm": {"scale": [head_dim] | [heads*head_dim]}?,   # qk_norm "head" | "full"
                  "k_norm": {"scale": [head_dim] | [kv_heads*head_dim]}?,
                  "sinks": [heads]?},                                         # attention_sinks
         "mlp_norm": {...like attn_norm},
         # MoE layer:
         "moe": {"router": {"kernel": [hidden, experts], "bias": [experts]?},
                 "gate": [experts, hidden, width], "up": [experts, hidden, width],
                 "down": [experts, width, hidden],
                 "gate_bias": [experts, width]?, "up_bias": [experts, width]?,   # expert_bias
                 "down_bias": [experts, hidden]?,
                 "shared": {"gate": [hidden, s], "up": [hidden, s], "down": [s, hidden]}?,
                 "shared_gate": {"kernel": [hidden, 1]}?},
         # or a dense layer:
         "mlp": {"gate": [hidden, dense], "up": [hidden, dense], "down": [dense, hidden]}},
        ...],
     "final_norm": {"scale": [hidden], "bias"?},
     "lm_head": {"kernel": [hidden, vocab], "bias": [vocab]?}}   # absent when tied to embed

A run is a maximal sequence of consecutive decoder layers with the same structure (MoE or dense
MLP): most models are one run; Qwen2-MoE's ``mlp_only_layers`` / ``decoder_sparse_step`` make
several. The decoder scans each run's stack, so compile time does not grow with depth.
``layer_params(params, cfg, i)`` is decoder layer ``i``'s dict without the leading axis.

Every leaf has a tuple of logical axis names (``logical_axes``) that ``moe_jax.sharding`` maps
to mesh axes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models.config import ModelConfig

Spec = tuple[tuple[int, ...], tuple[str | None, ...]]  # (shape, logical axes)


def _norm(cfg: ModelConfig) -> dict[str, Spec]:
    d = {"scale": ((cfg.hidden_size,), ("embed",))}
    if cfg.family.norm == "layer":
        d["bias"] = ((cfg.hidden_size,), ("embed",))
    return d


def _linear(n_in: int, n_out: int, axes: tuple[str | None, str | None], bias: bool) -> dict[str, Spec]:
    d = {"kernel": ((n_in, n_out), axes)}
    if bias:
        d["bias"] = ((n_out,), (axes[1],))
    return d


def _mlp(hidden: int, width: int) -> dict[str, Spec]:
    return {"gate": ((hidden, width), ("embed", "mlp")),
            "up": ((hidden, width), ("embed", "mlp")),
            "down": ((width, hidden), ("mlp", "embed"))}


def layer_spec(cfg: ModelConfig, layer: int) -> dict[str, Any]:
    H, D = cfg.hidden_size, cfg.head_dim
    q_out, kv_out = cfg.num_heads * D, cfg.num_kv_heads * D
    attn = {
        "q": _linear(H, q_out, ("embed", "heads"), cfg.qkv_bias),
        "k": _linear(H, kv_out, ("embed", "kv_heads"), cfg.qkv_bias),
        "v": _linear(H, kv_out, ("embed", "kv_heads"), cfg.qkv_bias),
        "o": _linear(q_out, H, ("heads", "embed"), cfg.o_bias),
    }
    if cfg.family.qk_norm == "head":
        attn["q_norm"] = {"scale": ((D,), (None,))}
        attn["k_norm"] = {"scale": ((D,), (None,))}
    elif cfg.family.qk_norm == "full":
        attn["q_norm"] = {"scale": ((q_out,), ("heads",))}
        attn["k_norm"] = {"scale": ((kv_out,), ("kv_heads",))}
    if cfg.family.attention_sinks:
        attn["sinks"] = ((cfg.num_heads,), (None,))
    spec: dict[str, Any] = {"attn_norm": _norm(cfg), "attn": attn, "mlp_norm": _norm(cfg)}
    if cfg.moe_layers[layer]:
        E, W = cfg.num_experts, cfg.expert_width
        moe: dict[str, Any] = {
            "router": _linear(H, E, ("embed", None), cfg.family.router_bias),
            "gate": ((E, H, W), ("expert", "embed", "expert_mlp")),
            "up": ((E, H, W), ("expert", "embed", "expert_mlp")),
            "down": ((E, W, H), ("expert", "expert_mlp", "embed")),
        }
        if cfg.family.expert_bias:
            moe["gate_bias"] = ((E, W), ("expert", "expert_mlp"))
            moe["up_bias"] = ((E, W), ("expert", "expert_mlp"))
            moe["down_bias"] = ((E, H), ("expert", "embed"))
        if cfg.shared_expert_width:
            moe["shared"] = _mlp(H, cfg.shared_expert_width)
            moe["shared_gate"] = {"kernel": ((H, 1), ("embed", None))}
        spec["moe"] = moe
    else:
        spec["mlp"] = _mlp(H, cfg.dense_width)
    return spec


LAYERS_AXIS = "layers"  # logical axis of the leading [n] axis of a run's stacked leaves


def run_spec(cfg: ModelConfig, run: int) -> dict[str, Any]:
    """Spec of run ``run`` (``cfg.layer_runs``): its layers' spec with a leading ``[n]`` axis."""
    start, stop, _ = cfg.layer_runs[run]
    return jax.tree.map(lambda s: ((stop - start,) + s[0], (LAYERS_AXIS,) + s[1]), layer_spec(cfg, start),
                        is_leaf=_is_spec)


def param_spec(cfg: ModelConfig) -> dict[str, Any]:
    """Tree of ``(shape, logical_axes)`` leaves describing the full parameter tree."""
    spec: dict[str, Any] = {
        "embed": ((cfg.vocab_size, cfg.hidden_size), ("vocab", "embed")),
        "layers": [run_spec(cfg, r) for r in range(len(cfg.layer_runs))],
        "final_norm": _norm(cfg),
    }
    if not cfg.tie_word_embeddings:
        spec["lm_head"] = _linear(cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), cfg.lm_head_bias)
    return spec


def _is_spec(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple) and isinstance(x[1], tuple)


def map_spec(fn: Callable[[tuple[str, ...], Spec], Any], cfg: ModelConfig) -> dict[str, Any]:
    """Maps ``fn(path, (shape, axes))`` over the spec tree, path being a tuple of key strings."""
    def rec(node, path):
        if _is_spec(node):
            return fn(path, node)
        if isinstance(node, dict):
            return {k: rec(v, path + (k,)) for k, v in node.items()}
        return [rec(v, path + (str(i),)) for i, v in enumerate(node)]
    return rec(param_spec(cfg), ())


def param_shapes(cfg: ModelConfig, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Tree of ``jax.ShapeDtypeStruct``."""
    return map_spec(lambda _, s: jax.ShapeDtypeStruct(s[0], jnp.dtype(dtype)), cfg)


def logical_axes(cfg: ModelConfig) -> dict[str, Any]:
    """Tree of logical-axis-name tuples, same structure as the params."""
    return map_spec(lambda _, s: s[1], cfg)


def init_params(cfg: ModelConfig, seed: int = 0, dtype: Any = jnp.float32) -> dict[str, Any]:
    """Random parameters (normal, std 0.02; norm scales near 1) as NumPy arrays, for demos and tests.

    Drawn layer by layer and then stacked, so a seed gives the same values whatever the layout."""
    rng = np.random.default_rng(seed)

    def draw(node, name=""):
        if _is_spec(node):
            base = 1.0 if name == "scale" else 0.0
            x = base + (0.1 if name == "scale" else 0.02) * rng.standard_normal(node[0])
            return np.asarray(x, dtype=jnp.dtype(dtype))
        return {k: draw(v, k) for k, v in node.items()}
    spec = param_spec(cfg)
    out = {"embed": draw(spec["embed"], "embed"),
           "layers": stack_layers(cfg, [draw(layer_spec(cfg, i)) for i in range(cfg.num_layers)])}
    return out | {k: draw(v) for k, v in spec.items() if k not in out}


def stack_layers(cfg: ModelConfig, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-decoder-layer dicts (NumPy leaves) -> the runs' stacked dicts (``params["layers"]``)."""
    if len(layers) != cfg.num_layers:
        raise ValueError(f"{len(layers)} layer dicts for a model of {cfg.num_layers} layers")
    return [jax.tree.map(lambda *xs: np.stack(xs), *layers[start:stop]) for start, stop, _ in cfg.layer_runs]


def layer_params(params: dict[str, Any], cfg: ModelConfig, layer: int) -> dict[str, Any]:
    """Decoder layer ``layer``'s parameter dict (its row of its run's stack, leaves without the
    leading axis): the per-layer view of ``params["layers"]``."""
    run, row = cfg.layer_run(layer)
    return jax.tree.map(lambda x: x[row], params["layers"][run])


def unstack_layers(params: dict[str, Any], cfg: ModelConfig) -> dict[str, Any]:
    """``params`` with ``"layers"`` as one dict per decoder layer (``layer_params``), for tests and
    tools that compare layer by layer."""
    return {**params, "layers": [layer_params(params, cfg, i) for i in range(cfg.num_layers)]}


def path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)

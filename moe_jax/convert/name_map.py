"""Hugging Face tensor names <-> parameter-tree leaves, as one table for every family.

The table maps each leaf of ``param_spec(cfg)`` (see ``moe_jax.models.params``) to the HF
tensor(s) it comes from and the transform between the two layouts. Family differences are
data: ``FamilySpec.hf_moe_prefix`` ("mlp" or "block_sparse_moe") picks the MoE block name and
the expert projection names; which leaves exist (biases, qk-norms, shared expert, dense layers,
lm_head) is decided by ``param_spec``. ``plan(cfg, available)`` expands the table into one
``Source`` per HF tensor, which the loader, the validator and the exporter all share. Decoder layers
are stacked per run (``ModelConfig.layer_runs``): layer ``i``'s tensors target its run's leaves
(``("layers", run, ...)``) at row ``Source.row`` of their leading axis.

Expert layouts on disk (both accepted, chosen per layer by what the checkpoint contains):
- per expert (released checkpoints, ``save_pretrained`` in v4 and v5):
  ``{moe}.experts.{e}.{gate,up,down}_proj.weight`` ([I,H], [I,H], [H,I]); PhiMoE/Mixtral name
  them ``w1`` (gate), ``w3`` (up), ``w2`` (down).
- fused (transformers v5 in-memory layout, ``save_pretrained(save_original_format=False)``):
  ``mlp.experts.gate_up_proj [E, 2I, H]`` (gate rows first) and ``mlp.experts.down_proj
  [E, H, I]``; the transposed variant ``[E, H, 2I]`` / ``[E, I, H]`` is accepted too (the pair's
  orientation is read from whichever of the two shapes is unambiguous).
- interleaved (``FamilySpec.gate_up_layout == "interleaved"``, GPT-OSS): ``mlp.experts.gate_up_proj
  [E, H, 2I]`` with gate = even columns, up = odd columns, ``gate_up_proj_bias [E, 2I]`` likewise,
  ``down_proj [E, I, H]``, ``down_proj_bias [E, H]``; each weight either plain or MXFP4-packed as
  ``{name}_blocks`` + ``{name}_scales`` (``moe_jax.convert.mxfp4``), dequantised while it is read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from moe_jax.convert import mxfp4
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import layer_spec, param_spec

Path = tuple[Any, ...]  # param-tree path, list indices as int: ("layers", 0, "moe", "gate") (run 0's stack)

# Transform kinds (HF layout -> param layout).
COPY = "copy"                       # same array
LINEAR = "linear"                   # [out, in] -> kernel [in, out]
EXPERT = "expert"                   # one expert's [out, in] -> slice [e] of a stacked [E, in, out]
FUSED_GATE_UP = "fused_gate_up"     # [E, 2I, H] -> gate, up [E, H, I]
FUSED_GATE_UP_T = "fused_gate_up_t"  # [E, H, 2I] -> gate, up [E, H, I]
FUSED_DOWN = "fused_down"           # [E, H, I] -> down [E, I, H]
FUSED_DOWN_T = "fused_down_t"       # [E, I, H] -> down [E, I, H]
FUSED_GATE_UP_INTERLEAVED = "fused_gate_up_interleaved"  # [E, H, 2I], gate even columns -> gate, up [E, H, I]
BIAS_INTERLEAVED = "bias_interleaved"  # [E, 2I], gate even entries -> gate_bias, up_bias [E, I]

# Per-expert projection names, by MoE block name.
EXPERT_PROJ: dict[str, dict[str, str]] = {
    "mlp": {"gate": "gate_proj", "up": "up_proj", "down": "down_proj"},
    "block_sparse_moe": {"gate": "w1", "up": "w3", "down": "w2"},
}

# Leaf under a decoder layer ("/"-joined path) -> (HF names relative to "model.layers.{i}.",
# the first canonical, the others accepted aliases; transform). "{moe}" is FamilySpec.hf_moe_prefix.
# "mlp.router.weight" is the transformers-v5 native name of PhiMoE's router.
LAYER_TABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "attn_norm/scale": (("input_layernorm.weight",), COPY),
    "attn_norm/bias": (("input_layernorm.bias",), COPY),
    "mlp_norm/scale": (("post_attention_layernorm.weight",), COPY),
    "mlp_norm/bias": (("post_attention_layernorm.bias",), COPY),
    **{f"attn/{p}/kernel": ((f"self_attn.{p}_proj.weight",), LINEAR) for p in "qkvo"},
    **{f"attn/{p}/bias": ((f"self_attn.{p}_proj.bias",), COPY) for p in "qkvo"},
    "attn/q_norm/scale": (("self_attn.q_norm.weight",), COPY),
    "attn/k_norm/scale": (("self_attn.k_norm.weight",), COPY),
    "moe/router/kernel": (("{moe}.{router}.weight", "mlp.router.weight"), LINEAR),
    "moe/router/bias": (("{moe}.{router}.bias",), COPY),
    "attn/sinks": (("self_attn.sinks",), COPY),
    **{f"moe/shared/{p}": ((f"{{moe}}.shared_expert.{p}_proj.weight",), LINEAR) for p in ("gate", "up", "down")},
    "moe/shared_gate/kernel": (("{moe}.shared_expert_gate.weight",), LINEAR),
    # A dense (non-MoE) layer: exact names, never a prefix of "mlp.gate".
    **{f"mlp/{p}": ((f"mlp.{p}_proj.weight",), LINEAR) for p in ("gate", "up", "down")},
}
EXPERT_LEAVES = ("moe/gate", "moe/up", "moe/down")
EXPERT_BIAS_LEAVES = ("moe/gate_bias", "moe/up_bias", "moe/down_bias")
FUSED_NAMES = {"gate_up": ("mlp.experts.gate_up_proj", "{moe}.experts.gate_up_proj"),
               "down": ("mlp.experts.down_proj", "{moe}.experts.down_proj")}

TOP_TABLE: dict[str, tuple[tuple[str, ...], str]] = {
    "embed": (("model.embed_tokens.weight",), COPY),
    "final_norm/scale": (("model.norm.weight",), COPY),
    "final_norm/bias": (("model.norm.bias",), COPY),
    "lm_head/kernel": (("lm_head.weight",), LINEAR),
    "lm_head/bias": (("lm_head.bias",), COPY),
}


@dataclasses.dataclass(frozen=True)
class Source:
    """One HF tensor and where it goes in the param tree."""

    names: tuple[str, ...]  # candidate full HF names; names[0] is canonical (what export writes)
    shape: tuple[int, ...]  # expected HF shape
    kind: str  # transform, one of the kinds above
    targets: tuple[Path, ...]  # param leaves written (two for FUSED_GATE_UP*)
    expert: int | None = None  # slice of the stacked target (EXPERT only)
    # Decoder-layer tensors: the row of the run's stack (targets' leading axis) this tensor fills.
    row: int | None = None
    # MXFP4-packed: ``names``/``shape`` are the blocks tensor's, these its scales'; the dequantised
    # array has the plain tensor's layout, then ``kind`` applies.
    scales: tuple[str, ...] = ()
    scales_shape: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return self.names[0]


def _dedupe(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _hf_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """HF shape of a tensor whose (first) target leaf has param shape ``shape``."""
    if kind == COPY:
        return shape
    if kind == LINEAR:
        return shape[::-1]
    if kind == EXPERT:
        return (shape[2], shape[1])
    if kind == BIAS_INTERLEAVED:
        return (shape[0], 2 * shape[1])
    E, a, b = shape
    return {FUSED_GATE_UP: (E, 2 * b, a), FUSED_GATE_UP_T: (E, a, 2 * b),
            FUSED_DOWN: (E, b, a), FUSED_DOWN_T: (E, a, b), FUSED_GATE_UP_INTERLEAVED: (E, a, 2 * b)}[kind]


def _leaves(spec: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple[int, ...]]]:
    """("a/b/c", shape) for every leaf of a spec dict (lists do not occur below a layer)."""
    for k, v in spec.items():
        if isinstance(v, dict):
            yield from _leaves(v, prefix + (k,))
        else:
            yield "/".join(prefix + (k,)), v[0]


def _to_path(prefix: Path, key: str) -> Path:
    return prefix + tuple(key.split("/"))


def _fused_transposed(cfg: ModelConfig, available: Mapping[str, tuple[int, ...]],
                      gate_up: str | None, down: str | None) -> bool:
    """Whether a layer's fused experts are stored [E, H, 2I] / [E, I, H] (vs [E, 2I, H] / [E, H, I])."""
    H, I = cfg.hidden_size, cfg.expert_width
    gu = tuple(available.get(gate_up, ())) if gate_up else ()
    dn = tuple(available.get(down, ())) if down else ()
    if 2 * I != H and gu[1:] == (H, 2 * I):
        return True
    if I != H and dn[1:] == (I, H):
        return True
    return False


def layer_plan(cfg: ModelConfig, i: int, available: Mapping[str, tuple[int, ...]] | None = None) -> list[Source]:
    """Sources of decoder layer ``i``: targets in its run's stack (``cfg.layer_run``), ``row`` set.
    ``available`` (HF name -> shape) selects the expert layout."""
    sources = _layer_sources(cfg, i, available)
    row = cfg.layer_run(i)[1]
    return [dataclasses.replace(s, row=row) for s in sources]


def _layer_sources(cfg: ModelConfig, i: int, available: Mapping[str, tuple[int, ...]] | None) -> list[Source]:
    moe, router = cfg.family.hf_moe_prefix, cfg.family.hf_router_name
    base = f"model.layers.{i}."
    prefix: Path = ("layers", cfg.layer_run(i)[0])
    fmt = lambda t, **kw: base + t.format(moe=moe, router=router, **kw)  # noqa: E731
    spec = dict(_leaves(layer_spec(cfg, i)))
    out = []
    for key, shape in spec.items():
        if key in EXPERT_LEAVES + EXPERT_BIAS_LEAVES:
            continue
        names, kind = LAYER_TABLE[key]
        out.append(Source(_dedupe([fmt(n) for n in names]), _hf_shape(kind, shape), kind, (_to_path(prefix, key),)))
    if not cfg.moe_layers[i]:
        return out
    available = available or {}
    if cfg.family.gate_up_layout == "interleaved":
        return out + _interleaved_experts(prefix, fmt, spec, available)
    fused = {w: _dedupe([fmt(n) for n in FUSED_NAMES[w]]) for w in FUSED_NAMES}
    present = {w: next((n for n in fused[w] if n in available), None) for w in fused}
    if present["gate_up"] or present["down"]:
        t = _fused_transposed(cfg, available, present["gate_up"], present["down"])
        gu_kind, dn_kind = (FUSED_GATE_UP_T, FUSED_DOWN_T) if t else (FUSED_GATE_UP, FUSED_DOWN)
        out.append(Source(fused["gate_up"], _hf_shape(gu_kind, spec["moe/gate"]), gu_kind,
                          (_to_path(prefix, "moe/gate"), _to_path(prefix, "moe/up"))))
        out.append(Source(fused["down"], _hf_shape(dn_kind, spec["moe/down"]), dn_kind,
                          (_to_path(prefix, "moe/down"),)))
        return out
    proj = EXPERT_PROJ[moe]
    for e in range(cfg.num_experts):  # expert-major: one layer's experts complete together
        for key in EXPERT_LEAVES:
            which = key.split("/")[1]
            out.append(Source((fmt("{moe}.experts.{e}.{p}.weight", e=e, p=proj[which]),),
                              _hf_shape(EXPERT, spec[key]), EXPERT, (_to_path(prefix, key),), e))
    return out


def _interleaved_experts(prefix: Path, fmt, spec: dict, available: Mapping[str, tuple[int, ...]]) -> list[Source]:
    """GPT-OSS experts: interleaved fused gate/up, transposed down, their biases; a weight whose
    ``_blocks`` tensor is available is read MXFP4-packed."""
    out = []
    for proj, kind, keys in (("gate_up_proj", FUSED_GATE_UP_INTERLEAVED, ("moe/gate", "moe/up")),
                             ("down_proj", FUSED_DOWN_T, ("moe/down",))):
        name = fmt("{moe}.experts." + proj)
        shape = _hf_shape(kind, spec[keys[0]])
        targets = tuple(_to_path(prefix, k) for k in keys)
        if name + mxfp4.BLOCKS in available:
            blocks, scales = mxfp4.packed_shapes(name, shape)
            out.append(Source((name + mxfp4.BLOCKS,), blocks, kind, targets,
                              scales=(name + mxfp4.SCALES,), scales_shape=scales))
        else:
            out.append(Source((name,), shape, kind, targets))
    out.append(Source((fmt("{moe}.experts.gate_up_proj_bias"),), _hf_shape(BIAS_INTERLEAVED, spec["moe/gate_bias"]),
                      BIAS_INTERLEAVED, (_to_path(prefix, "moe/gate_bias"), _to_path(prefix, "moe/up_bias"))))
    out.append(Source((fmt("{moe}.experts.down_proj_bias"),), spec["moe/down_bias"], COPY,
                      (_to_path(prefix, "moe/down_bias"),)))
    return out


def plan(cfg: ModelConfig, available: Mapping[str, tuple[int, ...]] | None = None) -> list[Source]:
    """All HF tensors of a checkpoint of ``cfg``, layer by layer (per-expert layout unless
    ``available`` names fused expert tensors for a layer)."""
    spec = param_spec(cfg)
    top = {k: s for k, s in _leaves({k: v for k, v in spec.items() if k != "layers"})}
    out = []
    for key in ("embed", "final_norm/scale", "final_norm/bias"):
        if key in top:
            names, kind = TOP_TABLE[key]
            out.append(Source(names, _hf_shape(kind, top[key]), kind, (_to_path((), key),)))
    for i in range(cfg.num_layers):
        out.extend(layer_plan(cfg, i, available))
    for key in ("lm_head/kernel", "lm_head/bias"):
        if key in top:
            names, kind = TOP_TABLE[key]
            out.append(Source(names, _hf_shape(kind, top[key]), kind, (_to_path((), key),)))
    return out


def to_params(kind: str, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """HF array -> param arrays (one per target); views, not copies."""
    if kind == COPY:
        return (x,)
    if kind in (LINEAR, EXPERT):
        return (x.T,)
    if kind == FUSED_GATE_UP:
        n = x.shape[1] // 2
        return (x[:, :n].transpose(0, 2, 1), x[:, n:].transpose(0, 2, 1))
    if kind == FUSED_GATE_UP_T:
        n = x.shape[2] // 2
        return (x[:, :, :n], x[:, :, n:])
    if kind == FUSED_DOWN:
        return (x.transpose(0, 2, 1),)
    if kind == FUSED_DOWN_T:
        return (x,)
    if kind in (FUSED_GATE_UP_INTERLEAVED, BIAS_INTERLEAVED):
        return (x[..., 0::2], x[..., 1::2])
    raise ValueError(f"unknown transform {kind!r}")


def to_hf(kind: str, *xs: np.ndarray, expert: int | None = None) -> np.ndarray:
    """Param arrays (one per target) -> the HF array: the inverse of ``to_params``."""
    if kind == COPY:
        return xs[0]
    if kind == LINEAR:
        return xs[0].T
    if kind == EXPERT:
        return xs[0][expert].T
    if kind == FUSED_GATE_UP:
        return np.concatenate([x.transpose(0, 2, 1) for x in xs], axis=1)
    if kind == FUSED_GATE_UP_T:
        return np.concatenate(xs, axis=2)
    if kind == FUSED_DOWN:
        return xs[0].transpose(0, 2, 1)
    if kind == FUSED_DOWN_T:
        return xs[0]
    if kind in (FUSED_GATE_UP_INTERLEAVED, BIAS_INTERLEAVED):
        return np.stack(xs, axis=-1).reshape(*xs[0].shape[:-1], 2 * xs[0].shape[-1])
    raise ValueError(f"unknown transform {kind!r}")


def fused_plan(cfg: ModelConfig, transposed: bool = False) -> list[Source]:
    """The plan of a checkpoint storing every MoE layer's experts fused (for export and tests)."""
    H, I, E = cfg.hidden_size, cfg.expert_width, cfg.num_experts
    gu, dn = ((E, H, 2 * I), (E, I, H)) if transposed else ((E, 2 * I, H), (E, H, I))
    available = {}
    for i in cfg.moe_layer_ids:
        available[f"model.layers.{i}.mlp.experts.gate_up_proj"] = gu
        available[f"model.layers.{i}.mlp.experts.down_proj"] = dn
    return plan(cfg, available)


def get_path(tree: Any, path: Path) -> Any:
    for k in path:
        tree = tree[int(k)] if isinstance(tree, (list, tuple)) else tree[k]
    return tree


def target_value(tree: Any, src: Source, path: Path) -> Any:
    """What ``src`` maps to at its target ``path``: the leaf, or its row for a decoder-layer tensor."""
    leaf = get_path(tree, path)
    return leaf if src.row is None else leaf[src.row]


def sharding_at(shardings: Any, path: Path) -> Any:
    """The sharding of the leaf at ``path``: ``shardings`` is a tree like the params, one sharding
    for every leaf, or None (the default device)."""
    if shardings is None or not isinstance(shardings, (dict, list, tuple)):
        return shardings
    return get_path(shardings, path)


def set_path(tree: Any, path: Path, value: Any) -> None:
    for k in path[:-1]:
        tree = tree[int(k)] if isinstance(tree, list) else tree[k]
    tree[path[-1]] = value

"""One configuration dataclass for every supported MoE family, built from a HF ``config.json``.

Per-family differences live in ``FAMILIES`` (data), so the decoder has a single code path.
All values come from the checkpoint's config at run time; only *class defaults* (what
transformers assumes when a key is absent) are written here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


class UnsupportedModelError(ValueError):
    """The checkpoint's ``model_type`` (or one of its options) is not supported."""


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """What distinguishes one MoE family from another, as data."""

    norm: str  # "rms" | "rms_fp32_scale" (scale applied in fp32) | "layer" (LayerNorm with bias)
    qk_norm: str  # "none" | "head" (per-head RMSNorm over head_dim) | "full" (RMSNorm over n_heads*head_dim)
    router: str  # "softmax_topk" | "sparsemixer"
    expert_width_key: str  # config key holding the expert FFN width
    has_shared_expert: bool
    has_dense_layers: bool  # honours mlp_only_layers / decoder_sparse_step
    default_rope_theta: float
    default_norm_topk_prob: bool
    default_norm_eps: float
    # Name of the MoE block in HF checkpoints ("mlp" or "block_sparse_moe").
    hf_moe_prefix: str
    # Attention biases: "qkv" (q, k, v only, key ``qkv_bias``) or "attention_bias" (all four, key ``attention_bias``).
    bias_rule: str
    default_qkv_bias: bool = False  # default of the bias key (``qkv_bias`` or ``attention_bias``)
    # Router ``z = x @ W + b``: whether ``b`` exists; the router's HF module name under the MoE block.
    router_bias: bool = False
    hf_router_name: str = "gate"
    # Routed experts: biases on gate/up/down; activation (``experts.ACTIVATIONS``).
    expert_bias: bool = False
    expert_act: str = "swiglu"
    # Fused ``gate_up_proj`` on disk: "halves" (gate rows/columns first) or "interleaved" ([E, H, 2I],
    # gate = even columns; the only expert layout of such a family, plain or MXFP4-packed).
    gate_up_layout: str = "halves"
    # Learned per-head attention sink logits; per-layer sliding window from ``layer_types``.
    attention_sinks: bool = False
    layer_types: bool = False


FAMILIES: dict[str, FamilySpec] = {
    "qwen2_moe": FamilySpec(
        norm="rms", qk_norm="none", router="softmax_topk", expert_width_key="moe_intermediate_size",
        has_shared_expert=True, has_dense_layers=True, default_rope_theta=1e4,
        default_norm_topk_prob=False, default_norm_eps=1e-6, hf_moe_prefix="mlp", bias_rule="qkv", default_qkv_bias=True),
    "qwen3_moe": FamilySpec(
        norm="rms", qk_norm="head", router="softmax_topk", expert_width_key="moe_intermediate_size",
        has_shared_expert=False, has_dense_layers=True, default_rope_theta=1e4,
        default_norm_topk_prob=False, default_norm_eps=1e-6, hf_moe_prefix="mlp", bias_rule="attention_bias"),
    "olmoe": FamilySpec(
        norm="rms", qk_norm="full", router="softmax_topk", expert_width_key="intermediate_size",
        has_shared_expert=False, has_dense_layers=False, default_rope_theta=1e4,
        default_norm_topk_prob=False, default_norm_eps=1e-5, hf_moe_prefix="mlp", bias_rule="attention_bias"),
    "phimoe": FamilySpec(
        norm="layer", qk_norm="none", router="sparsemixer", expert_width_key="intermediate_size",
        has_shared_expert=False, has_dense_layers=False, default_rope_theta=1e6,
        default_norm_topk_prob=False, default_norm_eps=1e-5, hf_moe_prefix="block_sparse_moe", bias_rule="attention_bias"),
    "gpt_oss": FamilySpec(
        norm="rms_fp32_scale", qk_norm="none", router="topk_softmax", expert_width_key="intermediate_size",
        has_shared_expert=False, has_dense_layers=False, default_rope_theta=150000.0,
        default_norm_topk_prob=False, default_norm_eps=1e-5, hf_moe_prefix="mlp", bias_rule="attention_bias",
        default_qkv_bias=True, router_bias=True, hf_router_name="router", expert_bias=True,
        expert_act="clamped_swiglu", gate_up_layout="interleaved", attention_sinks=True, layer_types=True),
}

# ``layer_types`` entries -> whether the layer attends through the sliding window.
LAYER_TYPES = {"full_attention": False, "sliding_attention": True}

SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class LongRopeConfig:
    """Phi-3.5 LongRoPE: per-frequency factors, chosen by the current total length."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    short_mscale: float
    long_mscale: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class YarnConfig:
    """YaRN: frequencies blended between interpolation (``/ factor``) and extrapolation over a ramp
    between the dimensions of ``beta_fast`` and ``beta_slow`` rotations at the original length;
    cos/sin scaled by ``attention_factor`` (resolved from ``factor``/``mscale`` when absent)."""

    factor: float
    beta_fast: float
    beta_slow: float
    original_max_position_embeddings: int
    truncate: bool
    attention_factor: float


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_experts: int
    top_k: int
    expert_width: int  # per routed expert
    dense_width: int  # dense MLP width (layers that are not MoE); 0 if none
    shared_expert_width: int  # 0 if no shared expert
    moe_layers: tuple[bool, ...]  # per decoder layer: True if MoE, False if dense MLP
    norm_topk_prob: bool
    norm_eps: float
    qkv_bias: bool
    o_bias: bool
    lm_head_bias: bool
    tie_word_embeddings: bool
    rope_theta: float
    longrope: LongRopeConfig | None
    clip_qkv: float | None
    router_jitter_noise: float  # sparsemixer eps
    max_position_embeddings: int
    dtype: str  # checkpoint dtype as stored in config.json (informational)
    # Added with GPT-OSS; defaults keep older converted configs loadable.
    yarn: YarnConfig | None = None
    layer_types: tuple[str, ...] = ()  # per decoder layer, keys of LAYER_TYPES; () = all full attention
    sliding_window: int | None = None
    swiglu_limit: float | None = None  # clamped SwiGLU of the experts (expert_act "clamped_swiglu")
    swiglu_alpha: float | None = None

    def attention_window(self, layer: int) -> int | None:
        """Sliding window of decoder layer ``layer`` (keys with ``q_pos - k_pos < window``), None = full."""
        if self.layer_types and LAYER_TYPES[self.layer_types[layer]]:
            return self.sliding_window
        return None

    @property
    def family(self) -> FamilySpec:
        return FAMILIES[self.model_type]

    @property
    def moe_layer_ids(self) -> tuple[int, ...]:
        """Decoder-layer indices of the MoE layers (router logits are indexed by position in this tuple)."""
        return tuple(i for i, m in enumerate(self.moe_layers) if m)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layer_ids)

    @property
    def layer_runs(self) -> tuple[tuple[int, int, bool], ...]:
        """Maximal runs of consecutive decoder layers with the same parameter structure (MoE or
        dense MLP), as ``(start, stop, is_moe)``: one parameter stack each, scanned as one loop."""
        runs: list[tuple[int, int, bool]] = []
        for i, moe in enumerate(self.moe_layers):
            if runs and runs[-1][2] == moe:
                runs[-1] = (runs[-1][0], i + 1, moe)
            else:
                runs.append((i, i + 1, moe))
        return tuple(runs)

    def layer_run(self, layer: int) -> tuple[int, int]:
        """``(run, row)``: the stack holding decoder layer ``layer`` and its row in that stack."""
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"decoder layer {layer} out of range [0, {self.num_layers})")
        for r, (start, stop, _) in enumerate(self.layer_runs):
            if start <= layer < stop:
                return r, layer - start
        raise AssertionError("layer_runs covers every layer")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
        d = dict(d)
        if d.get("longrope") is not None:
            lr = dict(d["longrope"])
            lr["short_factor"] = tuple(lr["short_factor"])
            lr["long_factor"] = tuple(lr["long_factor"])
            d["longrope"] = LongRopeConfig(**lr)
        if d.get("yarn") is not None:
            d["yarn"] = YarnConfig(**d["yarn"])
        d["layer_types"] = tuple(d.get("layer_types", ()))
        d["moe_layers"] = tuple(bool(x) for x in d["moe_layers"])
        return cls(**d)

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any]) -> "ModelConfig":
        """Builds a config from the dict of a Hugging Face ``config.json`` (v4 or v5 key variants)."""
        model_type = hf.get("model_type")
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
        fam = FAMILIES[model_type]

        def need(key: str):
            if key not in hf:
                raise ValueError(f"config.json of a {model_type} model lacks required key {key!r}")
            return hf[key]

        hidden = int(need("hidden_size"))
        n_heads = int(need("num_attention_heads"))
        n_kv = int(hf.get("num_key_value_heads") or n_heads)
        head_dim = int(hf.get("head_dim") or hidden // n_heads)
        n_layers = int(need("num_hidden_layers"))
        num_experts = hf.get("num_experts", hf.get("num_local_experts"))
        if num_experts is None:
            raise ValueError(f"config.json of a {model_type} model has neither num_experts nor num_local_experts")
        num_experts = int(num_experts)
        top_k = int(need("num_experts_per_tok"))
        if not 0 < top_k <= num_experts:
            raise ValueError(f"num_experts_per_tok={top_k} must be in [1, num_experts={num_experts}]")
        if fam.router == "sparsemixer" and top_k != 2:
            raise UnsupportedModelError(f"sparsemixer routing is defined for top-2 only, got top_k={top_k}")
        if n_heads % n_kv:
            raise ValueError(f"num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}")
        if hf.get("use_sliding_window"):
            raise UnsupportedModelError(f"{model_type}: use_sliding_window=True is not supported")

        if fam.has_dense_layers:
            mlp_only = set(int(i) for i in (hf.get("mlp_only_layers") or []))
            step = int(hf.get("decoder_sparse_step", 1) or 1)
            moe_layers = tuple(
                (i not in mlp_only) and num_experts > 0 and (i + 1) % step == 0 for i in range(n_layers))
        else:
            moe_layers = (True,) * n_layers
        dense_width = int(hf.get("intermediate_size", 0)) if not all(moe_layers) else 0

        if fam.bias_rule == "qkv":
            qkv_bias, o_bias = bool(hf.get("qkv_bias", fam.default_qkv_bias)), False
        else:
            qkv_bias = o_bias = bool(hf.get("attention_bias", fam.default_qkv_bias))

        rope_theta, longrope, yarn = _rope(hf, fam, head_dim)
        layer_types, window = _layer_types(hf, model_type, n_layers) if fam.layer_types else ((), None)
        swiglu = fam.expert_act == "clamped_swiglu"
        dtype = str(hf.get("dtype") or hf.get("torch_dtype") or "float32").replace("torch.", "")
        clip = hf.get("clip_qkv") if model_type == "olmoe" else None
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            num_layers=n_layers,
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=head_dim,
            num_experts=num_experts,
            top_k=top_k,
            expert_width=int(need(fam.expert_width_key)),
            dense_width=dense_width,
            shared_expert_width=int(hf.get("shared_expert_intermediate_size", 0)) if fam.has_shared_expert else 0,
            moe_layers=moe_layers,
            norm_topk_prob=bool(hf.get("norm_topk_prob", fam.default_norm_topk_prob)),
            norm_eps=float(hf.get("rms_norm_eps", fam.default_norm_eps)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            lm_head_bias=bool(hf.get("lm_head_bias", False)) if model_type == "phimoe" else False,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            rope_theta=rope_theta,
            longrope=longrope,
            clip_qkv=None if clip is None else float(clip),
            router_jitter_noise=float(hf.get("router_jitter_noise", 0.01) or 0.0),
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            dtype=dtype,
            yarn=yarn,
            layer_types=layer_types,
            sliding_window=window,
            swiglu_limit=float(hf.get("swiglu_limit", 7.0)) if swiglu else None,
            swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)) if swiglu else None,
        )


def _layer_types(hf: Mapping[str, Any], model_type: str, n_layers: int) -> tuple[tuple[str, ...], int | None]:
    """``layer_types`` (default as transformers: sliding on even layers, full on odd ones) and the window."""
    types = hf.get("layer_types")
    if types is None:
        types = ["sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n_layers)]
    types = tuple(str(t) for t in types)
    if len(types) != n_layers:
        raise ValueError(f"{model_type}: layer_types has {len(types)} entries for {n_layers} layers")
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise UnsupportedModelError(f"{model_type}: layer_types {unknown} not supported; known: {sorted(LAYER_TYPES)}")
    window = hf.get("sliding_window")
    if any(LAYER_TYPES[t] for t in types):
        if window is None or int(window) < 1:
            raise ValueError(f"{model_type}: layer_types has sliding_attention layers but sliding_window={window!r}")
        window = int(window)
    return types, window


def _rope(hf: Mapping[str, Any], fam: FamilySpec,
          head_dim: int) -> tuple[float, LongRopeConfig | None, YarnConfig | None]:
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = hf.get("rope_theta", merged.get("rope_theta", fam.default_rope_theta))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None, None
    if rope_type == "yarn":
        return float(theta), None, _yarn(hf, merged)
    if rope_type not in ("longrope", "su"):
        raise UnsupportedModelError(f"rope type {rope_type!r} is not supported (default, longrope and yarn are)")
    orig = merged.get("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    if orig is None:
        raise ValueError("longrope scaling needs original_max_position_embeddings")
    orig = int(orig)
    short, long_ = tuple(float(x) for x in merged["short_factor"]), tuple(float(x) for x in merged["long_factor"])
    if len(short) != head_dim // 2 or len(long_) != head_dim // 2:
        raise ValueError(f"longrope factors must have head_dim/2={head_dim // 2} entries, "
                         f"got {len(short)} and {len(long_)}")
    # Default mscale, as transformers computes it when the config does not give one.
    factor = int(hf.get("max_position_embeddings", orig)) / orig
    default = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
    default = float(merged.get("attention_factor") or default)
    return float(theta), LongRopeConfig(
        short_factor=short, long_factor=long_,
        short_mscale=float(merged.get("short_mscale") or default),
        long_mscale=float(merged.get("long_mscale") or default),
        original_max_position_embeddings=orig), None


def _yarn(hf: Mapping[str, Any], rope: Mapping[str, Any]) -> YarnConfig:
    """YaRN parameters with transformers' defaults (``_compute_yarn_parameters``)."""
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModelError("yarn with partial_rotary_factor != 1 is not supported")
    if rope.get("original_max_position_embeddings") is None:
        raise ValueError("yarn scaling needs original_max_position_embeddings")
    orig = int(rope["original_max_position_embeddings"])
    factor = rope.get("factor")
    factor = float(hf.get("max_position_embeddings", orig)) / orig if factor is None else float(factor)

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = get_mscale(factor)
    return YarnConfig(factor=factor, beta_fast=float(rope.get("beta_fast") or 32),
                      beta_slow=float(rope.get("beta_slow") or 1), original_max_position_embeddings=orig,
                      truncate=bool(rope.get("truncate", True)), attention_factor=float(attention_factor))


"""Memory planning before anything is downloaded: does the configured model, mesh, dtype and batch
fit the accelerator?

    python -m moe_jax.plan --config=configs/qwen3_30b_a3b.py [--accelerator=v5e-8] [--config.mesh.shape=...] [--xla]

Per device it counts (estimates, in bytes; the convert stage makes the same check first):

* parameters: every leaf of the parameter layout (``moe_jax.models.params``) at the configured dtype,
  divided by the mesh axes its logical axes map to (``moe_jax.sharding`` rules; a dimension that does
  not divide stays replicated), from the model's ``config.json`` alone;
* activations (``T = rows per device * seq``, ``h`` heads on the device, ``L`` MoE layers, ``E``
  experts, ``k`` per token), calibrated against XLA's memory analysis of the programs the stages
  compile (docs/tpu.md has the formulas and the table):
  - at a decoder layer's attention: ``3`` float32 score-sized buffers ``rows h seq^2``, ``4``
    float32 hidden-state buffers ``T H`` and the float32 copy of one layer's shared expert / dense
    MLP (``mlp_float32_bytes``);
  - collection: the larger of that and the experts' peak (below) plus the router logits of every
    MoE layer ``L T E`` in float32, or the routing statistics' peak ``8 L T k E + 3 * 4 L T E``;
  - while the routed experts run: one expert's weights in float32 ``3 H W`` beside ``6`` float32
    ``T H`` buffers (hidden states, the output accumulator and its sum over the model axis);
  - evaluation: the largest of those two peaks and the float32 logits ``T V`` at ``eval.batch_size``;
  - the KV cache of generation ``2 layers rows (seq + max_gen_toks) kv D`` at the dtype.
  ``grouped`` (the CPU backend) runs at most 512 rows of an expert at a time: no ``T k W`` term.
  ``--xla`` prints XLA's own figures beside these (``compare_with_xla``).

``seq`` is ``data.max_length`` (prompts of the size of the collected texts). The plan fits when
parameters plus the larger of the two activation peaks stay below ``plan.headroom`` of the device's
memory. If not, the error names the smallest model axis (experts, heads and MLP widths split over
more devices) that fits on these devices, or else the smallest slice of the same accelerator.

Accelerators: ``ACCELERATORS`` (``moe_jax.accelerators``: per-chip memory and chips per host as
data); TPU slices are named as Cloud TPU names them (``v4-8`` counts TensorCores: 4 chips; ``v5e-8``
counts chips); ``auto`` reads the devices jax sees (their memory limit; host RAM divided over CPU devices).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Mapping

import jax
import numpy as np
from absl import app, flags
from huggingface_hub import hf_hub_download
from ml_collections import config_flags

from moe_jax import sharding as shd, xla_memory
from moe_jax.accelerators import ACCELERATORS, ALIASES, GiB, AcceleratorKind  # noqa: F401  (plan's names, as before)
from moe_jax.convert import tiny
from moe_jax.convert.loader import resolve_dtype
from moe_jax.io import storage
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import param_spec, run_spec
from moe_jax.errors import StageError


class PlanError(StageError):
    """The configured model does not fit the accelerator (or the plan's input is invalid)."""


class ModelConfigUnavailable(PlanError):
    """The model's config.json cannot be read (offline, gated, missing): nothing to plan from. The
    convert stage then skips the plan with a warning; the conversion reports the missing files."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str
    memory: int  # bytes per device
    devices: int
    devices_per_host: int
    kind: str = ""  # key of ACCELERATORS ("" for a detected device not in the table)

    @property
    def hosts(self) -> int:
        return max(1, self.devices // self.devices_per_host)


def named_accelerator(name: str) -> Accelerator:
    """``v4-8``, ``v5e-16``, ``v5litepod-8``, ``v6e-8``, ``v5p-8``, ``H100-80GB`` (one GPU) or
    ``H100-80GB-8`` (eight)."""
    m = re.fullmatch(r"(.+?)(?:-(\d+))?", name.strip())
    kind_name, n = m.group(1), m.group(2)
    kind_name = ALIASES.get(kind_name.lower(), kind_name)
    if kind_name not in ACCELERATORS or (n is None and ACCELERATORS[kind_name].name_counts != "devices"):
        known = ", ".join(f"{k}-8" if v.name_counts != "devices" else k for k, v in ACCELERATORS.items())
        raise PlanError(f"unknown accelerator {name!r}; known: {known}, CPU or auto (slices like v5e-16 too)")
    kind = ACCELERATORS[kind_name]
    n = 1 if n is None else int(n)
    devices = n // 2 if kind.name_counts == "cores" else n
    if devices < 1 or (kind.name_counts == "cores" and n % 2):
        raise PlanError(f"accelerator {name!r}: {kind_name} slices count TensorCores, 2 per chip (e.g. {kind_name}-8)")
    per_host = min(devices, kind.devices_per_host)
    if devices % per_host:
        raise PlanError(f"accelerator {name!r}: {devices} devices do not fill hosts of {kind.devices_per_host}")
    return Accelerator(name, kind.memory, devices, per_host, kind_name)


def slice_name(kind_name: str, devices: int) -> str:
    kind = ACCELERATORS[kind_name]
    return f"{kind_name}-{devices * 2 if kind.name_counts == 'cores' else devices}"


def host_ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def detect_accelerator() -> Accelerator:
    """The devices jax sees: their memory limit (TPU/GPU) or the host RAM shared by the CPU devices."""
    devices = jax.devices()
    local = jax.local_devices()
    d = local[0]
    if d.platform == "cpu":
        return Accelerator("CPU RAM", host_ram() // len(local), len(devices), len(local))
    stats = d.memory_stats() or {}
    memory = stats.get("bytes_limit")
    if not memory:
        raise PlanError(f"cannot read the memory of {d.device_kind}; name the accelerator (plan.accelerator)")
    return Accelerator(d.device_kind, int(memory), len(devices), len(local))


def get_accelerator(name: str) -> Accelerator:
    if name in ("", "auto"):
        return detect_accelerator()
    if name.lower() == "cpu":
        return Accelerator("CPU RAM", host_ram(), 1, 1)
    return named_accelerator(name)


# ------------------------------------------------------------------------------------------ estimates

@dataclasses.dataclass(frozen=True)
class Workload:
    """What the stages run, from the pipeline config."""

    dtype_bytes: int
    collect_batch: int
    eval_batch: int
    seq: int
    max_gen_toks: int


def parameter_bytes(cfg: ModelConfig, sizes: Mapping[str, int], dtype_bytes: int,
                    rules: Mapping[str, str | None] = shd.DEFAULT_RULES) -> tuple[int, int]:
    """``(total, per device)`` parameter bytes of ``cfg`` on a mesh of axis ``sizes``."""
    return _spec_bytes(param_spec(cfg), sizes, dtype_bytes, rules)


def mlp_float32_bytes(cfg: ModelConfig, sizes: Mapping[str, int],
                      rules: Mapping[str, str | None] = shd.DEFAULT_RULES) -> int:
    """Per-device float32 bytes of the largest decoder layer's shared expert or dense MLP: XLA on CPU
    upcasts a bfloat16 layer's dots and keeps these weights' float32 copy live beside the attention
    scores, one layer at a time (the routed experts are read one expert at a time)."""
    def mlp(spec):
        moe = spec.get("moe", {})
        return {k: v for k, v in (("mlp", spec.get("mlp")), ("shared", moe.get("shared"))) if v is not None}
    return max(_spec_bytes(mlp(run_spec(cfg, r)), sizes, 4, rules)[1] // (stop - start)
               for r, (start, stop, _) in enumerate(cfg.layer_runs))


def _spec_bytes(spec: Any, sizes: Mapping[str, int], dtype_bytes: int,
                rules: Mapping[str, str | None]) -> tuple[int, int]:
    total = per_device = 0

    def visit(node):
        nonlocal total, per_device
        if isinstance(node, tuple) and len(node) == 2 and isinstance(node[0], tuple):
            shape, axes = node
            n = math.prod(shape)
            split = math.prod(sizes[a] for a in shd.partition_axes(shape, axes, sizes, rules) if a is not None)
            total += n * dtype_bytes
            per_device += n // split * dtype_bytes
        elif isinstance(node, dict):
            for v in node.values():
                visit(v)
        else:
            for v in node:
                visit(v)
    visit(spec)
    return total, per_device


def _on_device(n: int, sizes: Mapping[str, int], axis_rule: str, rules: Mapping[str, str | None]) -> int:
    """``n`` heads / experts split over their rule's mesh axis when it divides, else all of them."""
    axis = rules.get(axis_rule)
    return n // sizes[axis] if axis and n % sizes[axis] == 0 else n


# Live buffers of the size of one layer's attention scores [rows, heads, seq, seq] in float32 at the
# attention peak (XLA's memory analysis: the scores, their softmax and its transpose for the value
# product).
SCORE_BUFFERS = 3
# Float32 [T, H] buffers live beside them: the residual stream, the normed input, the attention and
# expert outputs (XLA on CPU keeps bfloat16 elementwise work in float32).
HIDDEN_BUFFERS = 4
# Routing statistics materialise two 4-byte [L, T, k, E] one-hot tensors (counts and gate weights)
# and about two float32 [L, T, E] ones (softmax, kept probabilities) beside the router logits.
STAT_HIT_BYTES, STAT_LOGIT_BUFFERS = 8, 3


def activation_bytes(cfg: ModelConfig, sizes: Mapping[str, int], w: Workload,
                     rules: Mapping[str, str | None] = shd.DEFAULT_RULES) -> dict[str, int]:
    """Per-device activation estimates (bytes): ``collect``, ``eval`` (forward with logits) and
    ``kv_cache`` (generation), by the formulas of the module docstring."""
    heads = _on_device(cfg.num_heads, sizes, "heads", rules)
    kv = _on_device(cfg.num_kv_heads, sizes, "kv_heads", rules)
    data = sizes[shd.BATCH_AXIS]
    L, E, k = cfg.num_moe_layers, cfg.num_experts, cfg.top_k
    weights = mlp_float32_bytes(cfg, sizes, rules)

    def layer(batch: int) -> tuple[int, int]:
        """(tokens on a device, the bytes live at a decoder layer's attention peak)."""
        rows = math.ceil(batch / data)
        t = rows * w.seq
        return t, (SCORE_BUFFERS * rows * heads * w.seq * w.seq * 4 + HIDDEN_BUFFERS * t * cfg.hidden_size * 4
                   + weights)

    def experts_peak(t: int) -> int:
        """Bytes live while the routed experts run: one expert's weights in float32 (the loop reads
        one expert at a time) beside the hidden states, the float32 output accumulator and its sum
        over the model axis."""
        return (HIDDEN_BUFFERS + 2) * t * cfg.hidden_size * 4 + 3 * cfg.hidden_size * cfg.expert_width * 4

    t, at_layer = layer(w.collect_batch)
    router = L * t * E * 4  # router logits of every MoE layer, kept to the end
    collect = max(max(at_layer, experts_peak(t)) + router,
                  L * t * k * E * STAT_HIT_BYTES + STAT_LOGIT_BUFFERS * router)
    t, at_layer = layer(w.eval_batch)
    kv_cache = 2 * cfg.num_layers * math.ceil(w.eval_batch / data) * (w.seq + w.max_gen_toks) * kv * cfg.head_dim \
        * w.dtype_bytes
    return {"collect": collect, "eval": max(at_layer, experts_peak(t), t * cfg.vocab_size * 4), "kv_cache": kv_cache}


@dataclasses.dataclass(frozen=True)
class Plan:
    model: str
    accelerator: Accelerator
    mesh: dict[str, int]
    dtype: str
    total_params: int  # parameters (count)
    param_bytes_total: int
    param_bytes: int  # per device
    activations: dict[str, int]
    headroom: float

    @property
    def peak(self) -> int:
        a = self.activations
        return self.param_bytes + max(a["collect"], a["eval"] + a["kv_cache"])

    @property
    def budget(self) -> int:
        return int(self.accelerator.memory * self.headroom)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    def format(self) -> str:
        acc, a = self.accelerator, self.activations
        rows = [("parameters", self.param_bytes), ("collect activations", a["collect"]),
                ("eval activations", a["eval"]), ("eval KV cache", a["kv_cache"]), ("peak", self.peak)]
        lines = [f"model        {self.model}: {self.total_params / 1e9:.2f}B parameters, {self.dtype}, "
                 f"{_size(self.param_bytes_total)} in all",
                 f"accelerator  {acc.name}: {acc.devices} devices on {acc.hosts} host(s), {_size(acc.memory)} each",
                 f"mesh         {self.mesh}"]
        lines += [f"{'per device' if i == 0 else '':12} {k:20} {_size(v):>11}" for i, (k, v) in enumerate(rows)]
        lines += [f"{'':12} {'budget':20} {_size(self.budget):>11} ({self.headroom:.0%} of the device)",
                  f"fits         {'yes' if self.fits else 'NO'}"]
        return "\n".join(lines)


def _size(b: int) -> str:
    return f"{b / GiB:.2f} GiB" if b >= GiB else f"{b / 2 ** 20:.1f} MiB"


def make_plan(cfg: ModelConfig, accelerator: Accelerator, mesh_shape: Mapping[str, int], workload: Workload,
              *, rules: Mapping[str, str | None] = shd.DEFAULT_RULES, dtype: str = "bfloat16",
              headroom: float = 0.9, model: str = "") -> Plan:
    sizes = shd.mesh_axis_sizes(mesh_shape, accelerator.devices)
    total, per_device = parameter_bytes(cfg, sizes, workload.dtype_bytes, rules)
    return Plan(model or cfg.model_type, accelerator, sizes, dtype, total // workload.dtype_bytes, total, per_device,
                activation_bytes(cfg, sizes, workload, rules), headroom)


def smallest_fit(cfg: ModelConfig, accelerator: Accelerator, workload: Workload, **kwargs) -> Plan | None:
    """The fitting plan with the smallest model axis on ``accelerator`` (model axis 1, 2, 4, ... up
    to all devices); else on the smallest larger slice of the same kind (up to 1024 devices)."""
    candidates = [accelerator]
    if accelerator.kind:
        kind = ACCELERATORS[accelerator.kind]
        n = accelerator.devices * 2
        while n <= 1024:
            candidates.append(Accelerator(slice_name(accelerator.kind, n), kind.memory, n,
                                          min(n, kind.devices_per_host), accelerator.kind))
            n *= 2
    for acc in candidates:
        m = 1
        while m <= acc.devices:
            if acc.devices % m == 0:
                p = make_plan(cfg, acc, {"data": -1, "model": m}, workload, **kwargs)
                if p.fits:
                    return p
            m *= 2
    return None


def check_plan(plan: Plan, cfg: ModelConfig, workload: Workload, **kwargs) -> None:
    """Raises ``PlanError`` when ``plan`` does not fit, naming the smallest mesh that would."""
    if plan.fits:
        return
    best = smallest_fit(cfg, plan.accelerator, workload, **kwargs)
    if best is None:
        hint = "no mesh of up to 1024 such devices fits: use a smaller dtype or batch"
    else:
        shape = json.dumps({"data": -1, "model": best.mesh["model"]})
        where = "these devices" if best.accelerator.devices == plan.accelerator.devices else best.accelerator.name
        hint = (f"the smallest mesh that fits is --config.mesh.shape='{shape}' on {where} "
                f"({best.peak / GiB:.2f} GiB of {best.budget / GiB:.2f} GiB per device)")
    raise PlanError(f"{plan.model} ({plan.dtype}) does not fit {plan.accelerator.name} with mesh {plan.mesh}: "
                    f"{plan.peak / GiB:.2f} GiB per device (parameters {plan.param_bytes / GiB:.2f} GiB) against "
                    f"{plan.budget / GiB:.2f} GiB; {hint}")


# ------------------------------------------------------------------------------------------ against XLA

def compare_with_xla(plan: Plan, cfg: ModelConfig, workload: Workload, *,
                     rules: Mapping[str, str | None] = shd.DEFAULT_RULES, backend: str = "auto",
                     ) -> list[tuple[str, int, int]]:
    """``(term, estimate, XLA's figure)`` per device for parameters, collect and eval activations and
    the KV cache: XLA's memory analysis of the stages' programs compiled ahead of time for the
    current backend on the plan's mesh (``moe_jax.xla_memory``; nothing is allocated). Needs as many
    devices as the plan's mesh (on CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=N``)."""
    n = math.prod(plan.mesh.values())
    if jax.device_count() < n:
        raise PlanError(f"comparing with XLA on mesh {plan.mesh} needs {n} devices, {jax.device_count()} are "
                        f"visible; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count={n}")
    mesh = shd.make_mesh(plan.mesh, jax.devices()[:n])
    xla = xla_memory.stage_memory(cfg, mesh, dtype=plan.dtype, collect_batch=workload.collect_batch,
                                  eval_batch=workload.eval_batch, seq=workload.seq,
                                  max_gen_toks=workload.max_gen_toks, rules=rules, backend=backend).as_dict()
    a = plan.activations
    estimates = {"parameters": plan.param_bytes, "collect": a["collect"], "eval": a["eval"], "kv_cache": a["kv_cache"]}
    return [(term, estimates[term], xla[term]) for term in estimates]


def format_comparison(rows: list[tuple[str, int, int]]) -> str:
    lines = [f"{'per device':20} {'estimate':>11} {'XLA':>11} {'ratio':>6}"]
    lines += [f"{term:20} {_size(e):>11} {_size(x):>11} {e / x if x else float('nan'):6.2f}" for term, e, x in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ config edge

def model_config_json(model: Any, config_json: str = "") -> dict[str, Any]:
    """The model's ``config.json`` without its weights: ``config_json`` (a local copy) when given, else a
    tiny model's, a local dir's, or the hub's config.json alone (a few KB). ``model``: the pipeline's
    model options (``source``, ``hf_dir``, ``tiny``, ``hub_id``, ``revision``, ``cache_dir``)."""
    m = model
    path = config_json or (os.path.join(m.hf_dir, "config.json") if m.source == "hf_dir" else "")
    if path:
        return _read_json(path)
    if m.source == "tiny_random":
        spec = m.tiny.to_dict()
        return tiny.tiny_hf_config(spec["model_type"], **dict(spec.get("overrides", {}), vocab_size=spec["vocab_size"]))
    try:
        path = hf_hub_download(m.hub_id, "config.json", revision=m.revision or None, cache_dir=m.cache_dir or None)
    except Exception as e:
        raise ModelConfigUnavailable(f"could not read config.json of {m.hub_id!r} from the hub ({type(e).__name__}: {e}); "
                        "give a local copy with --config.plan.config_json=PATH") from e
    return _read_json(path)


def _read_json(path: str) -> dict[str, Any]:
    try:
        with storage.open(path, "r") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelConfigUnavailable(f"cannot read the model's config.json {path}: {e}") from None


def workload(options: Any, native_dtype: str = "float32") -> Workload:
    """The work of the pipeline's ``options`` (``moe_jax.pipeline.options.Options``: its model dtype,
    collect and eval batches, data max_length, eval max_gen_toks); ``native_dtype``: the checkpoint's
    own (config.json's), what ``model.dtype`` "auto" means."""
    e = options.eval
    return Workload(dtype_bytes=int(np.dtype(resolve_dtype(options.model.dtype, native_dtype)).itemsize),
                    collect_batch=int(options.collect.batch_size), eval_batch=int(e.batch_size or 1),
                    seq=int(options.data.max_length), max_gen_toks=int(e.max_gen_toks or 0))


def model_name(model: Any) -> str:
    """The model's display name (``model``: the pipeline's model options): its ``name``, else the hub id,
    the local directory's name or ``tiny-random-<type>``. The pipeline names the model so too
    (``moe_jax.pipeline.common.model_name`` is this function)."""
    if model.name:
        return model.name
    if model.source == "hub":
        return model.hub_id
    if model.source == "hf_dir":
        return os.path.basename(os.path.normpath(model.hf_dir))
    return f"tiny-random-{model.tiny.model_type}"


def plan_from_config(config: Any, accelerator: str | None = None) -> tuple[Plan, ModelConfig, Workload, dict]:
    """The plan of the pipeline's options (``moe_jax.pipeline.options.Options``, or a whole config with
    the same sections); ``accelerator`` overrides ``plan.accelerator``."""
    p = config.plan
    cfg = ModelConfig.from_hf(model_config_json(config.model, p.config_json))
    acc = get_accelerator(accelerator if accelerator is not None else p.accelerator)
    w = workload(config, cfg.dtype)
    kwargs = dict(rules=shd.rules_from_config(config.mesh), dtype=resolve_dtype(config.model.dtype, cfg.dtype).name,
                  headroom=float(p.headroom), model=model_name(config.model))
    try:
        plan = make_plan(cfg, acc, config.mesh.shape, w, **kwargs)
    except shd.MeshError as e:
        raise PlanError(f"mesh.shape on {acc.name} ({acc.devices} devices): {e}") from None
    return plan, cfg, w, kwargs


def check_config_fits(config: Any, verbose: bool = True) -> Plan | None:
    """The convert stage's check (``config.plan.check``): prints the plan (``verbose``), raises
    ``PlanError`` when it does not fit. ``config``: the pipeline's options (``plan_from_config``)."""
    if not config.plan.check:
        return None
    try:
        plan, cfg, w, kwargs = plan_from_config(config)
    except ModelConfigUnavailable as e:  # the download or conversion that follows fails with its own message
        print(f"WARNING: no memory plan: {e}", flush=True)
        return None
    if verbose:
        print(plan.format(), flush=True)
    check_plan(plan, cfg, w, **kwargs)
    return plan


def main() -> None:
    """``python -m moe_jax.plan --config=FILE [--accelerator=NAME]``: prints the plan; exit status 1
    with the smallest fitting mesh when it does not fit. Flags are defined here, not at import, so
    that importing this module (the convert stage does) never clashes with ``moe_jax.launch``'s."""
    config_flag = config_flags.DEFINE_config_file("config", None, "Pipeline config file (configs/*.py).")
    acc_flag = flags.DEFINE_string("accelerator", None, "auto | CPU | v4-8 | v5e-8 | v5p-8 | v6e-8 | H100-80GB "
                                   "(slices like v5e-16 too); default: config.plan.accelerator")
    xla_flag = flags.DEFINE_bool("xla", False, "also print XLA's memory analysis of the stages' programs beside "
                                 "the estimate: compiled ahead of time for the current backend on the plan's mesh "
                                 "(needs as many devices; nothing is allocated)")
    flags.mark_flags_as_required(["config"])

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            plan, cfg, w, kwargs = plan_from_config(config_flag.value, acc_flag.value)
            print(plan.format(), flush=True)
            if xla_flag.value:
                print(format_comparison(compare_with_xla(plan, cfg, w, rules=kwargs["rules"])), flush=True)
            check_plan(plan, cfg, w, **kwargs)
        except PlanError as e:
            print(f"ERROR: {e}", flush=True)
            raise SystemExit(1) from None
    app.run(run)


if __name__ == "__main__":
    main()

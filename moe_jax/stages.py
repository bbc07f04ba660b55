"""Pipeline stages: a registry of ``stage(config, workdir)`` functions, and the ``convert`` stage.

Stages are imported lazily, so a missing optional dependency of one stage never breaks another.
Workdir layout (each stage reads what the previous one wrote)::

    <workdir>/hf_tiny/      random HF checkpoint + tiny tokenizer (model.source = "tiny_random")
    <workdir>/checkpoint/   converted parameters (convert)
    <workdir>/routing/      routing-statistics store (collect)
    <workdir>/tasks/<name>/ routing store of each task corpus of ``config.tasks`` (collect)
    <workdir>/analysis/ , <workdir>/report/   (analyze, report)
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from typing import Any, Callable, Collection, Sequence

from moe_jax import config_fields
from moe_jax import sharding as shd
from moe_jax.atomic import atomic_write_json, read_json

log = logging.getLogger(__name__)

STAGES: dict[str, str] = {
    "convert": "moe_jax.stages:convert",
    "collect": "moe_jax.routing.stage:run",
    "analyze": "moe_jax.analysis.stage:run",
    "report": "moe_jax.report.stage:run",
}
CHECKPOINT_DIR = "checkpoint"
TINY_DIR = "hf_tiny"
CONVERT_STAMP = ".convert_source.json"  # sidecar: what workdir/checkpoint was converted from
SOURCES = ("tiny_random", "hf_dir", "hub")
# Config fields whose keys are user data (task names, languages, HF config keys, mesh axes, logical
# axes), not fields of moe_jax: check_config does not check their keys. Fields whose default is a
# plain value (None placeholders, FieldReference({}) mappings) are not descended into either.
FREE_FORM_FIELDS = ("config.tasks", "config.analysis.accuracy", "config.analysis.task_stores",
                    "config.mesh.shape", "config.mesh.rules", "config.model.tiny.overrides")
RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: this model is a tiny randomly initialised network; every routing "
                          "statistic, divergence and plot computed from it is meaningless (demo/test only).")


class StageError(ValueError):
    """A stage name or stage input is invalid."""


def parse_stages(spec: str | Sequence[str]) -> list[str]:
    """``"convert,collect"`` or a list -> validated names (unknown names listed with the known ones)."""
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise StageError(f"unknown stage(s) {unknown}; known stages: {', '.join(STAGES)}")
    if not names:
        raise StageError(f"no stages given; known stages: {', '.join(STAGES)}")
    return names


def get_stage(name: str) -> Callable[[Any, str], Any]:
    module, func = STAGES[parse_stages([name])[0]].split(":")
    return getattr(importlib.import_module(module), func)


def run_stages(config: Any, workdir: str, stages: str | Sequence[str] | None = None) -> None:
    """Runs ``stages`` (default ``config.stages``) in order; every name is checked first."""
    names = parse_stages(config.stages if stages is None else stages)
    check_config(config)
    os.makedirs(workdir, exist_ok=True)
    for name in names:
        log.info("stage %s", name)
        get_stage(name)(config, workdir)


def default_model_config():
    """The ``config.model`` section."""
    import ml_collections
    m = ml_collections.ConfigDict()
    m.name = ""  # display name in the store and report (default: hub_id, hf_dir or "tiny-random-<type>")
    m.source = "tiny_random"  # "tiny_random" | "hf_dir" | "hub"
    m.hub_id = ""  # source "hub": repository id, e.g. "allenai/OLMoE-1B-7B-0125-Instruct"
    m.revision = ""  # source "hub": branch, tag or commit ("" = main)
    m.cache_dir = ""  # source "hub": download cache ("" = the Hugging Face default)
    m.hf_dir = ""  # source "hf_dir": local HF checkpoint directory
    m.dtype = "bfloat16"  # parameter dtype after conversion: float32 | bfloat16 | float16
    m.warning = ""  # shown by launch and stored in the routing store's meta ("" = automatic)
    # source "tiny_random": a random model of moe_jax.tiny (plus a tiny tokenizer of vocab_size)
    m.tiny = ml_collections.ConfigDict({"model_type": "qwen2_moe", "seed": 0, "router_scale": 10.0,
                                        "vocab_size": 512, "overrides": {}})
    return m


def default_config():
    """A complete pipeline config with every section at its default (what configs/*.py start from)."""
    import ml_collections
    from moe_jax.analysis.stage import default_config as analysis_defaults
    from moe_jax.data.defaults import default_config as data_defaults
    from moe_jax.report.stage import default_config as report_defaults
    from moe_jax.routing.stage import default_config as collect_defaults

    c = ml_collections.ConfigDict()
    c.model = default_model_config()
    c.data = data_defaults()
    # {task name: data fields of a task corpus}, e.g. {"math": {"source": "builtin_task", "task": "math"}}:
    # collected like config.data (same model, template options) into workdir/tasks/<name>, used by the
    # analyze stage's task experts (METHODS Eq. 3; moe_jax.data.defaults.task_data_config). {} = none.
    c.tasks = ml_collections.ConfigDict()
    c.collect = collect_defaults()
    c.mesh = shd.default_mesh_config()
    c.distributed = shd.default_distributed_config()
    c.analysis = analysis_defaults()
    c.report = report_defaults()
    c.stages = ",".join(STAGES)
    return c


def check_config(config: Any, num_devices: int | None = None) -> None:
    """Cheap checks of a pipeline config before any stage runs (no download, no device work):
    sections, stages, model source and dtype, data and task sources and language codes, mesh axes and batch.

    ``num_devices``: check the mesh against this many devices (default: skip the mesh size check).
    """
    from moe_jax.convert.loader import resolve_dtype
    from moe_jax.data.corpora import SOURCES as DATA_SOURCES, parse_languages
    from moe_jax.data.defaults import task_data_configs

    missing = [k for k in ("model", "data", "collect", "mesh", "distributed", "stages") if k not in config]
    if missing:
        raise StageError(f"config lacks section(s) {missing}")
    check_known_fields(config, default_config(), "config")
    parse_stages(config.stages)
    m = config.model
    if m.source not in SOURCES:
        raise StageError(f"model.source {m.source!r} is not one of {SOURCES}")
    if m.source == "hub" and not m.hub_id:
        raise StageError("model.source is 'hub' but model.hub_id is empty")
    if m.source == "hf_dir" and not m.hf_dir:
        raise StageError("model.source is 'hf_dir' but model.hf_dir is empty")
    resolve_dtype(m.dtype)
    for where, data in [("data", config.data)] + [(f"tasks.{n}", d) for n, d in task_data_configs(config).items()]:
        if data.source not in DATA_SOURCES:
            raise StageError(f"{where}.source {data.source!r} is not one of {DATA_SOURCES}")
        parse_languages(data.get("languages"))  # raises on unknown codes, with close matches
    if num_devices is None:  # the smallest device count the shape allows (-1 axis = 1): checks the fixed axes
        num_devices = math.prod(v for v in config.mesh.shape.values() if v > 0)
    dist = config.distributed
    processes = int(dist.num_processes) if dist.enabled and int(dist.num_processes) > 0 else 1
    shd.check_batch_size(int(config.collect.batch_size), shd.mesh_axis_sizes(config.mesh.shape, num_devices),
                         num_processes=processes)


def check_known_fields(values: Any, defaults: Any, where: str = "config",
                       free_form: Collection[str] = FREE_FORM_FIELDS) -> None:
    """``config_fields.check_known_fields`` with the pipeline's free-form fields; raises StageError."""
    try:
        config_fields.check_known_fields(values, defaults, where, free_form)
    except config_fields.UnknownFieldError as e:
        raise StageError(str(e)) from None


def model_name(config: Any) -> str:
    m = config.model
    if m.get("name"):
        return m.name
    if m.source == "hub":
        return m.hub_id
    if m.source == "hf_dir":
        return os.path.basename(os.path.normpath(m.hf_dir))
    return f"tiny-random-{m.tiny.model_type}"


def model_warning(config: Any) -> str | None:
    """The warning that goes with the model's numbers (random weights), if any."""
    m = config.model
    if m.get("warning"):
        return m.warning
    return RANDOM_WEIGHTS_WARNING if m.source == "tiny_random" else None


# ------------------------------------------------------------------------------------------- convert

def convert(config: Any, workdir: str) -> str:
    """Puts a converted checkpoint at ``workdir/checkpoint`` (skipped when it is already there and
    was converted from the same source, weights and dtype). Process 0 converts; others wait."""
    out = os.path.join(workdir, CHECKPOINT_DIR)
    shd.run_on_writer(lambda: _convert(config, workdir, out), f"converting the checkpoint into {out}")
    return out


def _convert(config: Any, workdir: str, out: str) -> None:
    from moe_jax.convert.checkpoint import convert_checkpoint
    from moe_jax.convert.safetensors_io import scan_checkpoint

    m = config.model
    hf_dir = resolve_source(config, workdir)
    identity = {"source": source_identity(config), "hf_dir": os.path.abspath(hf_dir), "dtype": m.dtype,
                "checkpoint_sha256": scan_checkpoint(hf_dir).sha256}
    stamp = os.path.join(workdir, CONVERT_STAMP)
    if os.path.exists(os.path.join(out, "moe_jax.json")) and read_json(stamp, invalid_ok=True) == identity:
        log.info("checkpoint %s is up to date (converted from %s)", out, hf_dir)
        return
    convert_checkpoint(hf_dir, out, dtype=m.dtype, overwrite=True)
    atomic_write_json(stamp, identity)


def converted_identity(config: Any, workdir: str) -> dict[str, Any]:
    """What ``workdir/checkpoint`` was converted from; refuses a checkpoint of another source than
    ``config.model`` describes (the convert stage was not rerun after the config changed), and for
    source "hf_dir" one whose weights were replaced since (rescan: headers and sampled bytes). For
    "hub" (revision) and "tiny_random" (seed, spec) the source identity already pins the weights."""
    from moe_jax.convert.safetensors_io import scan_checkpoint

    stamp = read_json(os.path.join(workdir, CONVERT_STAMP))
    if stamp is None:
        raise StageError(f"{workdir}/{CHECKPOINT_DIR} has no record of its source ({CONVERT_STAMP}); "
                         "run the 'convert' stage")
    if stamp.get("source") != source_identity(config) or stamp.get("dtype") != config.model.dtype:
        raise StageError(f"{workdir}/{CHECKPOINT_DIR} was converted from {stamp.get('source')} "
                         f"({stamp.get('dtype')}), but config.model describes {source_identity(config)} "
                         f"({config.model.dtype}); run the 'convert' stage again")
    if config.model.source == "hf_dir":
        now = scan_checkpoint(config.model.hf_dir).sha256
        if now != stamp.get("checkpoint_sha256"):
            raise StageError(f"the weights in {config.model.hf_dir} changed since {workdir}/{CHECKPOINT_DIR} was "
                             f"converted from them (checkpoint sha256 {stamp.get('checkpoint_sha256')} -> {now}); "
                             "run the 'convert' stage again")
    return stamp


def source_identity(config: Any) -> dict[str, Any]:
    """What identifies the weights beyond the checkpoint's headers (a random seed, a hub revision)."""
    m = config.model
    if m.source == "tiny_random":
        return {"tiny": m.tiny.to_dict()}
    if m.source == "hub":
        return {"hub_id": m.hub_id, "revision": m.get("revision")}
    return {"hf_dir": os.path.abspath(m.hf_dir)}


def resolve_source(config: Any, workdir: str) -> str:
    """The HF checkpoint directory to convert: given, downloaded, or written (tiny random)."""
    m = config.model
    if m.source not in SOURCES:
        raise StageError(f"model.source {m.source!r} is not one of {SOURCES}")
    if m.source == "hf_dir":
        if not m.hf_dir or not os.path.isdir(m.hf_dir):
            raise FileNotFoundError(f"model.hf_dir {m.hf_dir!r} is not a directory")
        return m.hf_dir
    if m.source == "hub":
        return download(m.hub_id, m.get("revision"), m.get("cache_dir"))
    return write_tiny(config, os.path.join(workdir, TINY_DIR))


def download(hub_id: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """Snapshot of a hub repository's config, tokenizer and safetensors files (cached)."""
    if not hub_id:
        raise StageError("model.source is 'hub' but model.hub_id is empty")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(hub_id, revision=revision or None, cache_dir=cache_dir or None,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja",
                                                 "*.tiktoken"])
    except Exception as e:  # offline, gated, missing: one clear message
        raise RuntimeError(
            f"could not download {hub_id!r} (revision {revision or 'main'}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}\n"
            "If this machine is offline, download the checkpoint elsewhere and set model.source='hf_dir' "
            "and model.hf_dir=<dir>; if the model is gated, accept its licence on the hub and run "
            "`huggingface-cli login` (or set HF_TOKEN).") from e


def write_tiny(config: Any, out_dir: str) -> str:
    """A random tiny HF checkpoint + tiny tokenizer trained on the builtin corpus (rewritten only if
    ``model.tiny`` changed)."""
    from moe_jax import tiny
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer

    spec = config.model.tiny.to_dict()
    stamp = os.path.join(out_dir, "moe_jax_tiny.json")
    if read_json(stamp, invalid_ok=True) == spec:
        return out_dir
    tokenizer = build_tiny_tokenizer(out_dir, vocab_size=int(spec["vocab_size"]))
    # the model's vocabulary is exactly the tokenizer's
    hf_config = tiny.tiny_hf_config(spec["model_type"], **dict(spec.get("overrides", {}), vocab_size=len(tokenizer)))
    tiny.write_random_hf_checkpoint(out_dir, hf_config, seed=int(spec["seed"]),
                                    router_scale=float(spec["router_scale"]))
    atomic_write_json(stamp, spec)
    return out_dir

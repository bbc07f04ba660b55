"""Pieces of the pipeline config that every stage shares: the ``config.model`` section and the
model's identity and warning, the unknown-field check.

Below the stages: stage modules and library code import this, never the registry (``moe_jax.pipeline.registry``).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Collection, Iterable

from moe_jax.pipeline import fields as config_fields
from moe_jax.io import storage
from moe_jax.errors import StageError

SOURCES = ("tiny_random", "hf_dir", "hub")  # config.model.source
# Config fields whose keys are user data (task names, languages, HF config keys, mesh axes, logical
# axes, file overrides), not fields of moe_jax: check_config does not check their keys. Fields whose
# default is a plain value (None placeholders, FieldReference({}) mappings) are not descended into either.
FREE_FORM_FIELDS = ("config.tasks", "config.analysis.accuracy", "config.analysis.task_stores",
                    "config.mesh.shape", "config.mesh.rules", "config.model.tiny.overrides",
                    "config.eval.languages", "config.eval.data_dirs")
RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: this model is a tiny randomly initialised network; every routing "
                          "statistic, divergence and plot computed from it is meaningless (demo/test only).")


def collect_problems(checks: Iterable[Callable[[], Any]]) -> list[str]:
    """Runs every check of a stage's preflight (cheap, writes nothing) and returns the messages of
    those that raised: all the problems at once, not only the first. A check may also return a
    message or a list of messages (problems found without raising); any other value (a check's
    result, e.g. a plan or a config section) means no problem."""
    problems = []
    for check in checks:
        try:
            found = check()
        except (ValueError, OSError, LookupError) as e:  # StageError, MeshError, FileNotFoundError, ...
            problems.append(str(e).strip("'\""))
        else:
            found = [found] if isinstance(found, str) else found if isinstance(found, list) else []
            problems += [p for p in found if isinstance(p, str)]
    return problems


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
    m.dtype = "auto"  # parameter dtype after conversion: auto (the checkpoint's own) | float32 | bfloat16 | float16
    m.warning = ""  # shown by launch and stored in the routing store's meta ("" = automatic)
    # source "tiny_random": a random model of moe_jax.convert.tiny (plus a tiny tokenizer of vocab_size)
    m.tiny = ml_collections.ConfigDict({"model_type": "qwen2_moe", "seed": 0, "router_scale": 10.0,
                                        "vocab_size": 512, "overrides": {}})
    return m


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


def source_identity(config: Any) -> dict[str, Any]:
    """What identifies the weights beyond the checkpoint's headers (a random seed, a hub revision)."""
    m = config.model
    if m.source == "tiny_random":
        return {"tiny": m.tiny.to_dict()}
    if m.source == "hub":
        return {"hub_id": m.hub_id, "revision": m.get("revision")}
    return {"hf_dir": storage.absolute(m.hf_dir)}

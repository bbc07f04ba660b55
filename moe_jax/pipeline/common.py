"""Pieces every stage shares: the model's name, warning and identity (``config.model``, as
``options.ModelOptions``), and the preflight's problem collector.

Below the stages: stage modules import this, never the registry (``moe_jax.pipeline.registry``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from moe_jax.io import storage
from moe_jax import plan

RANDOM_WEIGHTS_WARNING = ("RANDOM WEIGHTS: this model is a tiny randomly initialised network; every routing "
                          "statistic, divergence and plot computed from it is meaningless (demo/test only).")
model_name = plan.model_name  # the model's display name (one definition, in the library below)


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


def model_warning(m: Any) -> str | None:
    """The warning that goes with the model's numbers (random weights), if any."""
    if m.get("warning"):
        return m.warning
    return RANDOM_WEIGHTS_WARNING if m.source == "tiny_random" else None


def source_identity(m: Any) -> dict[str, Any]:
    """What identifies the weights beyond the checkpoint's headers (a random seed, a hub revision)."""
    if m.source == "tiny_random":
        return {"tiny": m.tiny.to_dict()}
    if m.source == "hub":
        return {"hub_id": m.hub_id, "revision": m.get("revision")}
    return {"hf_dir": storage.absolute(m.hf_dir)}


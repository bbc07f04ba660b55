"""Whether an output was computed from the model ``config.model`` describes: each output that a later
stage reads records its model (``model_source``, ``dtype``); ``model_problems`` names those of another
model and the one command that redoes them.

Pipeline code: it takes ``options.ModelOptions``, never the config.
"""

from __future__ import annotations

from typing import Any, Mapping

from moe_jax.artifacts import layout as wd
from moe_jax.artifacts.fingerprint import fingerprint
from moe_jax.io import storage
from moe_jax.io.integrity import launch_command
from moe_jax.io.storage import read_json
from moe_jax.pipeline.common import source_identity
from moe_jax.pipeline.registry import STAGES


# the fields of a routing store's meta and an evaluation's identity that name the model's weights
MODEL_FIELDS = ("model_source", "dtype")


def differences(recorded: Any, now: Any, name: str) -> list[str]:
    """``"name.key: recorded != now"`` for each differing leaf of two JSON-like values (dicts descended)."""
    if isinstance(recorded, Mapping) and isinstance(now, Mapping):
        return [d for k in dict.fromkeys([*recorded, *now])
                for d in differences(recorded.get(k), now.get(k), f"{name}.{k}")]
    return [] if fingerprint(recorded) == fingerprint(now) else [f"{name}: {recorded!r} (recorded) != {now!r} (now)"]


def model_differences(recorded: Mapping[str, Any], model: Any) -> list[str]:
    """How the model an output records (``model_source``, ``dtype``) differs from ``model``
    (``options.ModelOptions``); fields the record lacks are not compared. [] = the same model."""
    now = {"model_source": source_identity(model), "dtype": model.dtype}
    return [d for k in MODEL_FIELDS if recorded.get(k) is not None for d in differences(recorded[k], now[k], k)]


# outputs a later stage reads that record their model: (stage that writes it, its directory in a workdir,
# manifest file, key of the model's identity in it or None for the manifest itself)
MODEL_OUTPUTS = (("collect", wd.routing_dir, "meta.json", None), ("eval", wd.eval_dir, "manifest.json", "identity"),
                 ("steer", lambda w: storage.join(wd.steer_dir(w), "baseline"), "manifest.json", "identity"))


def model_problems(model: Any, workdir: str, consumer: str,
                   outputs: list[tuple[str, str, str, str | None]]) -> list[str]:
    """Of ``outputs`` (stage, directory, manifest, identity key, like ``MODEL_OUTPUTS``), those recording
    another model than ``model`` (``options.ModelOptions``), as ``"<dir> holds outputs of another model
    (<field>: ...)"``, then one line with the command that redoes them all for the ``consumer`` stage: the
    stages that wrote them with ``overwrite`` (their preflight refuses outputs of another model otherwise),
    convert first when ``workdir/checkpoint`` is of another model too (collect, eval and steer refuse it),
    analyze after a new routing store. [] for no model (a config without a model section) or when every
    output is of ``model``."""
    if model is None:
        return []
    found = []
    for stage, path, manifest, key in outputs:
        recorded = read_json(storage.join(path, manifest), invalid_ok=True)
        recorded = (recorded or {}).get(key) if key and isinstance(recorded, dict) else recorded
        diffs = model_differences(recorded, model) if isinstance(recorded, dict) else []
        if diffs:
            found.append((stage, path, diffs))
    if not found:
        return []
    redo = {stage for stage, _, _ in found}
    converted = read_json(wd.convert_stamp(workdir), invalid_ok=True)
    if not isinstance(converted, dict) or model_differences(
            {"model_source": converted.get("source"), "dtype": converted.get("dtype")}, model):
        redo.add("convert")
    if "collect" in redo:
        redo.add("analyze")
    return [f"{path} holds outputs of another model ({'; '.join(diffs)})" for _, path, diffs in found] + [
        "to compute them again with config.model (their files are replaced), run: "
        + launch_command(workdir, [s for s in STAGES if s in {*redo, consumer}],
                         overwrite=[s for s in STAGES if s in {stage for stage, _, _ in found}])]

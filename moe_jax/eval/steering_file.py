"""A router intervention stored as JSON, for lm-eval's ``--model_args steering=FILE``.

The file is either a ``moe_jax.steering.spec.SteeringSpec`` (it has a ``"method"`` field) or holds
the ``Intervention`` fields directly, each ``[moe_layers, experts]`` nested lists or one
number for every entry; missing fields are neutral::

    {"bias": [[0.0, 1.5, ...], ...], "std_scale": 0.0, "abs_scale": [[...], ...],
     "mode": [["none", "force", ...], ...]}

``mode`` entries are ``"force"``, ``"none"``, ``"demote"``, ``"forbid"`` or their integer codes.
"""

from __future__ import annotations

import json
import os

import numpy as np

from moe_jax import storage
from moe_jax.models.config import ModelConfig
from moe_jax.models.intervention import DEMOTE, FORBID, FORCE, NONE, Intervention

MODES = {"force": FORCE, "none": NONE, "demote": DEMOTE, "forbid": FORBID}


def intervention_from_dict(d: dict, num_moe_layers: int, num_experts: int, source: str = "steering") -> Intervention:
    """Builds an ``Intervention [moe_layers, experts]`` from a dict of fields (see module doc)."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object with fields {list(Intervention._fields)}, "
                         f"got {type(d).__name__}")
    unknown = sorted(set(d) - set(Intervention._fields))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; known fields: {list(Intervention._fields)}")
    shape = (num_moe_layers, num_experts)
    out = Intervention.none(*shape)._asdict()
    for name, value in d.items():
        if name == "mode":
            arr = np.vectorize(lambda v: _mode_code(v, source), otypes=[np.int32])(np.asarray(value, object))
        else:
            try:
                arr = np.asarray(value, np.float32)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{source}: field {name!r} must be numbers: {e}") from None
        if arr.ndim != 0 and arr.shape != shape:
            raise ValueError(f"{source}: field {name!r} has shape {list(arr.shape)}; the model needs "
                             f"[moe_layers, experts] = {list(shape)} (or a single number)")
        if name != "mode" and not np.all(np.isfinite(arr)):
            raise ValueError(f"{source}: field {name!r} has non-finite values")
        out[name] = np.broadcast_to(arr, shape).astype(out[name].dtype)
    return Intervention(**out)


def load_intervention(path: str | os.PathLike, cfg: ModelConfig) -> Intervention:
    """Reads a steering JSON file (module doc; local or ``gs://``), validated against the model config ``cfg``."""
    path = os.fspath(path)
    try:
        d = json.loads(storage.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"steering file {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"steering file {path!r} is not valid JSON: {e}") from None
    if isinstance(d, dict) and "method" in d:
        from moe_jax.steering.spec import SteeringSpec, SteeringSpecError
        try:
            return SteeringSpec.from_dict(d).to_intervention(cfg)
        except (SteeringSpecError, TypeError) as e:
            raise ValueError(f"steering file {path!r}: {e}") from None
    return intervention_from_dict(d, cfg.num_moe_layers, cfg.num_experts, source=f"steering file {path!r}")


def _mode_code(v, source: str) -> int:
    if isinstance(v, str) and v.lower() in MODES:
        return MODES[v.lower()]
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and int(v) in MODES.values():
        return int(v)
    raise ValueError(f"{source}: unknown mode {v!r}; use one of {list(MODES)} or {sorted(MODES.values())}")

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

from moe_jax.io import storage
from moe_jax.models.config import ModelConfig
from moe_jax.models.intervention import DEMOTE, FORBID, FORCE, NONE, Intervention
from moe_jax.steering.spec import SteeringSpec, SteeringSpecError

MODES = {"force": FORCE, "none": NONE, "demote": DEMOTE, "forbid": FORBID}


def _field_array(name: str, value, source: str) -> np.ndarray:
    """One field's values as an array (mode names -> codes), checked to be numbers or modes."""
    if name == "mode":
        return np.vectorize(lambda v: _mode_code(v, source), otypes=[np.int32])(np.asarray(value, object))
    try:
        arr = np.asarray(value, np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: field {name!r} must be numbers: {e}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{source}: field {name!r} has non-finite values")
    return arr


def _check_fields(d, source: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object with fields {list(Intervention._fields)}, "
                         f"got {type(d).__name__}")
    unknown = sorted(set(d) - set(Intervention._fields))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown}; known fields: {list(Intervention._fields)}")


def intervention_from_dict(d: dict, num_moe_layers: int, num_experts: int, source: str = "steering") -> Intervention:
    """Builds an ``Intervention [moe_layers, experts]`` from a dict of fields (see module doc)."""
    _check_fields(d, source)
    shape = (num_moe_layers, num_experts)
    out = Intervention.none(*shape)._asdict()
    for name, value in d.items():
        arr = _field_array(name, value, source)
        if arr.ndim != 0 and arr.shape != shape:
            raise ValueError(f"{source}: field {name!r} has shape {list(arr.shape)}; the model needs "
                             f"[moe_layers, experts] = {list(shape)} (or a single number)")
        out[name] = np.broadcast_to(arr, shape).astype(out[name].dtype)
    return Intervention(**out)


def _read(path: str):
    try:
        return json.loads(storage.read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"steering file {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"steering file {path!r} is not valid JSON: {e}") from None


def load_intervention(path: str | os.PathLike, cfg: ModelConfig) -> Intervention:
    """Reads a steering JSON file (module doc; local or ``gs://``), validated against the model config ``cfg``."""
    path = os.fspath(path)
    d = _read(path)
    if isinstance(d, dict) and "method" in d:
        try:
            return SteeringSpec.from_dict(d).to_intervention(cfg)
        except (SteeringSpecError, TypeError) as e:
            raise ValueError(f"steering file {path!r}: {e}") from None
    return intervention_from_dict(d, cfg.num_moe_layers, cfg.num_experts, source=f"steering file {path!r}")


def check_steering_file(path: str | os.PathLike, cfg: ModelConfig | None = None) -> None:
    """Checks a steering file without applying it: against ``cfg`` as ``load_intervention`` does, or,
    before the model is known (``cfg`` None), everything but the shapes (JSON, fields, values)."""
    path = os.fspath(path)
    if cfg is not None:
        load_intervention(path, cfg)
        return
    d = _read(path)
    source = f"steering file {path!r}"
    if isinstance(d, dict) and "method" in d:
        try:
            SteeringSpec.from_dict(d)
        except (SteeringSpecError, TypeError) as e:
            raise ValueError(f"{source}: {e}") from None
        return
    _check_fields(d, source)
    for name, value in d.items():
        _field_array(name, value, source)


def _mode_code(v, source: str) -> int:
    if isinstance(v, str) and v.lower() in MODES:
        return MODES[v.lower()]
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and int(v) in MODES.values():
        return int(v)
    raise ValueError(f"{source}: unknown mode {v!r}; use one of {list(MODES)} or {sorted(MODES.values())}")

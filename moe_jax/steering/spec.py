"""Steering specs as data: a small JSON-serialisable description of one router intervention.

A ``SteeringSpec`` names a method, its strength ``lam`` and the targets as ``(decoder layer, expert,
weight)`` triples, plus provenance (which stores, tau, band, ...). ``to_intervention`` validates it
against a model config and builds the ``Intervention`` arrays ``[moe_layers, experts]``; per token
with router logits ``z`` and target weight ``w_e``:

========================  =====================================================================
method                    edit of target expert e (all other experts unchanged)
========================  =====================================================================
``soft``                  ``z_e += lam * w_e * std(z)`` (population std over all experts)
``hard``                  ``z_e = max(z) + margin`` (lam >= 0: forced on; deterministic margin
                          ``1e-4 * max(1, |max z|)``; with ``noise > 0`` plus eps ~ N(0, noise) per
                          token, seeded by ``seed``, which orders the forced experts) or ``z_e = min(z)``
                          (lam < 0: forced down)
``mask``                  ``z_e = -1e9``: the token re-routes to the next best experts
``proportional``          ``z_e += lam * w_e * |z_e|``; with ``vector_dtype="bfloat16"`` as published:
                          ``z_e = bf16(bf16(z_e) + bf16(v_e * |bf16(z_e)|))``,
                          ``v_e = bf16(lam * bf16(w_e))`` (float32 products, round to nearest even)
``bias``                  ``z_e += lam * w_e``
========================  =====================================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from moe_jax.io import storage
from moe_jax.models.config import ModelConfig
from moe_jax.models.intervention import DEMOTE, FORBID, FORCE, Intervention, check_mode_counts, round_bf16

METHODS = ("soft", "hard", "mask", "proportional", "bias")
VECTOR_DTYPES = ("float32", "bfloat16")  # bfloat16: the proportional edit rounded as published
# method -> the Intervention field that carries lam * weight (None: a mode instead)
_SCALED_FIELD = {"soft": "std_scale", "proportional": "abs_scale", "bias": "bias", "hard": None, "mask": None}


class SteeringSpecError(ValueError):
    """A steering spec is malformed or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class SteeringSpec:
    """One steering setting. ``targets``: ``(decoder layer, expert, weight)`` triples."""

    method: str
    targets: tuple[tuple[int, int, float], ...]
    lam: float = 0.0
    name: str = ""
    allow_over_k: bool = False  # hard: allow forcing more than top-k experts in one layer
    noise: float = 0.0  # hard: std of a per-token Gaussian offset added to the margin (the study: 1e-6)
    seed: int = 0  # hard with noise: seeds the per-token draws
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    vector_dtype: str = "float32"  # proportional: "bfloat16" holds the vector and does the edit in bf16

    def __post_init__(self):
        if self.method not in METHODS:
            raise SteeringSpecError(f"steering method {self.method!r} is not one of {METHODS}")
        try:
            targets = tuple((int(l), int(e), float(w)) for l, e, w in self.targets)
        except (TypeError, ValueError) as err:
            raise SteeringSpecError(f"steering targets must be (layer, expert, weight) triples: {err}") from None
        if not targets:
            raise SteeringSpecError(f"steering spec {self.name or self.method!r} has no targets")
        pairs = [(l, e) for l, e, _ in targets]
        dup = sorted({p for p in pairs if pairs.count(p) > 1})
        if dup:
            raise SteeringSpecError(f"steering targets repeat (layer, expert) pairs {dup}")
        if not np.isfinite(self.lam) or not all(np.isfinite(w) for _, _, w in targets):
            raise SteeringSpecError("steering lam and weights must be finite")
        if self.vector_dtype not in VECTOR_DTYPES:
            raise SteeringSpecError(f"steering vector_dtype {self.vector_dtype!r} is not one of {VECTOR_DTYPES}")
        if not (np.isfinite(self.noise) and self.noise >= 0):
            raise SteeringSpecError(f"steering noise must be a finite std >= 0, got {self.noise}")
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "lam", float(self.lam))
        object.__setattr__(self, "provenance", dict(self.provenance))

    @classmethod
    def from_targets(cls, method: str, targets, lam: float = 0.0, name: str = "", **kwargs) -> "SteeringSpec":
        """A spec from a ``moe_jax.steering.targets.Targets`` selection (its rule and params as provenance)."""
        provenance = {"rule": targets.rule, **_jsonable(targets.params), **kwargs.pop("provenance", {})}
        return cls(method, tuple(targets.pairs()), lam, name, provenance=provenance, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = [list(t) for t in self.targets]
        if d["vector_dtype"] == "float32":  # the default: specs written before the option stay identical
            del d["vector_dtype"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SteeringSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SteeringSpecError(f"unknown steering spec field(s) {unknown}; known: {sorted(known)}")
        if "method" not in d or "targets" not in d:
            raise SteeringSpecError("a steering spec needs 'method' and 'targets'")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SteeringSpec":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringSpec":
        """A spec from a JSON file, local or ``gs://``."""
        try:
            return cls.from_json(storage.read_bytes(path).decode("utf-8"))
        except json.JSONDecodeError as err:
            raise SteeringSpecError(f"{os.fspath(path)} is not valid JSON: {err}") from None
        except SteeringSpecError as err:
            raise SteeringSpecError(f"{os.fspath(path)}: {err}") from None

    def to_intervention(self, cfg: ModelConfig) -> Intervention:
        """The ``Intervention`` of this spec for ``cfg``; refuses targets the model does not have."""
        moe_ids = cfg.moe_layer_ids
        L, E = cfg.num_moe_layers, cfg.num_experts
        iv = Intervention.none(L, E)
        arrays = {f: getattr(iv, f) for f in ("bias", "std_scale", "abs_scale", "force_noise", "abs_bf16")}
        in_bf16 = self.method == "proportional" and self.vector_dtype == "bfloat16"
        mode = iv.mode
        for layer, expert, weight in self.targets:
            if layer not in moe_ids:
                where = "a dense layer" if 0 <= layer < cfg.num_layers else f"outside 0..{cfg.num_layers - 1}"
                raise SteeringSpecError(f"steering target layer {layer} is {where}; MoE layers: {list(moe_ids)}")
            if not 0 <= expert < E:
                raise SteeringSpecError(f"steering target expert {expert} at layer {layer} is outside 0..{E - 1}")
            row = moe_ids.index(layer)
            field = _SCALED_FIELD[self.method]
            if in_bf16:
                arrays[field][row, expert] = round_bf16(np.float32(self.lam) * round_bf16(np.float32(weight)))
                arrays["abs_bf16"][row, expert] = 1
            elif field is not None:
                arrays[field][row, expert] = self.lam * weight
            else:
                mode[row, expert] = FORBID if self.method == "mask" else (FORCE if self.lam >= 0 else DEMOTE)
                if mode[row, expert] == FORCE:
                    arrays["force_noise"][row, expert] = self.noise
        check_mode_counts(mode, cfg.top_k, moe_ids, allow_over_k=self.allow_over_k, what="hard steering",
                          error=SteeringSpecError)
        return iv._replace(mode=mode, noise_seed=np.full((L, E), self.seed, np.int32), **arrays)


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def specs_to_interventions(specs: Sequence[SteeringSpec], cfg: ModelConfig) -> Intervention:
    """Stacks the interventions of several specs along a new leading axis (a sweep's input)."""
    ivs = [s.to_intervention(cfg) for s in specs]
    return Intervention(*(np.stack(f) for f in zip(*ivs)))

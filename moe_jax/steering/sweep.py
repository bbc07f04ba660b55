"""A steering sweep as data: the grid of settings (methods x lambda x tau x band, plus controls),
the per-item comparison of a setting with the baseline, and how many routing decisions it changed.

Every setting is a ``SteeringSpec``; the sweep evaluates them with one compiled program per input
shape because interventions are inputs of the jitted model (the baseline is the neutral
intervention, so it shares the program too).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.intervention import Intervention
from moe_jax.steering import paired
from moe_jax.steering import targets as tg
from moe_jax.steering.spec import METHODS, SteeringSpec

# methods whose strength is lambda; the others take a fixed one (hard: +1 = force on; mask: unused)
LAMBDA_METHODS = ("soft", "proportional", "bias")
FIXED_LAMBDA = {"hard": 1.0, "mask": 0.0}
CONTROLS = ("random", "early", "late", "language")


@dataclasses.dataclass(frozen=True)
class Grid:
    """What a sweep varies. Bands are inclusive decoder-layer pairs."""

    methods: tuple[str, ...] = ("soft", "hard")
    lambdas: tuple[float, ...] = (0.5,)
    taus: tuple[float, ...] = (0.3,)
    bands: tuple[tuple[int, int], ...] = ()
    controls: tuple[str, ...] = ("random",)
    seed: int = 0
    top_k: int = 0  # the model's top-k: hard settings force at most this many experts per layer (0: no cap)
    vector_dtype: str = "float32"  # proportional settings: "bfloat16" rounds as published (SteeringSpec)

    def __post_init__(self):
        check_grid(self.methods, self.taus, self.controls)
        if not self.methods or not self.taus or not self.bands:
            raise ValueError("a steering grid needs at least one method, tau and band")


def check_grid(methods: Sequence[str], taus: Sequence[float], controls: Sequence[str]) -> None:
    """ValueError naming the ``steer.*`` option of an unknown method or control, or of a tau outside
    [0, 1) (targets are the experts with Delta > tau, and Delta, a difference of two routing shares,
    lies in [-1, 1]: a negative tau selects nearly every expert, tau >= 1 none)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown steering method(s) {unknown} (steer.methods); known: {', '.join(METHODS)}")
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown:
        raise ValueError(f"unknown steering control(s) {unknown} (steer.controls); known: {', '.join(CONTROLS)}")
    bad = [t for t in taus if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < 1]
    if bad:
        raise ValueError(f"steer.taus has {bad}: each tau must be in [0, 1), e.g. --config.steer.taus='(0.3,)' "
                         "(the targets are the experts with Delta > tau, and Delta, a difference of two routing "
                         "shares, lies in [-1, 1])")


def _fmt(x: float) -> str:
    return f"{x:g}"


def setting_name(method: str, rule: str, tau: float, band: tuple[int, int], lam: float) -> str:
    """A stable, file-name-safe name, e.g. ``soft-task-tau0.3-L8_35-lam0.5``."""
    lam_part = f"-lam{_fmt(lam)}" if method in LAMBDA_METHODS else ("" if method == "mask" else
                                                                    ("-on" if lam >= 0 else "-off"))
    return f"{method}-{rule}-tau{_fmt(tau)}-L{band[0]}_{band[1]}{lam_part}"


def band_of(setting: str) -> tuple[int, int] | None:
    """The band ``(lo, hi)`` of a setting named by ``setting_name`` (None for another name)."""
    m = re.search(r"-L(\d+)_(\d+)(?:-|$)", setting)
    return (int(m.group(1)), int(m.group(2))) if m else None


def band_table(rows: Sequence[Mapping[str, Any]], rule: str = "exclusive", method: str = "mask",
               task: str | None = None) -> dict[str, Any]:
    """The published masking table from the steer summary's rows: accuracy change per language
    (``languages``, rows) per steered band (``bands``, columns) of the ``rule`` x ``method`` settings,
    with the paired interval and McNemar p: ``delta``, ``low``, ``high``, ``p`` ``[languages, bands]``
    (NaN where a cell has no row). ``task``: the task's rows only (None: the first task)."""
    mine = [r for r in rows if r.get("rule") == rule and r.get("method") == method and band_of(r["setting"])]
    task = task if task is not None else (mine[0]["task"] if mine else None)
    mine = [r for r in mine if r["task"] == task]
    bands = sorted({band_of(r["setting"]) for r in mine})
    languages = list(dict.fromkeys(r["language"] for r in mine))
    out = {k: np.full((len(languages), len(bands)), np.nan) for k in ("delta", "low", "high", "p")}
    for r in mine:
        i, j = languages.index(r["language"]), bands.index(band_of(r["setting"]))
        for k, col in (("delta", "delta"), ("low", "ci_low"), ("high", "ci_high"), ("p", "p_mcnemar")):
            out[k][i, j] = float(r[col])
    return {"task": task, "languages": languages, "bands": bands, **out}


def _specs(targets: tg.Targets, rule: str, tau: float, band, grid: Grid, methods=None, lambdas=None,
           **provenance) -> list[SteeringSpec]:
    out = []
    for method in methods or grid.methods:
        # hard steering forces at most top-k experts per layer (the highest-scoring targets)
        t = tg.cap_per_layer(targets, grid.top_k) if method == "hard" and grid.top_k else targets
        for lam in (lambdas or grid.lambdas) if method in LAMBDA_METHODS else (FIXED_LAMBDA[method],):
            out.append(SteeringSpec.from_targets(method, t, lam, name=setting_name(method, rule, tau, band, lam),
                                                 provenance=provenance, vector_dtype=grid.vector_dtype))
    return out


def build_settings(select: Callable[[float, tuple[int, int]], tg.Targets], grid: Grid,
                   moe_layer_ids: Sequence[int], rule: str, *,
                   language_select: Callable[[float, tuple[int, int]], tg.Targets] | None = None,
                   provenance: Mapping[str, Any] | None = None) -> list[SteeringSpec]:
    """Every setting of ``grid``: ``select(tau, band)`` gives the targets of the main rule; the
    controls reuse the FIRST method and lambda at each (tau, band): ``random`` (same counts per layer,
    seeded), ``early`` / ``late`` (the same rule in a band of the same width at either end) and
    ``language`` (``language_select``: language experts instead of task experts)."""
    provenance = dict(provenance or {})
    specs: list[SteeringSpec] = []
    first = dict(methods=grid.methods[:1], lambdas=grid.lambdas[:1])
    for tau in grid.taus:
        for band in grid.bands:
            main = select(tau, band)
            specs += _specs(main, rule, tau, band, grid, **provenance)
            for control in grid.controls:
                if control == "random":
                    t, name = tg.random_targets(main, seed=grid.seed), f"random-{rule}"
                elif control in ("early", "late"):
                    shifted = tg.shifted_band(band, moe_layer_ids, control)
                    if shifted == tuple(band):
                        continue
                    try:
                        t, name = select(tau, shifted), f"{control}-{rule}"
                    except tg.EmptySelectionError:
                        continue  # nothing passes tau there: the control has no setting
                else:
                    if language_select is None:
                        raise ValueError("the 'language' control needs language_select")
                    try:
                        t, name = language_select(tau, band), "language"
                    except tg.EmptySelectionError:
                        continue
                specs += _specs(t, name, tau, tuple(t.params.get("band") or band), grid, control=control,
                                **first, **provenance)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"steering grid gives duplicate settings {dup}")
    return specs


# ------------------------------------------------------------------------------ effect on routing

@functools.partial(jax.jit, static_argnames=("cfg", "backend"))
def topk_change(params: dict, cfg: ModelConfig, input_ids: jax.Array, attention_mask: jax.Array,
                counted: jax.Array, intervention: Intervention, backend: str = "auto") -> jax.Array:
    """``[moe_layers]`` fraction of counted tokens whose top-k SET differs from the unsteered one."""
    neutral = jax.tree.map(jnp.zeros_like, intervention)
    base = forward(params, cfg, input_ids, attention_mask, intervention=neutral, return_router=True,
                   compute_logits=False, backend=backend).topk_idx
    steered = forward(params, cfg, input_ids, attention_mask, intervention=intervention, return_router=True,
                      compute_logits=False, backend=backend).topk_idx
    changed = jnp.any(jnp.sort(base, -1) != jnp.sort(steered, -1), -1)  # [L, B, S]
    c = counted.astype(bool)[None]
    return jnp.sum(changed & c, axis=(1, 2)) / jnp.maximum(jnp.sum(c), 1)


def steered_rows(iv: Intervention) -> np.ndarray:
    """``[moe_layers]`` bool: layers the intervention edits."""
    return np.any(np.stack([np.asarray(f) != 0 for f in iv]), axis=(0, 2))


# ------------------------------------------------------------------------------ paired comparison

def item_key(record: Mapping[str, Any]) -> tuple[str, int]:
    return str(record.get("lm_eval_task", "")), int(record["doc_id"])


def compare_records(baseline: Sequence[Mapping[str, Any]], steered: Sequence[Mapping[str, Any]], *,
                    n_boot: int = 10_000, seed: int = 0, where: str = "") -> paired.PairedResult:
    """Paired accuracy change on the items both runs scored (matched by lm-eval task and doc id);
    refuses runs that did not score the same items."""
    b = {item_key(r): bool(r["correct"]) for r in baseline}
    s = {item_key(r): bool(r["correct"]) for r in steered}
    if set(b) != set(s):
        raise ValueError(f"{where}: baseline and steered runs scored different items "
                         f"({len(set(b) - set(s))} only in the baseline, {len(set(s) - set(b))} only steered)")
    keys = sorted(b)
    return paired.paired_comparison([b[k] for k in keys], [s[k] for k in keys], n_boot=n_boot, seed=seed)

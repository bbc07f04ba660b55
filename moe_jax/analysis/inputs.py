"""What the analyze stage reads: the store's arrays restricted to the requested language pool
(``load_inputs``), and the task stores to compare with it (``resolve_task_stores``), each checked to
have been collected like the main store.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import numpy as np

from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.analysis.validate import check_consistent
from moe_jax.artifacts.routing_store import read_meta, read_store

log = logging.getLogger(__name__)

# meta fields a task store must share with the main store (when both record them): anything else
# that differs would enter Delta (docs/methods.md#task-and-language-experts) as if it were a task effect
TASK_STORE_MATCH = ("checkpoint_sha256", "dtype", "template", "tokenizer_sha256", "model_type", "num_layers",
                    "moe_layer_ids", "num_experts", "top_k")


class Skip(Exception):
    """An analysis whose inputs are missing; the message says why."""


@dataclasses.dataclass
class Inputs:
    """The store's arrays with the facts every analysis needs."""

    store: str
    meta: dict
    data: dict[str, dict[str, np.ndarray]]  # the pool's languages only
    languages: list[str]  # the pool: pivot first when present, then store order
    n_layers: int
    n_experts: int
    top_k: int
    layer_ids: list[int]
    pivot: str
    pool: dict = dataclasses.field(default_factory=dict)  # how the pool was chosen (summary's language_pool)

    @property
    def has_pivot(self) -> bool:
        return self.pivot in self.data

    def get(self, key: str) -> dict[str, np.ndarray]:
        return {l: self.data[l][key] for l in self.languages}

    def layer_cols(self, l: int) -> dict[str, int]:
        return {"layer": l, "decoder_layer": self.layer_ids[l]}

    def require_pivot(self, what: str) -> None:
        if not self.has_pivot:
            raise Skip(f"{what}: pivot {self.pivot!r} is not in the store (languages: {self.languages})")
        if len(self.languages) < 2:
            raise Skip(f"{what}: the store holds only the pivot language")


def select_languages(store: str, meta: dict, stored: list[str],
                     requested: list[str] | None) -> tuple[list[str], dict]:
    """The pool of languages to analyse and a record of how it was chosen.

    ``requested`` (``config.data.languages``) when given, else ``meta["requested_languages"]``
    (None or empty: every language), restricted to the languages the store holds; store languages
    outside the pool are logged and recorded as ``ignored``, requested ones the store lacks as ``missing``.
    """
    source = "config.data.languages"
    if requested is None:
        requested = list(meta.get("requested_languages") or []) or None
        source = "meta.requested_languages"
    if requested is None:
        return list(stored), {"languages": list(stored), "source": "store (every language)", "ignored": [],
                              "missing": []}
    pool = [l for l in stored if l in requested]
    ignored = [l for l in stored if l not in requested]
    missing = [l for l in requested if l not in stored]
    if ignored:
        log.warning("analyze: %s also holds %s (not in %s); left out of the analysis", store, ignored, source)
    if missing:
        log.warning("analyze: %s lacks requested language(s) %s (run the collect stage)", store, missing)
    if not pool:
        raise ValueError(f"routing store {store} holds none of the requested languages {requested} ({source}); "
                         f"it has {stored}")
    return pool, {"languages": pool, "source": source, "ignored": ignored, "missing": missing}


def load_inputs(store: str, pivot: str, requested: list[str] | None = None) -> Inputs:
    """The store's arrays restricted to the pool of languages (``select_languages``)."""
    meta, data = read_store(store)
    if not data:
        raise ValueError(f"routing store {store} holds no complete language")
    pool, pool_info = select_languages(store, meta, list(data), requested)
    data = {l: data[l] for l in pool}
    langs = ([pivot] if pivot in data else []) + [l for l in data if l != pivot]
    pool_info["languages"] = langs
    L, E = check_consistent({l: data[l]["topk_counts"] for l in langs}, f"{store}: topk_counts",
                            "[layers, experts]", 2)
    for key, axes in (("seq_mean_probs", 2), ("seq_topk_freq", 2)):
        check_consistent({l: data[l][key] for l in langs}, f"{store}: {key}", "[sequences, layers, experts]", axes)
    first = data[langs[0]]
    total = float(first["token_totals"][0])
    k = int(round(float(first["topk_counts"].sum(-1)[0]) / total)) if total > 0 else 1
    k = int(meta.get("top_k") or k)
    ids = meta.get("moe_layer_ids")
    ids = [int(i) for i in ids] if ids is not None and len(ids) == L else list(range(L))
    return Inputs(store, meta, data, langs, L, E, max(k, 1), ids, pivot, pool_info)


def parse_task_stores(spec: Any) -> dict[str, str]:
    """``analysis.task_stores`` (a mapping or ``"name=path,..."``) -> ``{task: store path}``."""
    if not spec:
        return {}
    if isinstance(spec, str):
        try:
            return dict(item.split("=", 1) for item in spec.split(","))
        except ValueError:
            raise ValueError(f"analysis.task_stores: expected 'name=path,...', got {spec!r}") from None
    return {str(k): str(v) for k, v in (spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)).items()}


def resolve_task_stores(task_stores: Any, tasks: Sequence[str] | None, workdir: str) -> tuple[dict[str, str], str]:
    """``({task: store path}, where they came from)``: ``task_stores`` (``analysis.task_stores``: a
    mapping or ``"name=path,..."``) when given, else the collect stage's ``workdir/tasks/<name>``
    stores of the names in ``tasks`` (``config.tasks``' names; None: of every store found there)."""
    explicit = parse_task_stores(task_stores)
    if explicit:
        return explicit, "analysis.task_stores"
    root = wd.tasks_dir(workdir)
    found = sorted(n for n in storage.listdir(root) if read_meta(storage.join(root, n)) is not None)
    if tasks is not None:
        missing = [n for n in tasks if n not in found]
        if missing:
            log.warning("analyze: no task store under %s for %s (run the collect stage)", root, missing)
        found = [n for n in tasks if n in found]
    return {n: storage.join(root, n) for n in found}, root


def check_task_store(task: str, path: str, tmeta: dict, inp: Inputs) -> None:
    """The task store was collected like the main store (``TASK_STORE_MATCH``, where both record the
    field); else Delta would mix e.g. template or dtype effects into the task effect."""
    for key in TASK_STORE_MATCH:
        ours, theirs = inp.meta.get(key), tmeta.get(key)
        if ours is None or theirs is None or ours == theirs:
            continue
        if key == "checkpoint_sha256":
            raise ValueError(f"task store {task!r} ({path}) was collected from another checkpoint "
                             f"({theirs}) than the main store {inp.store} ({ours})")
        if isinstance(ours, dict) and isinstance(theirs, dict):
            diff = {k: (theirs.get(k), ours.get(k)) for k in sorted(set(ours) | set(theirs))
                    if theirs.get(k) != ours.get(k)}
            what = "; ".join(f"{key}.{k}: {t!r} in the task store, {o!r} in the main store"
                             for k, (t, o) in diff.items())
        else:
            what = f"{key}: {theirs!r} in the task store, {ours!r} in the main store"
        raise ValueError(f"task store {task!r} ({path}) and the main store {inp.store} were collected with "
                         f"different options ({what}); Delta would mix that difference into the "
                         "task effect: collect both with the same model, dtype and config.data template options")


def task_language(task: str, path: str, tdata: dict, inp: Inputs) -> str:
    """The language of the task data, whose generic data it is compared with: the pivot (English
    task data against generic English text) or, for a single-language task store in another
    language, the main store's data of that same language (recorded as ``generic_language``)."""
    if inp.pivot in tdata:
        return inp.pivot
    if len(tdata) != 1:
        raise ValueError(f"task store {task!r} ({path}) has languages {sorted(tdata)} but no {inp.pivot!r}")
    lang = next(iter(tdata))
    if lang not in inp.data:
        where = ("is not in the pool of analysed languages " + str(inp.languages)
                 if lang in (inp.meta.get("languages") or {}) else "is not in the main store")
        raise ValueError(f"task store {task!r} ({path}) holds {lang!r} data, not the pivot {inp.pivot!r}; its "
                         f"generic data would be the main store's {lang!r} data, which {where}")
    log.info("task experts: %s holds %s data; compared with the main store's %s data (not the pivot's)",
             task, lang, lang)
    return lang

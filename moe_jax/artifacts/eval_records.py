"""Per-item evaluation records under ``workdir/eval`` and their manifest.

Layout::

    <workdir>/eval/manifest.json           format, identity (model, checkpoint, tokenizer, task options)
                                           and fingerprint; per finished (task, language) file its
                                           size, sha256 and score summary under "files"
    <workdir>/eval/<task>/<language>.jsonl one JSON object per item (language = FLORES code)
    <workdir>/eval/summary.csv             written by the eval stage (moe_jax.pipeline.eval)

Record fields: ``task``, ``lm_eval_task``, ``language`` (FLORES), ``code`` (the task's language code),
``doc_id`` (index among the task's test documents, after lm-eval's ``process_docs``), ``prompt_sha256``
(of the prompt text), then for generation ``response`` (raw model text) and ``extracted`` (after the
scored lm-eval filter), for multiple choice ``choices``, ``loglikelihoods`` (one per choice) and
``extracted`` (the choice of highest log-likelihood); ``target`` and ``correct`` (lm-eval's metric).

Each file is written atomically and then recorded in the manifest, so a (task, language) counts as done
only when its file exists with the recorded size and sha256: an interrupted run redoes exactly the
unfinished pairs, a damaged file is redone (and ``read_records`` refuses it, naming the command that
redoes it), and a workdir evaluated with another model or other task options is refused unless
``overwrite``, which replaces the records as the new ones are written, never deleting any first
(the routing store's conventions, ``moe_jax.artifacts.routing_store``). A summary of records is read through
``moe_jax.artifacts.stage_outputs``: only as its ``provenance.json`` publishes it, over records unchanged since.

``eval_dir`` may be local or ``gs://`` (every access goes through ``moe_jax.io.storage``). On object
storage the manifest is the directory's publishing marker: record objects are written first, the
manifest last, and a reader trusts only the files it names with their digest. A record being
rewritten is first dropped from the manifest, so a kill between the record and the manifest leaves
an unlisted object that the next run evaluates again, never one read against a stale entry. The
protocol is ``moe_jax.io.integrity``'s resumable units (``LAYOUT`` and ``UNITS``: how these records differ).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from moe_jax.io import storage
from moe_jax.artifacts import layout as wd
from moe_jax.io import integrity
from moe_jax.io.hashing import sha256_text
from moe_jax.io.integrity import StoreMismatchError  # noqa: F401  (raised by open_records)

log = logging.getLogger(__name__)

FORMAT = "moe_jax.eval_records/1"
MANIFEST = "manifest.json"
# manifest.json lists each <task>/<language>.jsonl under "files" with its file_size and file_sha256
LAYOUT = integrity.RecordLayout(MANIFEST, "files", "file_size", "file_sha256", format=FORMAT, suffix=".jsonl",
                                nested=True, wording=integrity.Wording(
    unreadable="{error}; delete it to evaluate every (task, language) of {dir} again",
    no_record="{path}: (task, language) ({parts[0]}, {parts[1]}) is not finished in {record_path}{tail}",
    unlisted="{path}: (task, language) ({parts[0]}, {parts[1]}) is not finished in {record_path}{tail}",
    missing="{path} is missing{tail}",
    changed="{path} has {size} bytes with sha256 {sha} but {want_size} bytes with sha256 {want_sha} were written "
            "(changed after writing){tail}",
    item_missing="{path} (missing)", item_changed="{path} (changed after it was written)"))
# another fingerprint: refused if it finished any pair; with overwrite nothing is deleted, records are replaced
# as the new ones are written
UNITS = integrity.Units(LAYOUT, refuse_unfinished=False, redo="it will be evaluated again", mismatch=(
    "{dir} holds evaluation records of another model or other task options (fingerprint {old!r} != {new!r}); "
    "use another workdir, or --config.eval.overwrite=True to replace them"))


def record_key(task: str, language: str) -> str:
    return f"{task}/{language}"


def record_path(eval_dir: str, task: str, language: str) -> str:
    return storage.join(eval_dir, task, f"{language}.jsonl")


def read_manifest(eval_dir: str) -> dict[str, Any] | None:
    return integrity.read_record(eval_dir, LAYOUT)


def check_records(eval_dir: str, fingerprint: str, *, overwrite: bool = False) -> dict[str, Any] | None:
    """The existing manifest of ``eval_dir`` (None when there is none), after checking that a run of
    ``fingerprint`` may write there: another fingerprint is refused (``StoreMismatchError``) unless
    ``overwrite`` (a manifest that lists no finished file, left by a failed run, is replaced freely).
    Reads only: a caller checks every directory it will write before writing any."""
    return integrity.check_units(eval_dir, UNITS, {"fingerprint": fingerprint}, overwrite=overwrite)


def open_records(eval_dir: str, identity: Mapping[str, Any], fingerprint: str, *, overwrite: bool = False) -> dict:
    """The manifest a run of ``identity`` writes into (pass it to ``is_done`` and ``write_records``):
    the existing one when its fingerprint matches, else a new empty one (another fingerprint: refused
    unless ``overwrite``, ``check_records``). Replacing deletes nothing here: the old manifest and
    files stay until ``write_records`` writes the first replacement record, and then only the files
    rewritten are replaced (the others stay on disk, unlisted)."""
    return integrity.open_units(eval_dir, UNITS, {"identity": dict(identity), "fingerprint": fingerprint},
                                overwrite=overwrite)


def is_done(eval_dir: str, task: str, language: str, manifest: Mapping[str, Any] | None = None) -> bool:
    """The file of (task, language) is in the manifest (``manifest``, from ``open_records``, else the
    one on disk) and intact (size and sha256 as recorded)."""
    return bool(integrity.done_units(eval_dir, UNITS, manifest, [record_key(task, language)]))


def write_records(eval_dir: str, task: str, language: str, records: Sequence[Mapping[str, Any]],
                  summary: Mapping[str, Any], opened: Mapping[str, Any] | None = None) -> None:
    """Writes one (task, language) file atomically, then records it (size, sha256, summary) in the
    manifest, written last. An existing entry is dropped from the manifest before its file is
    rewritten: a kill in between leaves the pair unfinished, never a listed entry with new bytes.
    ``opened``: the manifest ``open_records`` returned; when it replaces one of another fingerprint
    (overwrite), the new empty manifest is written first, with this first replacement record."""
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records).encode("utf-8")
    integrity.write_unit(eval_dir, UNITS, record_key(task, language), data, summary, opened)


def repair_hint(eval_dir: str) -> str:
    """The command that redoes a damaged record file of ``eval_dir`` (``workdir/eval`` or
    ``workdir/steer/<setting>``)."""
    eval_dir = storage.absolute(eval_dir)
    parent = os.path.dirname(eval_dir)
    if os.path.basename(eval_dir) in (wd.EVAL, wd.STEER):  # a record directory or the sweep's own summary
        workdir, stage = parent, os.path.basename(eval_dir)
    elif os.path.basename(parent) == wd.STEER:
        workdir, stage = os.path.dirname(parent), "steer"
    else:
        return "run the stage that wrote it again to redo it"
    return integrity.repair(stage, workdir, "to redo it")


def read_records(eval_dir: str, task: str, language: str) -> list[dict[str, Any]]:
    """The records of (task, language), checked against the manifest first (listed, present, of the
    recorded size and sha256): ValueError naming the file and the command that redoes it otherwise."""
    path = record_path(eval_dir, task, language)
    try:
        data = integrity.verify(eval_dir, record_key(task, language), LAYOUT, hint=repair_hint(eval_dir))
    except integrity.UnpublishedError as e:
        raise ValueError(str(e)) from None
    try:
        return [json.loads(line) for line in data.decode("utf-8").split("\n") if line.strip()]
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON lines ({e}); {repair_hint(eval_dir)}") from e


def damaged_records(eval_dir: str) -> list[str]:
    """``"path (why)"`` of each file the manifest of ``eval_dir`` lists that is missing or changed since
    it was written; [] when every one is intact (or there is no manifest)."""
    return integrity.damage(eval_dir, LAYOUT)


# -- records from lm-eval's logged samples -------------------------------------------------------

def _plain(x: Any) -> Any:
    """JSON-safe copy of lm-eval values (numpy scalars, tuples)."""
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def item_record(sample: Mapping[str, Any], *, metric: str, doc_id: int) -> dict[str, Any]:
    """The record fields of one lm-eval logged sample (one document, the scored filter)."""
    args = sample["arguments"]
    prompt = args[0][0]
    out: dict[str, Any] = {"doc_id": int(doc_id), "prompt_sha256": sha256_text(prompt)}
    if isinstance(args[0][1], str):  # multiple choice: (context, continuation) per choice
        choices = [a[1].strip() for a in args]
        lls = [float(r[0]) for r in sample["filtered_resps"]]
        target = sample["target"]
        out.update(choices=choices, loglikelihoods=lls, extracted=choices[int(np.argmax(lls))],
                   target=choices[target] if isinstance(target, (int, np.integer)) else str(target))
    else:  # generation: (context, generation kwargs)
        out.update(response=str(sample["resps"][0][0]), extracted=_plain(sample["filtered_resps"][0]),
                   target=_plain(sample["target"]))
    out["correct"] = bool(float(sample[metric]) == 1.0)
    return out


def records_from_results(results: Mapping[str, Any], *, task: str, language: str, code: str,
                         lm_eval_tasks: Sequence[str], metric: str, filter_name: str,
                         samples: Mapping[str, Sequence[int]] | None = None) -> list[dict[str, Any]]:
    """Records of every scored item of ``lm_eval_tasks`` in a ``simple_evaluate(log_samples=True)``
    result. lm-eval numbers the items it evaluated 0.. (in dataset order): with ``samples`` the
    record's ``doc_id`` is mapped back to the dataset index."""
    out = []
    for lm_task in lm_eval_tasks:
        chosen = sorted(samples[lm_task]) if samples and lm_task in samples else None
        logged = [s for s in results["samples"][lm_task] if s.get("filter") == filter_name]
        for s in sorted(logged, key=lambda s: s["doc_id"]):
            doc_id = chosen[s["doc_id"]] if chosen is not None else s["doc_id"]
            out.append({"task": task, "lm_eval_task": lm_task, "language": language, "code": code,
                        **item_record(s, metric=metric, doc_id=doc_id)})
    return out


def check_against_lm_eval(records: Sequence[Mapping[str, Any]], results: Mapping[str, Any],
                          lm_eval_tasks: Sequence[str], metric_key: str) -> None:
    """Each lm-eval task's mean of ``correct`` equals lm-eval's own aggregate (a consistency check)."""
    for lm_task in lm_eval_tasks:
        mine = [r["correct"] for r in records if r["lm_eval_task"] == lm_task]
        theirs = float(results["results"][lm_task][metric_key])
        if not mine or abs(float(np.mean(mine)) - theirs) > 1e-9:
            raise RuntimeError(f"{lm_task}: records give accuracy {np.mean(mine) if mine else None} over "
                               f"{len(mine)} items, lm-eval reports {metric_key} = {theirs}")


# -- scores ----------------------------------------------------------------------------------------

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(center - half)), min(1.0, float(center + half))  # rounding: k = 0 gives -1e-17


def score(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of one (task, language): the unweighted mean over its lm-eval tasks (subjects) of
    their accuracies, with a 95% interval: Wilson on the pooled items when every subject has the same
    number of items (then the mean equals the pooled accuracy; always so for one subject), else the
    normal interval of the stratified mean (variance sum_s p_s (1 - p_s) / n_s / S^2)."""
    groups: dict[str, list[bool]] = {}
    for r in records:
        groups.setdefault(r["lm_eval_task"], []).append(bool(r["correct"]))
    n = sum(len(v) for v in groups.values())
    if n == 0:
        return {"accuracy": float("nan"), "n": 0, "ci_low": float("nan"), "ci_high": float("nan"), "interval": "none"}
    accs = [float(np.mean(v)) for v in groups.values()]
    acc = float(np.mean(accs))
    if len({len(v) for v in groups.values()}) == 1:
        lo, hi = wilson_interval(sum(sum(v) for v in groups.values()), n)
        method = "wilson"
    else:
        se = float(np.sqrt(sum(a * (1 - a) / len(v) for a, v in zip(accs, groups.values())))) / len(groups)
        lo, hi, method = max(0.0, acc - Z95 * se), min(1.0, acc + Z95 * se), "stratified-normal"
    return {"accuracy": acc, "n": n, "ci_low": lo, "ci_high": hi, "interval": method}

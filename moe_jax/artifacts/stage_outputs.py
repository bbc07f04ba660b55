"""The published outputs of the analyze, eval and steer stages: their file names and their verified
readers. A later stage (steer, report) or a CLI (compare) reads another stage's outputs only here,
never through that stage's module: no stage module imports another.

Every reader returns a file only as its stage published it (``provenance.json`` written last, with the
file's size and sha256): an unfinished run (``storage.UnpublishedError``), a damaged or edited file
(``storage.DigestMismatchError``) or, for eval and steer, records changed since (``StageError``) raise,
naming the file and the command that redoes it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from moe_jax.artifacts import eval_records, layout as wd, lineage
from moe_jax.errors import StageError
from moe_jax.io import storage

ANALYSIS_SUMMARY = "summary.json"  # workdir/analysis/summary.json
EVAL_SUMMARY_FILES = ("summary.json", "summary.csv")  # published by eval/provenance.json
STEER_OUTPUT_FILES = ("summary.json", "summary.csv", "settings.json")  # published by steer/provenance.json


def _parsed(data: bytes, name: str) -> Any:
    return json.loads(data) if name.endswith(".json") else data


def read_analysis(workdir: str, name: str = ANALYSIS_SUMMARY) -> Any:
    """The JSON value of ``workdir/analysis/<name>`` as the last finished analyze run wrote it: only
    a file its ``provenance.json`` names, with the recorded digest (``lineage.read_output`` raises
    otherwise, naming the file)."""
    return json.loads(lineage.read_output(wd.analysis_dir(workdir), name))


def analysis_staleness(workdir: str, current: Callable[[], tuple[Mapping[str, Any], str]] | None = None
                       ) -> list[str]:
    """What changed since ``workdir/analysis`` was computed ([] = current; no analysis there: []): an
    unfinished run (no ``provenance.json``: a run removes it first and writes it last), a damaged
    ``summary.json``, and inputs that changed: with ``current`` (``() -> (inputs, settings
    fingerprint)`` as the analyze stage records them, from the config), against those; otherwise the
    recorded inputs' digests only."""
    out_dir = wd.analysis_dir(workdir)
    if not storage.exists(storage.join(out_dir, ANALYSIS_SUMMARY)):
        return []
    stamp = lineage.read_stamp(out_dir)
    if stamp is None:
        return [f"no {lineage.STAMP} (computed before provenance was recorded)"]
    damaged = [f"analysis/{d}" for d in lineage.damaged(stamp, out_dir, [ANALYSIS_SUMMARY])]
    return damaged + (lineage.stale(stamp, workdir) if current is None else lineage.changed(stamp, *current()))


def require_current_analysis(workdir: str, reader: str) -> None:
    """Before the stage ``reader`` reads ``workdir/analysis``: one that is unfinished, damaged or computed
    from other inputs than the current ones is refused, naming the command that computes it again (the
    registry runs the analyze stage first when it is stale: no stage runs another)."""
    changed = analysis_staleness(workdir)
    if changed:
        raise StageError(f"{wd.analysis_dir(workdir)} was computed from other inputs than the current ones "
                         f"(changed: {', '.join(changed)}); run the analyze stage again first: python -m "
                         f"moe_jax.launch --config=<your config> --workdir={workdir} --stages=analyze,{reader}")


def read_eval(workdir: str, name: str = "summary.json") -> Any:
    """The eval stage's ``summary.json`` (parsed) or ``summary.csv`` (bytes) as its ``provenance.json``
    publishes it, over records unchanged and intact since (``eval_records.read_published``)."""
    return _parsed(eval_records.read_published(wd.eval_dir(workdir), name, workdir), name)


def read_steer(workdir: str, name: str = "summary.json") -> Any:
    """``steer/summary.json`` or ``settings.json`` (parsed), or ``summary.csv`` (bytes), as the sweep's
    ``provenance.json`` publishes it, over setting records unchanged and intact since
    (``eval_records.read_published``)."""
    return _parsed(eval_records.read_published(wd.steer_dir(workdir), name, workdir), name)

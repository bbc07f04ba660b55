"""The published outputs of the analyze, eval and steer stages: their file names and their verified
readers. A later stage (steer, report) or a CLI (compare) reads another stage's outputs only here,
never through that stage's module: no stage module imports another.

Every reader returns a file only as its stage published it (``provenance.json`` written last, with the
file's size and sha256): an unfinished run (``integrity.UnpublishedError``), a damaged or edited file
(``integrity.DigestMismatchError``) or, for eval and steer, records changed since (``StageError``) raise,
naming the file and the command that redoes it.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from moe_jax.artifacts import eval_records, layout as wd, lineage
from moe_jax.errors import StageError
from moe_jax.io import integrity, storage

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


def _read_summary(out_dir: str, name: str, workdir: str) -> bytes:
    """``out_dir/name`` (a summary of the eval or steer stage) as ``out_dir``'s ``provenance.json``
    publishes it, once the record directories it summarises (its recorded inputs) are checked:
    unchanged since (manifest digests) and intact (every listed file's size and sha256). Else
    ``StageError`` naming what changed, the stage and the command that redoes it."""
    hint = eval_records.repair_hint(out_dir)
    try:
        data = lineage.read_output(out_dir, name, fix=hint)
    except (integrity.UnpublishedError, integrity.DigestMismatchError) as e:
        raise StageError(str(e)) from None
    stamp = lineage.read_stamp(out_dir)
    problems = [f"{n} ({path}) changed after {name} was written" for n, path in lineage.input_paths(stamp, workdir).items()
                if n in lineage.stale(stamp, workdir)]
    problems += [d for path in lineage.input_paths(stamp, workdir).values() for d in eval_records.damaged_records(path)]
    if problems:
        raise StageError(f"{storage.join(out_dir, name)} summarises records that changed since: "
                         f"{'; '.join(problems)}; {hint}")
    return data


def read_eval(workdir: str, name: str = "summary.json") -> Any:
    """The eval stage's ``summary.json`` (parsed) or ``summary.csv`` (bytes) as its ``provenance.json``
    publishes it, over records unchanged and intact since (``_read_summary``)."""
    return _parsed(_read_summary(wd.eval_dir(workdir), name, workdir), name)


def read_steer(workdir: str, name: str = "summary.json") -> Any:
    """``steer/summary.json`` or ``settings.json`` (parsed), or ``summary.csv`` (bytes), as the sweep's
    ``provenance.json`` publishes it, over setting records unchanged and intact since
    (``_read_summary``)."""
    return _parsed(_read_summary(wd.steer_dir(workdir), name, workdir), name)

"""The study's evaluation tasks as a table of lm-eval task definitions (prompt, filters and metric are
lm-eval's own YAML files, loaded as they are; only the data source may be overridden).

| task            | lm-eval tasks                                | score                                 |
|-----------------|----------------------------------------------|---------------------------------------|
| ``mgsm``        | ``mgsm_direct_<iso>`` (0-shot, greedy)       | ``exact_match,flexible-extract``      |
| ``gmmlu_medical``| ``global_mmlu_full_<iso>_<subject>``, 7 medical subjects, 60 fixed items each | ``acc``, unweighted mean over subjects |
| ``belebele``    | ``belebele_<flores>`` (0-shot)               | ``acc``                               |

Languages are given as FLORES codes (``deu_Latn``) or as the task's own codes (ISO 639-1 ``de`` for
MGSM and Global-MMLU); records and summaries use the FLORES code and show the task's code beside it.

Offline, a task reads local files in the hub schema instead: ``<dir>/<task code>.jsonl`` (or ``.json``,
``.parquet``) per language, e.g. ``mgsm/de.jsonl`` with ``question``, ``answer`` (null) and
``answer_number``; Global-MMLU files hold every subject's rows (lm-eval's ``process_docs`` selects
the subject). This is an lm-eval task-config override (``dataset_path`` "json"/"parquet" +
``dataset_kwargs.data_files``), so the prompt and filters stay lm-eval's.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import pyarrow.parquet as pq

from moe_jax.io import hashing, storage
from moe_jax.data import languages as lang_lib

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
DEMO_DIR = os.path.join(DATA_DIR, "demo")  # small sets written for moe_jax (README there): not benchmark data
FILE_EXTENSIONS = (".jsonl", ".json", ".parquet")

MEDICAL_SUBJECTS = ("clinical_knowledge", "college_medicine", "human_aging", "medical_genetics", "nutrition",
                    "professional_medicine", "virology")
MGSM_LANGUAGES = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
GMMLU_LANGUAGES = ("am", "ar", "bn", "cs", "de", "el", "en", "es", "fa", "fil", "fr", "ha", "he", "hi", "id", "ig",
                   "it", "ja", "ko", "ky", "lt", "mg", "ms", "ne", "nl", "ny", "pl", "pt", "ro", "ru", "si", "sn",
                   "so", "sr", "sv", "sw", "te", "tr", "uk", "vi", "yo", "zh")
# task codes that are not ISO 639-1 (Global-MMLU's Filipino)
CODE_OVERRIDES = {"fil": "fil_Latn"}


class TaskError(ValueError):
    """An unknown task, a language a task lacks, or unusable local data."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One study task: which lm-eval task files, in which languages, scored how."""

    name: str
    yaml: str  # lm-eval task file under lm_eval/tasks; {code} = the task's language code, {subject}
    codes: tuple[str, ...]  # the task's language codes (lm-eval's naming)
    code_kind: str  # "iso639_1" or "flores": how ``codes`` name languages
    metric: str  # "<metric>,<filter>" key of lm-eval's results and of each sample's metrics
    fields: tuple[str, ...]  # fields a local file must have (the hub schema the prompt uses)
    subjects: tuple[str, ...] = ()  # one lm-eval task per subject; score = unweighted mean over them
    items_file: str | None = None  # {subject: fixed doc indices}, applied through simple_evaluate's samples=
    description: str = ""
    # values a local file's field must take for lm-eval's prompt and target (any other fails deep inside
    # lm-eval's templates): {field: allowed values}, and fields that must be numbers
    choices: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    numbers: tuple[str, ...] = ()

    @property
    def metric_name(self) -> str:
        return self.metric.split(",")[0]

    @property
    def filter_name(self) -> str:
        return self.metric.split(",")[1]

    def flores(self, code: str) -> str:
        """FLORES code of one of the task's language codes."""
        if self.code_kind == "flores":
            return code
        return CODE_OVERRIDES.get(code) or lang_lib.from_iso639_1(code)

    @property
    def languages(self) -> dict[str, str]:
        """``{FLORES code: task code}`` of every language the task has."""
        return {self.flores(c): c for c in self.codes}

    def lm_eval_tasks(self, code: str) -> list[str]:
        """The lm-eval task names of one language (one per subject)."""
        return [os.path.basename(self.yaml.format(code=code, subject=s))[:-len(".yaml")]
                for s in (self.subjects or ("",))]


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("mgsm", "mgsm/direct/mgsm_direct_{code}.yaml", MGSM_LANGUAGES, "iso639_1",
             "exact_match,flexible-extract", ("question", "answer", "answer_number"),
             description="MGSM direct, 0-shot, greedy generation; last number of the response vs the answer",
             numbers=("answer_number",)),
    TaskSpec("gmmlu_medical", "global_mmlu/full/{code}/global_mmlu_full_{code}_{subject}.yaml", GMMLU_LANGUAGES,
             "iso639_1", "acc,none",
             ("subject", "question", "option_a", "option_b", "option_c", "option_d", "answer"),
             subjects=MEDICAL_SUBJECTS, items_file=os.path.join(DATA_DIR, "gmmlu_medical_samples.json"),
             description="Global-MMLU medical subset, 0-shot log-likelihood multiple choice, 60 fixed items per subject",
             choices={"answer": ("A", "B", "C", "D")}),
    TaskSpec("belebele", "belebele/belebele_{code}.yaml", lang_lib.BELEBELE_LANGUAGES, "flores", "acc,none",
             ("flores_passage", "question", "mc_answer1", "mc_answer2", "mc_answer3", "mc_answer4",
              "correct_answer_num"),
             description="Belebele, 0-shot log-likelihood multiple choice",
             choices={"correct_answer_num": ("1", "2", "3", "4")}),
)}


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise TaskError(f"unknown evaluation task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def resolve_language(spec: TaskSpec, language: str) -> tuple[str, str]:
    """``(FLORES code, task code)`` of a language given either way; a language the task lacks is an
    error listing the task's languages."""
    langs = spec.languages
    key = str(language).strip()
    if key in langs:
        return key, langs[key]
    if key in spec.codes:
        return spec.flores(key), key
    listing = ", ".join(f"{c} ({f})" if c != f else c for f, c in langs.items())
    try:  # the other naming (ISO 639-1 <-> FLORES), a known language the task lacks, or a typo
        flores = lang_lib.from_iso639_1(key) if key.isalpha() and len(key) == 2 else lang_lib.validate_language(key)
    except lang_lib.UnknownLanguageError as e:
        raise TaskError(f"task {spec.name!r} has no language {key!r} ({e}); its languages: {listing}") from None
    if flores in langs:
        return flores, langs[flores]
    raise TaskError(f"task {spec.name!r} has no language {key!r}" + (f" ({flores})" if flores != key else "")
                    + f"; its languages: {listing}")


def resolve_languages(spec: TaskSpec, languages: Sequence[str] | None) -> dict[str, str]:
    """``{FLORES code: task code}`` of the requested languages in order (all of the task's when None)."""
    if not languages:
        return spec.languages
    out: dict[str, str] = {}
    for lang in languages:
        flores, code = resolve_language(spec, lang)
        if flores in out:
            raise TaskError(f"task {spec.name!r}: language {lang!r} is listed twice ({flores})")
        out[flores] = code
    return out


@functools.lru_cache(maxsize=None)
def fixed_items(path: str) -> dict[str, tuple[int, ...]]:
    """``{subject: doc indices}`` of an items file (positions among the subject's test rows)."""
    with open(path) as f:
        data = json.load(f)
    return {k: tuple(int(i) for i in v) for k, v in data.items()}


def samples_for(spec: TaskSpec, code: str, limit: int | None) -> dict[str, list[int]] | None:
    """lm-eval ``samples=`` for the task's fixed items (the first ``limit`` of each subject, in
    dataset order), or None for a task without them."""
    if spec.items_file is None:
        return None
    items = fixed_items(spec.items_file)
    out = {}
    for subject, task in zip(spec.subjects, spec.lm_eval_tasks(code)):
        idx = sorted(items[subject])
        out[task] = idx[:limit] if limit else idx
    return out


def local_file(spec: TaskSpec, code: str, directory: str) -> str:
    """The local data file of one language: ``<directory>/<code>.{jsonl,json,parquet}``."""
    for ext in FILE_EXTENSIONS:
        path = storage.join(directory, code + ext)
        if storage.exists(path):
            return path
    raise TaskError(f"task {spec.name!r}: no local data for language {code!r} in {directory} "
                    f"(expected {code}.jsonl, {code}.json or {code}.parquet)")


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON lines, JSON (list of objects) or parquet file (local or ``gs://``)."""
    return [row for _, row in _located_rows(path)]


def _located_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` of every row: ``where`` is "line N" in a .jsonl file (blank lines skipped), else
    "row N" (from 0). Text that is not JSON, or a row that is not an object, is a TaskError naming the
    file and the line."""
    if path.endswith(".parquet"):
        with storage.open(path, "rb") as f:
            return [(f"row {i}", r) for i, r in enumerate(pq.read_table(f).to_pylist())]
    raw = storage.read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise TaskError(f"{path}, line {line}: not UTF-8 text ({e.reason} at byte {e.start}); save the file as "
                        "UTF-8") from None
    if path.endswith(".jsonl"):
        out = []
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                out.append((f"line {n}", _json(line, f"{path}, line {n}", "each line of a .jsonl file is one "
                                                                           "JSON object")))
        rows = out
    else:
        data = _json(text, path, "a .json task file is a list of row objects (or {\"data\": [...]})")
        data = data if isinstance(data, list) else list(data.get("data", data.get("rows", [])))
        rows = [(f"row {i}", r) for i, r in enumerate(data)]
    for where, row in rows:
        if not isinstance(row, dict):
            raise TaskError(f"{path}, {where}: a JSON {type(row).__name__}, not an object with the task's fields")
    return rows


def _json(text: str, where: str, layout: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}" if "line" not in where else f"column {e.colno}"
        raise TaskError(f"{where}: not valid JSON ({e.msg} at {at}); fix it: {layout}") from None


def check_local_file(spec: TaskSpec, path: str) -> int:
    """Every row has every field the task's prompt and target use, with values they accept; returns
    the row count."""
    rows = _located_rows(path)
    if not rows:
        raise TaskError(f"{path}: no rows (task {spec.name!r})")
    for i, (where, row) in enumerate(rows):
        missing = [f for f in spec.fields if f not in row]
        if missing:
            raise TaskError(f"{path}: row {i} lacks field(s) {missing} that task {spec.name!r} needs "
                            f"(fields: {', '.join(spec.fields)}; {where})")
        for field, allowed in spec.choices.items():
            if row[field] not in allowed:
                raise TaskError(f"{path}, {where}: {field} is {row[field]!r}; task {spec.name!r} needs one of "
                                f"{', '.join(repr(a) for a in allowed)} (lm-eval's prompt indexes its choices by it)")
        for field in spec.numbers:
            if isinstance(row[field], bool) or not isinstance(row[field], (int, float)):
                raise TaskError(f"{path}, {where}: {field} is {row[field]!r}; task {spec.name!r} needs a number "
                                "(the answer the response's last number is compared with)")
    return len(rows)


def check_fixed_items(spec: TaskSpec, code: str, path: str, limit: int | None) -> None:
    """A local file holds the task's fixed items (``samples_for``: positions among each subject's rows):
    else a TaskError naming the file, the subject, how many rows it has and how many the items need,
    instead of lm-eval's assertion deep in ``simple_evaluate``. No-op for a task without fixed items."""
    samples = samples_for(spec, code, limit)
    if not samples:
        return
    counts: dict[str, int] = {}
    for row in read_rows(path):
        counts[row.get("subject")] = counts.get(row.get("subject"), 0) + 1
    for subject, task in zip(spec.subjects, spec.lm_eval_tasks(code)):
        need = max(samples[task], default=-1) + 1
        if counts.get(subject, 0) < need:
            raise TaskError(
                f"{path}: task {spec.name!r} evaluates fixed items of each subject (eval.fixed_items=True), up to "
                f"position {need - 1} of subject {subject!r}, but the file has {counts.get(subject, 0)} row(s) of it. "
                "Give the full Global-MMLU test split, or set eval.fixed_items=False to evaluate the file's own rows"
                + (" (eval.source='demo' does that for the shipped demo files)" if DEMO_DIR in os.path.abspath(path)
                   else ""))


def _lm_eval_tasks():
    """lm-eval's ``tasks`` package (its task files and YAML loader), imported on first use: the import
    takes seconds, and the pipeline's preflight reads this module's tables without it."""
    import lm_eval.tasks._yaml_loader  # lazy on purpose (see above)
    return lm_eval.tasks


def lm_eval_task_dir() -> str:
    return os.path.dirname(os.path.abspath(_lm_eval_tasks().__file__))


@functools.lru_cache(maxsize=None)
def _load_yaml(path: str) -> dict[str, Any]:
    load_yaml = _lm_eval_tasks()._yaml_loader.load_yaml
    if not os.path.exists(path):
        raise TaskError(f"lm-eval has no task file {path} (lm-eval version too old?)")
    return load_yaml(path, resolve_func=True)


def task_configs(spec: TaskSpec, code: str, data_file: str | None = None) -> list[dict[str, Any]]:
    """lm-eval task config dicts of one language (one per subject), as lm-eval defines them; with
    ``data_file`` the dataset is that local file (prompt, filters and metrics unchanged)."""
    out = []
    for subject in spec.subjects or ("",):
        cfg = copy.deepcopy(_load_yaml(os.path.join(lm_eval_task_dir(), spec.yaml.format(code=code, subject=subject))))
        for key in ("tag", "group"):
            cfg.pop(key, None)
        if data_file is not None:
            cfg.update(dataset_path="parquet" if data_file.endswith(".parquet") else "json", dataset_name=None,
                       dataset_kwargs={"data_files": {"test": local_data_file(data_file)}}, test_split="test",
                       training_split=None, validation_split=None, fewshot_split=None)
        out.append(cfg)
    return out


def local_data_file(path: str) -> str:
    """The absolute local path of a task data file for ``datasets`` (which reads local files): a
    ``gs://`` file is staged once into a local cache keyed by its sha256 (``storage.local_dir``)."""
    if not storage.is_remote(path):
        return os.path.abspath(path)
    name = os.path.basename(path)
    key = f"eval-data-{hashing.file_digest(path)[1]}-{name}"  # the name too: two languages may share content
    return os.path.join(storage.local_dir(os.path.dirname(path), [name], key), name)


def language_table(spec: TaskSpec, languages: Mapping[str, str]) -> str:
    """``deu_Latn=de, ...``: how the requested languages map to the task's codes (for the log)."""
    return ", ".join(f"{f}={c}" for f, c in languages.items())

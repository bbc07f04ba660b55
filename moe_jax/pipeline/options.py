"""The pipeline's options: every section of the config, its fields, defaults and checks, in one file.

A config (an ``ml_collections.ConfigDict``: ``configs/*.py`` plus ``--config.<section>.<field>=``
overrides) becomes one frozen ``Options`` here, once per run (``from_config``; the registry builds
it before its preflight and hands it to every stage). Below this file nothing sees a ConfigDict:
stages read typed sections (``options.collect.batch_size``), libraries get explicit arguments.

Each section is a frozen dataclass whose defaults are the config's defaults (``default_config``
builds the ConfigDict of a section, or of the whole pipeline, from them). ``from_config``:

1. refuses unknown fields (a typo such as ``collect.batchsize``) of every section at once, naming
   the closest known field; the keys of ``FREE_FORM_FIELDS`` are user data and stay free;
2. takes each section over its defaults (ConfigDict's type checks: a field keeps its default's type);
3. checks values: the model source and dtype, the corpora and languages of ``config.data`` and each
   task corpus of ``config.tasks`` are refused at once (every stage reads them); the options of one
   stage (eval, analysis, steer) are recorded as ``Options.problems[section]``, refused when that
   stage runs (its preflight lists them, ``Options.checked`` raises the first), so that a bad
   ``steer.rule`` never stops a run without the steer stage, as before;
4. resolves the defaults one section takes from another: the steer sweep's eval options
   (``Options.sweep``: ``config.eval`` with ``steer.tasks``, ``languages`` and ``limit`` when set).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

from moe_jax.convert.loader import resolve_dtype
from moe_jax.data import defaults as data_defaults
from moe_jax.data.corpora import SOURCES as DATA_SOURCES, parse_languages
from moe_jax.errors import StageError
from moe_jax.pipeline import fields as config_fields
from moe_jax.routing import statistic_table as stat_table
from moe_jax.steering import sweep as sweep_lib, targets as tg
from moe_jax.steering.spec import VECTOR_DTYPES

SOURCES = ("tiny_random", "hf_dir", "hub")  # config.model.source
# Config fields whose keys are user data (task names, languages, HF config keys, mesh axes, logical
# axes, file overrides), not fields of moe_jax: their keys are not checked. Fields whose default is a
# plain value (None placeholders, FieldReference({}) mappings) are not descended into either.
FREE_FORM_FIELDS = ("config.tasks", "config.analysis.accuracy", "config.analysis.task_stores",
                    "config.mesh.shape", "config.mesh.rules", "config.model.tiny.overrides",
                    "config.eval.languages", "config.eval.data_dirs")
EVAL_SOURCES = ("hub", "local", "demo")  # config.eval.source
STEER_RULES = ("task", "shared", "exclusive")  # config.steer.rule
# eval options that must be whole numbers >= 1: (field, None allowed)
POSITIVE_INTS = (("limit", True), ("batch_size", False), ("max_length", True), ("max_gen_toks", False))


def _field(default: Any, kind: Any = None, doc: str = "") -> Any:
    """A dataclass field with the ConfigDict type of its default: ``kind`` a type for a None default
    (``placeholder(kind)``: the command line parses ``--config.eval.limit=5`` as an int), ``object``
    for a field of any type (a mapping, or a string on the command line)."""
    meta = {"kind": kind, "doc": doc}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Section:
    """A frozen section of options; also read like the mapping it was built from (``opts["limit"]``,
    ``opts.get("task")``), so that code written for the config's sections reads it unchanged."""

    where: ClassVar[str] = ""  # its path in the config, e.g. "config.collect"

    def __getitem__(self, key: str) -> Any:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in self.keys() else default

    def keys(self) -> tuple[str, ...]:
        """The field names, sorted as ConfigDict sorts them (summaries written from ``to_dict`` keep their bytes)."""
        return tuple(sorted(f.name for f in dataclasses.fields(self)))  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_dict(self) -> dict[str, Any]:
        """The section as plain JSON-like values, what ``ConfigDict.to_dict`` gave (fields sorted):
        fingerprints and summaries recorded from it keep their bytes."""
        return {k: _plain(v) for k, v in self.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _section(where: str):
    def wrap(cls):
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.where = where
        return cls
    return wrap


# -- the sections -------------------------------------------------------------------------------------

@_section("config.model.tiny")
class TinyOptions(Section):
    """``config.model.tiny``: a random model of ``moe_jax.convert.tiny`` plus a tiny tokenizer."""

    model_type: str = _field("qwen2_moe")
    seed: int = _field(0)
    router_scale: float = _field(10.0)
    vocab_size: int = _field(512)
    overrides: dict = _field({})  # HF config keys


@_section("config.model")
class ModelOptions(Section):
    name: str = _field("", doc="display name in the store and report (default: hub_id, hf_dir or "
                               "'tiny-random-<type>')")
    source: str = _field("tiny_random", doc="tiny_random | hf_dir | hub")
    hub_id: str = _field("", doc="source 'hub': repository id, e.g. 'allenai/OLMoE-1B-7B-0125-Instruct'")
    revision: str = _field("", doc="source 'hub': branch, tag or commit ('' = main)")
    cache_dir: str = _field("", doc="source 'hub': download cache ('' = the Hugging Face default)")
    hf_dir: str = _field("", doc="source 'hf_dir': local HF checkpoint directory")
    dtype: str = _field("auto", doc="parameter dtype after conversion: auto (the checkpoint's own) | float32 | "
                                    "bfloat16 | float16")
    warning: str = _field("", doc="shown by launch and stored in the routing store's meta ('' = automatic)")
    tiny: TinyOptions = _field(TinyOptions())


@_section("config.data")
class DataOptions(Section):
    """``config.data`` (and each task corpus of ``config.tasks``): the corpus and its tokenisation;
    every field is documented in ``moe_jax.data.defaults.default_config``."""

    source: str = _field("builtin")
    task: str | None = _field(None, str)
    languages: Any = _field(None, object)  # "a,b" (also from the command line), tuple or list
    split: str | None = _field(None, str)
    path: str | None = _field(None, str)
    data_files: Any = _field(None, object)
    cache_dir: str | None = _field(None, str)
    max_sentences: int | None = _field(None, int)
    hf_token: str | None = _field(None, str)
    chat_template: bool = _field(True)
    exclude_template_tokens: bool = _field(True)
    enable_thinking: bool = _field(False)
    max_length: int = _field(256)
    padding_side: str = _field("right")
    count: str = _field("both")


@_section("config.collect")
class CollectOptions(Section):
    """``config.collect`` (tokenisation: template, max_length, padding_side, is ``config.data``'s)."""

    batch_size: int = _field(8, doc="sequences per step (global); must divide by the mesh's data axis and the "
                                    "processes")
    pad_to_multiple: int = _field(64, doc="sequence length is rounded up to this: one compile per length bucket")
    sort_by_length: bool = _field(True, doc="batch similar lengths together; results stay in corpus order")
    token_topk: bool = _field(False, doc="also store per-token top-k experts of counted tokens ([T, L, k] int16)")
    hidden_states: bool = _field(False, doc="main corpus: also store each sentence's mean hidden state per layer "
                                            "(randomly projected, float16) and the logit lens's mass on the "
                                            "pivot's and the language's own tokens (docs/methods.md)")
    hidden_dim: int = _field(256, doc="hidden_states: dimensions of the seeded random projection")
    logit_lens: bool = _field(True, doc="hidden_states: also the logit lens's masses (one unembedding per layer: "
                                        "several times the forward's cost when the vocabulary is large)")
    lens_token_share: float = _field(0.5, doc="hidden_states: a token belongs to a language when at least this "
                                              "share of its corpus occurrences are in it")
    backend: str = _field("auto", doc="expert dispatch backend of the forward (auto | grouped | dense | ...)")
    overwrite: bool = _field(False, doc="replace a store written for another model / data / options")
    progress: bool = _field(True, doc="tqdm bars over languages and batches")


@_section("config.mesh")
class MeshOptions(Section):
    """``config.mesh``: ``shape`` (axis -> size, -1 = the rest) and ``rules`` (overrides of
    ``moe_jax.sharding.DEFAULT_RULES``: logical axis -> mesh axis or None)."""

    shape: dict = _field({"data": -1, "model": 1})
    rules: dict = _field({})


@_section("config.distributed")
class DistributedOptions(Section):
    """``config.distributed`` (``moe_jax.distributed.initialize_distributed``): ``enabled`` True, False or
    "auto"; ``shared_workdir``: a local workdir every host mounts (``moe_jax.pipeline.hosts``)."""

    enabled: Any = _field("auto", object)
    coordinator_address: str = _field("")
    num_processes: int = _field(-1)
    process_id: int = _field(-1)
    cpu_collectives: str = _field("gloo")
    shared_workdir: bool = _field(False)


@_section("config.plan")
class PlanOptions(Section):
    """``config.plan``: memory planning (``moe_jax.plan``), checked by the convert stage."""

    check: bool = _field(True, doc="the convert stage refuses a model that does not fit (before any download)")
    accelerator: str = _field("auto", doc="auto (the devices jax sees) | v4-8 | v5e-8 | v5p-8 | v6e-8 | "
                                          "H100-80GB | CPU")
    headroom: float = _field(0.9, doc="fraction of device memory the plan may use")
    config_json: str = _field("", doc="a local config.json to plan from ('' = the model source's)")


@_section("config.eval")
class EvalOptions(Section):
    tasks: Any = _field("mgsm,gmmlu_medical,belebele", doc="names of moe_jax.eval.tasks.TASKS (comma string "
                                                           "or sequence)")
    languages: Any = _field({}, object, doc="FLORES or the task's codes: 'de,fr' / a sequence for every task, "
                                            "or {task: languages}; {} or '' = every language the task has")
    limit: int | None = _field(None, int, doc="items per lm-eval task (subject): the first ones; None = all")
    fixed_items: bool = _field(True, doc="tasks with a fixed item list (Global-MMLU medical: 60 per subject) "
                                         "use it")
    batch_size: int = _field(8)
    max_length: int | None = _field(None, int, doc="model context for scoring (None: the model's maximum)")
    max_gen_toks: int = _field(256, doc="generation tasks (MGSM): new tokens at most")
    apply_chat_template: bool = _field(False, doc="lm-eval's apply_chat_template (the studies: off)")
    enable_thinking: bool | None = _field(None, bool, doc="forwarded to the chat template when set")
    source: str = _field("hub", doc="hub (per-task data_dirs override), local (data_dirs for every task), demo")
    data_dirs: Any = _field({}, object, doc="{task: dir of <code>.jsonl|.json|.parquet}")
    steering: str = _field("", doc="JSON file of a router intervention applied while evaluating ('' = none)")
    overwrite: bool = _field(False, doc="replace records of another model / options")
    progress: bool = _field(True, doc="a bar over the (task, language) pairs")


@_section("config.analysis.bootstrap")
class BootstrapOptions(Section):
    n: int = _field(1000)
    seed: int = _field(0)
    ci: float = _field(0.95)


@_section("config.analysis.experts")
class ExpertsOptions(Section):
    task_tau: float = _field(0.3, doc="task expert when Delta > task_tau (docs/methods.md)")
    language_tau: float = _field(0.3, doc="language expert when Delta (language - pivot) > language_tau")
    shared_top_k: int = _field(16, doc="per (language, layer) top-k kept for shared/exclusive (clipped to E)")
    shared_thr: float = _field(0.5, doc="exclusive when the language's share of the pool's mass > shared_thr")


@_section("config.analysis")
class AnalysisOptions(Section):
    """``config.analysis``: every field documented in ``docs/pipeline.md``."""

    pivot: str = _field("eng_Latn", doc="divergences and language experts are measured from this language")
    # "mean_probs" (mean of the full softmax) or "topk_weight" (softmax kept on the top-k, renormalised)
    routing_statistic: str = _field("mean_probs")
    # divergence metrics (moe_jax.analysis.metrics.DIVERGENCES); the first one is primary (band, correlation)
    metrics: tuple = _field(("entropy_normalized_js", "js_divergence"))
    # None: detected from the primary divergence curve; (start, end): 0-indexed MoE-layer positions, inclusive
    middle_band: tuple | None = _field(None, tuple)
    band_threshold: float = _field(0.5, doc="band = longest run of layers with divergence <= min + thr * "
                                            "(max - min)")
    split_half_seed: int = _field(0)
    split_half_repeats: int = _field(10)
    consistency_pairs: int = _field(2000, doc="token pairs sampled per language")
    consistency_seed: int = _field(0)
    consistency_scope: str = _field("sequence", doc="sequence: pairs within a sequence; language: any two tokens")
    bootstrap: BootstrapOptions = _field(BootstrapOptions())
    similarity_metric: str = _field("cosine", doc="cosine of utilisation vectors or js (1 - entropy-normalised JS)")
    similarity_bands: str = _field("", doc="'' = automatic bands; or 'name:start-end,...'")
    cluster_method: str = _field("average", doc="scipy.cluster.hierarchy.linkage method")
    # the statistic and pooling of the expert rules (moe_jax.routing.statistic_table); "" = each rule's default
    statistic: str = _field("", doc="topk_freq | gate_weight | topk_weight | mean_probs")
    pooling: str = _field("", doc="token | sequence")
    experts: ExpertsOptions = _field(ExpertsOptions())
    # {language: accuracy} or a path to a CSV/JSON file (moe_jax.analysis.accuracy); {} = none
    accuracy: Any = _field({}, object)
    # {task name: routing store path} or "math=/path,med=/path"; {} = the collect stage's task stores
    task_stores: Any = _field({}, object)


@_section("config.steer.learned")
class LearnedOptions(Section):
    enabled: bool = _field(False)
    steps: int = _field(30)
    learning_rate: float = _field(0.05)
    l2: float = _field(1e-3)
    heldout_fraction: float = _field(0.25)
    max_sentences: int = _field(32)
    seed: int = _field(0)
    backend: str = _field("auto", doc="expert dispatch of the fit's passes (dense compiles fastest for tiny models)")


@_section("config.steer")
class SteerOptions(Section):
    """``config.steer`` (tasks, languages and items default to ``config.eval``'s: ``Options.sweep``)."""

    tasks: Any = _field("", doc="eval tasks of the sweep, e.g. 'mgsm'; '' = config.eval.tasks")
    languages: Any = _field("", doc="e.g. 'eng_Latn,fra_Latn'; '' = config.eval.languages")
    limit: int | None = _field(None, int, doc="items per lm-eval task; None = config.eval.limit")
    # task: task store vs generic store; shared: experts shared with a dominant language;
    # exclusive: experts exclusive to steer.exclusive_languages (the published masking: methods="mask")
    rule: str = _field("task")
    task: str = _field("", doc="rule 'task': name of the task store (config.tasks); '' = the first one")
    # rules shared / exclusive: the language pool, "eng_Latn,zho_Hans" (shared: dominant first); "" = every one
    shared_languages: str = _field("")
    shared_top_k: int = _field(20)
    shared_thr: float = _field(0.7)
    exclusive_languages: str = _field("", doc="rule 'exclusive': target languages; '' = the sweep's non-pivot "
                                              "languages")
    exclusive_top_k: int = _field(15)
    exclusive_thr: float = _field(0.4)
    exclusive_combine: str = _field("sum", doc="several targets: 'sum' of their shares > thr or 'any' one share")
    statistic: str = _field("", doc="topk_freq | gate_weight | topk_weight | mean_probs ('' = the rule's default)")
    pooling: str = _field("", doc="token | sequence")
    vector_dtype: str = _field("float32", doc="proportional: 'bfloat16' rounds vector, product and edit as "
                                              "published")
    methods: str = _field("soft,hard", doc="soft | hard | mask | proportional | bias")
    lambdas: tuple = _field((0.5,), doc="soft / proportional / bias strengths; hard forces on, mask needs none")
    taus: tuple = _field((0.3,))
    bands: str = _field("auto", doc="'auto': the analysis' middle band; or '8-35,4-19' (inclusive decoder layers)")
    controls: str = _field("random,early,late,language", doc="controls, each with the first method and lambda")
    seed: int = _field(0, doc="random control")
    learned: LearnedOptions = _field(LearnedOptions())
    probe_sentences: int = _field(8, doc="per steered language: sentences of config.data for the top-k change")
    n_boot: int = _field(2000, doc="paired bootstrap resamples")
    overwrite: bool = _field(False)


@_section("config.report")
class ReportOptions(Section):
    title: str = _field("MoE multilingual routing report")
    dpi: int = _field(110, doc="PNG resolution")


# the config's sections in order, each with its options class; "tasks" and "stages" are not sections
SECTIONS: dict[str, type[Section]] = {
    "model": ModelOptions, "data": DataOptions, "collect": CollectOptions, "mesh": MeshOptions,
    "distributed": DistributedOptions, "plan": PlanOptions, "eval": EvalOptions, "analysis": AnalysisOptions,
    "steer": SteerOptions, "report": ReportOptions}
STAGE_ORDER = "convert,collect,eval,analyze,steer,report"  # config.stages' default (the registry's order)


# -- defaults as a ConfigDict (what configs/*.py start from) ----------------------------------------------

def section_config(cls: type[Section]) -> ml_collections.ConfigDict:
    """The ConfigDict of a section's defaults, each field typed like its default (``_field``)."""
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        kind = f.metadata.get("kind")
        if isinstance(default, Section):
            c[f.name] = section_config(type(default))
        elif kind is object:
            c[f.name] = config_dict.FieldReference(default, field_type=object)
        elif default is None:
            c[f.name] = config_dict.placeholder(kind)
        else:
            c[f.name] = default
    return c


def default_config() -> ml_collections.ConfigDict:
    """A complete pipeline config with every section at its default (what configs/*.py start from)."""
    c = ml_collections.ConfigDict()
    for name, cls in SECTIONS.items():
        c[name] = section_config(cls)
        if name == "data":
            # {task name: data fields of a task corpus}, e.g. {"math": {"source": "builtin_task", "task":
            # "math"}}: collected like config.data (same model, template options) into workdir/tasks/<name>,
            # used by the analyze stage's task experts (docs/methods.md#task-and-language-experts;
            # moe_jax.data.defaults.task_data_config). {} = none.
            c.tasks = ml_collections.ConfigDict()
    c.stages = STAGE_ORDER
    return c


# -- from a config to Options -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Options:
    """Every section's options of one run, built once (``from_config``)."""

    model: ModelOptions
    data: DataOptions
    tasks: Mapping[str, DataOptions] | None  # {task name: its corpus}; None: the config has no tasks section
    collect: CollectOptions
    mesh: MeshOptions
    distributed: DistributedOptions
    plan: PlanOptions
    eval: EvalOptions
    analysis: AnalysisOptions
    steer: SteerOptions
    report: ReportOptions
    stages: str | Sequence[str]  # config.stages ("convert,collect" or a list), checked by the registry
    sweep: EvalOptions  # the steer sweep's evaluation: config.eval with steer.tasks / languages / limit
    problems: Mapping[str, tuple[str, ...]]  # {section: value problems}, refused when a stage reading it runs
    sections: frozenset[str]  # the whole config's sections (empty: one stage's section given alone, of_section)

    def __contains__(self, name: object) -> bool:
        return name in self.sections

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self.sections else default

    def checked(self, *sections: str) -> "Options":
        """Itself, or StageError with the first problem of ``sections`` (what the stage's own
        check raised before Options existed)."""
        for name in sections:
            if self.problems.get(name):
                raise StageError(self.problems[name][0])
        return self

    def section_problems(self, *sections: str) -> list[str]:
        return [p for name in sections for p in self.problems.get(name, ())]


def of(config: Any) -> Options:
    """``config`` as Options: itself when it is already (the registry builds it once per run), else
    ``from_config(config)`` (a stage called directly, by a test or a notebook)."""
    return config if isinstance(config, Options) else from_config(config)


def of_section(config: Any, name: str) -> Options:
    """``of(config)``, where ``config`` may also be one stage's section given alone (``analyze.run(
    config.analysis, workdir)``: the other sections at their defaults, ``Options.sections`` empty) or None."""
    if isinstance(config, Options):
        return config
    if config is None:
        return _without_sections(from_config({}))
    if name in config:
        return from_config(config)
    return _without_sections(from_config({name: config}))


def _without_sections(opts: Options) -> Options:
    return dataclasses.replace(opts, sections=frozenset())


def from_config(config: Any) -> Options:
    """The Options of a pipeline config (or a partial one: missing sections take their defaults).
    Raises StageError for unknown fields, a field of another type than its default, a bad model
    source or dtype, an unknown corpus source or language code; records each stage's other problems."""
    config = config if config is not None else {}
    try:
        config_fields.check_known_fields(config, default_config(), "config", FREE_FORM_FIELDS)
    except config_fields.UnknownFieldError as e:
        raise StageError(str(e)) from None
    sections = {name: _build(cls, config.get(name)) for name, cls in SECTIONS.items()}
    model, data = sections["model"], sections["data"]
    _check_model(model)
    tasks_section = config.get("tasks") if "tasks" in config else None
    tasks = None if tasks_section is None else {
        name: _build(DataOptions, data_defaults.task_data_config(data.to_dict(), name, task))
        for name, task in _plain_mapping(tasks_section).items()}
    for where, d in [("data", data)] + [(f"tasks.{n}", d) for n, d in (tasks or {}).items()]:
        if d.source not in DATA_SOURCES:
            raise StageError(f"{where}.source {d.source!r} is not one of {DATA_SOURCES}")
        parse_languages(d.languages)  # raises on unknown codes, with close matches
    sweep, sweep_problems = _sweep(sections["eval"], sections["steer"])
    problems = {"collect": collect_problems(sections["collect"], data, sections["analysis"].pivot),
                "eval": eval_problems(sections["eval"]), "analysis": analysis_problems(sections["analysis"]),
                "steer": steer_problems(sections["steer"]) + sweep_problems}
    return Options(tasks=tasks, stages=config["stages"] if "stages" in config else STAGE_ORDER,
                   sweep=sweep, problems={k: tuple(v) for k, v in problems.items() if v},
                   sections=frozenset(k for k in config.keys()), **sections)  # type: ignore[arg-type]


def section_options(cls: type[Section], values: Any) -> Section:
    """One section's options from its values alone (a stage given ``config.analysis`` itself):
    unknown fields refused like ``from_config``'s."""
    defaults = section_config(cls)
    where = cls.where
    try:
        config_fields.check_known_fields(_plain_mapping(values or {}), defaults, where, FREE_FORM_FIELDS)
    except config_fields.UnknownFieldError as e:
        raise StageError(str(e)) from None
    return _build(cls, values)


def _plain_mapping(values: Any) -> dict:
    return values.to_dict() if hasattr(values, "to_dict") else dict(values)


def _build(cls: type[Section], values: Any) -> Any:
    """``values`` over the section's defaults (ConfigDict's type checks), as the frozen section."""
    merged = section_config(cls)
    if values:
        try:
            merged.update(_plain_mapping(values))
        except (TypeError, ValueError) as e:
            raise StageError(f"{cls.where}: {e}") from None
    return _from_config_dict(cls, merged)


def _from_config_dict(cls: type[Section], c: Any) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = c[f.name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if isinstance(default, Section):
            value = _from_config_dict(type(default), value)
        elif hasattr(value, "to_dict"):
            value = value.to_dict()
        kwargs[f.name] = value
    return cls(**kwargs)


# -- value checks (same messages as the stages gave) ------------------------------------------------------

def _check_model(m: ModelOptions) -> None:
    if m.source not in SOURCES:
        raise StageError(f"model.source {m.source!r} is not one of {SOURCES}")
    if m.source == "hub" and not m.hub_id:
        raise StageError("model.source is 'hub' but model.hub_id is empty")
    if m.source == "hf_dir" and not m.hf_dir:
        raise StageError("model.source is 'hf_dir' but model.hf_dir is empty")
    resolve_dtype(m.dtype)


def eval_problems(e: EvalOptions, where: str = "eval") -> list[str]:
    problems = []
    if e.source not in EVAL_SOURCES:
        problems.append(f"eval.source {e.source!r} is not one of {EVAL_SOURCES}")
    for key, optional in POSITIVE_INTS:
        value = e[key]
        if not (value is None and optional) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append(f"{where}.{key} is {value!r}; give a whole number >= 1"
                            + (" (or None for " + ("every item)" if key == "limit" else "the model's maximum)")
                               if optional else ""))
    return problems


def collect_problems(c: CollectOptions, data: DataOptions, pivot: str) -> list[str]:
    """Problems of ``config.collect`` (with the corpus it reads and the analysis pivot it measures from)."""
    if not c.hidden_states:
        return []
    problems = []
    if isinstance(c.hidden_dim, bool) or not isinstance(c.hidden_dim, int) or c.hidden_dim < 1:
        problems.append(f"collect.hidden_dim must be a positive int, got {c.hidden_dim!r}")
    if not 0 < c.lens_token_share <= 1:
        problems.append(f"collect.lens_token_share must be in (0, 1], got {c.lens_token_share!r}")
    languages = parse_languages(data.languages)
    if languages and pivot not in languages:
        problems.append(f"collect.hidden_states measures the logit lens's mass on the pivot's tokens, but the pivot "
                        f"{pivot} (analysis.pivot) is not among data.languages {list(languages)}")
    return problems


def analysis_problems(a: AnalysisOptions) -> list[str]:
    problems = [] if a.metrics else ["analysis.metrics is empty"]
    if a.routing_statistic not in stat_table.DISTRIBUTIONS:
        problems.append(f"analysis.routing_statistic {a.routing_statistic!r} is not one of "
                        f"{sorted(stat_table.DISTRIBUTIONS)}")
    for rule in ("task", "shared"):  # an unknown statistic or pooling (each rule has its own default)
        try:
            stat_table.resolve(rule, a.statistic, a.pooling, "analysis")
        except ValueError as e:
            problems.append(str(e))
            break
    return problems


def names(value: Any) -> list[str]:
    """A comma string or a sequence of names -> the names."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or ()]


def steer_problems(s: SteerOptions) -> list[str]:
    if s.rule not in STEER_RULES:
        return [f"steer.rule {s.rule!r} is not one of {list(STEER_RULES)}"]
    problems = []
    try:
        stat_table.resolve(s.rule, s.statistic, s.pooling, "steer")
    except ValueError as e:
        problems.append(str(e))
    if s.exclusive_combine not in tg.EXCLUSIVE_COMBINE:
        problems.append(f"steer.exclusive_combine {s.exclusive_combine!r} is not one of "
                        f"{list(tg.EXCLUSIVE_COMBINE)}")
    if s.vector_dtype not in VECTOR_DTYPES:
        problems.append(f"steer.vector_dtype {s.vector_dtype!r} is not one of {list(VECTOR_DTYPES)}")
    try:  # here, not first when the settings are built: preflight refuses before anything is written
        sweep_lib.check_grid(names(s.methods), tuple(s.taus), names(s.controls))
    except (ValueError, TypeError) as e:
        problems.append(str(e))
    return problems


def _sweep(e: EvalOptions, s: SteerOptions) -> tuple[EvalOptions, list[str]]:
    """The steer sweep's eval options: ``config.eval`` with ``steer.tasks``, ``languages`` and
    ``limit`` where they are set, and their problems (those of ``config.eval`` included)."""
    problems = list(eval_problems(e))
    limit = s.limit
    if limit not in ("", None) and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        problems.append(f"steer.limit is {limit!r}; give a whole number >= 1 (or None for eval.limit)")
    sweep = dataclasses.replace(e, **{k: s[k] for k in ("tasks", "languages", "limit") if s[k] not in ("", None)})
    if sweep.steering:
        problems.append("eval.steering is set: the steer stage builds its own interventions; clear it")
    return sweep, problems

"""The pipeline's options (moe_jax.pipeline.options): built once from the config, frozen, every field
known and typed, each stage's value checks in one place, the defaults one section takes from another."""

import dataclasses
import json
import os

import ml_collections
import pytest

from moe_jax.analysis.synthetic import write_demo
from moe_jax.data import defaults as data_defaults
from moe_jax.errors import PreflightError, StageError
from moe_jax.pipeline import analyze, collect, eval as eval_stage, options, registry, report, steer
from tests.helpers.configs import load_config
from tests.helpers.paths import REPO_ROOT


def demo():
    return load_config(os.path.join(REPO_ROOT, "configs", "demo.py"))


def build(**sections):
    """Options of a config of ``sections`` ({section: {field: value}}) over the defaults."""
    return options.from_config(ml_collections.ConfigDict(sections))


# -- unknown fields and types ---------------------------------------------------------------------------

@pytest.mark.parametrize("where, typo, meant", [
    ("model", "hub", "hub_id"), ("model.tiny", "seeed", "seed"), ("data", "max_lenght", "max_length"),
    ("collect", "batchsize", "batch_size"), ("mesh", "shapes", "shape"), ("distributed", "enable", "enabled"),
    ("plan", "headrom", "headroom"), ("eval", "limt", "limit"), ("analysis", "pivott", "pivot"),
    ("analysis.experts", "task_taus", "task_tau"), ("steer", "lamdas", "lambdas"),
    ("steer.learned", "step", "steps"), ("report", "titel", "title")])
def test_an_unknown_field_of_each_section_is_refused_naming_it(where, typo, meant):
    config = registry.default_config()
    node = config
    for name in where.split("."):
        node = node[name]
    node[typo] = 1
    with pytest.raises(StageError, match=rf"config\.{where}\.{typo} is not a known field \(did you mean "
                                         rf"config\.{where}\.{meant}\?\)"):
        options.from_config(config)


def test_unknown_fields_of_several_sections_are_all_named():
    config = demo()
    config.collect.batchsize = 4
    config.steer.zzzz = 1
    with pytest.raises(StageError) as e:
        options.from_config(config)
    assert [line.split(" is not")[0] for line in str(e.value).splitlines()] == ["config.collect.batchsize",
                                                                               "config.steer.zzzz"]


def test_free_form_fields_take_any_keys():
    opts = build(analysis={"accuracy": {"xyz_Latn": 0.5}, "task_stores": {"any": "/x"}},
                 model={"tiny": {"overrides": {"any_hf_key": 1}}}, mesh={"rules": {"expert": None}},
                 eval={"data_dirs": {"mgsm": "/d"}}, tasks={"my_task": {"source": "builtin_task", "task": "math"}})
    assert opts.analysis.accuracy == {"xyz_Latn": 0.5} and opts.model.tiny.overrides == {"any_hf_key": 1}
    assert opts.tasks["my_task"].task == "math" and opts.tasks["my_task"].max_length == opts.data.max_length


def test_a_field_of_another_type_is_refused():
    with pytest.raises(StageError, match=r"config\.collect: Could not override field 'batch_size'.*eight"):
        options.from_config({"collect": {"batch_size": "eight"}})
    with pytest.raises(StageError, match=r"config\.steer: Could not override field 'steps'"):
        options.from_config({"steer": {"learned": {"steps": "many"}}})


# -- value checks: each with the message the stages gave ----------------------------------------------------

@pytest.mark.parametrize("section, values, message", [
    ("model", {"source": "s3"}, "model.source 's3' is not one of"),
    ("model", {"source": "hub"}, "model.source is 'hub' but model.hub_id is empty"),
    ("model", {"source": "hf_dir"}, "model.source is 'hf_dir' but model.hf_dir is empty"),
    ("model", {"dtype": "float8"}, "float8"),
    ("data", {"source": "web"}, "data.source 'web' is not one of"),
    ("data", {"languages": "eng_Latn,xxx_Zzzz"}, "xxx_Zzzz"),
    ("tasks", {"t": {"source": "web"}}, "tasks.t.source 'web' is not one of"),
])
def test_model_and_data_problems_are_refused_at_once(section, values, message):
    with pytest.raises(ValueError, match=message):
        options.from_config({section: values})


@pytest.mark.parametrize("section, values, message", [
    ("eval", {"source": "tape"}, "eval.source 'tape' is not one of"),
    ("eval", {"limit": 0}, r"eval.limit is 0; give a whole number >= 1 \(or None for every item\)"),
    ("eval", {"batch_size": 0}, r"eval.batch_size is 0; give a whole number >= 1$"),
    ("eval", {"max_length": -1}, r"eval.max_length is -1; give a whole number >= 1 \(or None for the model's maximum\)"),
    ("analysis", {"metrics": ()}, "analysis.metrics is empty"),
    ("analysis", {"routing_statistic": "counts"}, "analysis.routing_statistic 'counts' is not one of"),
    ("analysis", {"statistic": "counts"}, "analysis.statistic 'counts' is not one of"),
    ("steer", {"rule": "language"}, r"steer.rule 'language' is not one of \['task', 'shared', 'exclusive'\]"),
    ("steer", {"pooling": "layer"}, "steer.pooling 'layer' is not one of"),
    ("steer", {"exclusive_combine": "all"}, r"steer.exclusive_combine 'all' is not one of \['sum', 'any'\]"),
    ("steer", {"vector_dtype": "float16"}, r"steer.vector_dtype 'float16' is not one of \['float32', 'bfloat16'\]"),
    ("steer", {"methods": "soft,turbo"}, r"unknown steering method\(s\) \['turbo'\] \(steer.methods\)"),
    ("steer", {"taus": (1.5,)}, r"steer.taus has \[1.5\]: each tau must be in \[0, 1\)"),
    ("steer", {"limit": 0}, r"steer.limit is 0; give a whole number >= 1 \(or None for eval.limit\)"),
])
def test_stage_option_problems_are_refused_when_their_stage_runs(section, values, message):
    opts = options.from_config({section: values})  # built: a run without that stage is not refused
    stage = "steer" if section == "steer" else section
    assert any(__import__("re").search(message, p) for p in opts.section_problems(stage)), opts.problems
    with pytest.raises(StageError, match=message):
        opts.checked(stage)
    module = {"eval": eval_stage, "analysis": analyze, "steer": steer}[section]
    with pytest.raises(StageError, match=message):
        module.options(ml_collections.ConfigDict({section: values}))


def test_the_sweep_refuses_eval_problems_and_a_steering_file():
    opts = build(eval={"steering": "/some/file.json"})
    assert opts.section_problems("eval") == [] and opts.section_problems("steer") == [
        "eval.steering is set: the steer stage builds its own interventions; clear it"]
    assert build(eval={"source": "tape"}).section_problems("steer")[0].startswith("eval.source 'tape'")


def test_a_bad_option_of_a_stage_not_run_does_not_stop_the_others(tmp_path, monkeypatch):
    """As before Options: steer.rule is checked by the steer stage, not by a run of other stages."""
    monkeypatch.setitem(registry.STAGES, "record", f"{__name__}:record_stage")
    config = demo()
    config.steer.rule = "language"
    RECORDED.clear()
    registry.run_stages(config, str(tmp_path), "record")
    assert RECORDED and RECORDED[0].steer.rule == "language"
    with pytest.raises(PreflightError, match=r"\[steer\] steer.rule 'language' is not one of"):
        registry.run_stages(config, str(tmp_path / "w"), "steer")
    assert not (tmp_path / "w").exists()


RECORDED = []


def record_stage(opts, workdir):
    RECORDED.append(opts)


# -- cross-section defaults ---------------------------------------------------------------------------------

def test_the_sweep_takes_eval_options_where_steer_leaves_them_unset():
    opts = build(eval={"tasks": "belebele", "languages": {"belebele": "fr"}, "limit": 7, "batch_size": 2})
    assert (opts.sweep.tasks, opts.sweep.languages, opts.sweep.limit) == ("belebele", {"belebele": "fr"}, 7)
    assert opts.sweep.batch_size == 2 and opts.steer.tasks == "" and opts.steer.limit is None
    opts = build(eval={"tasks": "belebele", "limit": 7}, steer={"tasks": "mgsm", "languages": "en,fr", "limit": 3})
    assert (opts.sweep.tasks, opts.sweep.languages, opts.sweep.limit) == ("mgsm", "en,fr", 3)
    assert (opts.eval.tasks, opts.eval.limit) == ("belebele", 7)  # the eval stage's own options are untouched
    assert steer.sweep_options(demo()) == options.from_config(demo()).sweep


def test_task_corpora_take_the_tokenisation_of_config_data():
    opts = build(data={"max_length": 99, "chat_template": False},
                 tasks={"math": {"source": "builtin_task", "task": "math", "count": "response"}})
    math = opts.tasks["math"]
    assert (math.max_length, math.chat_template, math.count, math.source) == (99, False, "response", "builtin_task")
    assert build().tasks is None and options.from_config(registry.default_config()).tasks == {}


# -- frozen, read like the sections, built once -----------------------------------------------------------

def test_options_are_frozen():
    opts = options.from_config(demo())
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.collect.batch_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.steer = None
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.steer.learned.enabled = False


def test_sections_read_like_the_config_sections():
    opts = options.from_config(demo())
    c = demo()
    assert opts.eval["limit"] == c.eval.limit and opts.model.get("name") == c.model.get("name")
    assert dict(opts.steer.learned) == c.steer.learned.to_dict()
    assert opts.analysis.to_dict() == analyze.options(c).to_dict()
    assert opts.get("tasks") is opts.tasks and "steer" in opts
    alone = options.of_section(c.analysis, "analysis")  # a stage given its section alone
    assert alone.analysis == opts.analysis and "analysis" not in alone and alone.get("model") is None


def test_the_analysis_settings_keep_their_fingerprint():
    """``to_dict`` gives what ConfigDict.to_dict gave: recorded analyses stay current."""
    from moe_jax.artifacts.fingerprint import fingerprint
    a = options.from_config({}).analysis
    assert json.dumps(a.to_dict()) == json.dumps(analyze.default_config().to_dict())
    assert fingerprint({"analysis": a.to_dict(), "languages": None}) == "fb885be247ef0a29"  # main before Options


@pytest.mark.slow
def test_options_are_built_once_per_run(tmp_path, monkeypatch):
    calls = []
    real = options.from_config
    monkeypatch.setattr(options, "from_config", lambda config: calls.append(1) or real(config))
    work = str(tmp_path / "w")
    write_demo(work)
    config = registry.default_config()
    registry.run_stages(config, work, "analyze,report")
    assert len(calls) == 1 and os.path.isfile(os.path.join(work, "report", "index.html"))
    calls.clear()
    config = demo()
    with pytest.raises(PreflightError):  # the demo's task store is missing: preflight names it
        registry.run_stages(config, str(tmp_path / "w2"), "analyze,steer,report")
    assert len(calls) == 1


# -- defaults in one place ------------------------------------------------------------------------------------

def _typed(c):
    """{path: (value, field type)} of a ConfigDict: its defaults and what the command line parses."""
    out = {}
    for k in c.keys():
        v = c[k]
        if isinstance(v, ml_collections.ConfigDict):
            out.update({f"{k}.{p}": t for p, t in _typed(v).items()})
        else:
            out[k] = (v, getattr(c._fields[k], "_field_type", type(v)))
    return out


@pytest.mark.parametrize("cls, library_default", [
    (options.DataOptions, data_defaults.default_config), (options.CollectOptions, collect.default_config), (options.EvalOptions, eval_stage.default_config),
    (options.AnalysisOptions, analyze.default_config), (options.SteerOptions, steer.default_config),
    (options.ReportOptions, report.default_config)])
def test_each_section_default_is_the_options_default(cls, library_default):
    assert _typed(library_default()) == _typed(options.section_config(cls))
    assert cls() == options.from_config({}).__getattribute__(
        {v: k for k, v in options.SECTIONS.items()}[cls])


def test_the_pipeline_default_config_is_built_from_the_options():
    c = registry.default_config()
    assert list(c.keys()) == sorted(list(options.SECTIONS) + ["tasks", "stages"])
    assert c.stages == ",".join(registry.STAGES) == options.STAGE_ORDER
    assert options.from_config(c).problems == {}

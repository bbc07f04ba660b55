"""Bad input gets an error that names the culprit (file, line, field, value) and the fix, before
anything is written: the stage list, task files, eval and steering options, the workdir itself."""

import json
import os
import re
import subprocess
import sys

import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.eval import tasks
from moe_jax.pipeline import report as report_stage
from moe_jax.pipeline import collect as collect_stage
from moe_jax.errors import PreflightError, StageError
from tests.helpers.launch_in_process import launch_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORDER = "convert,collect,eval,analyze,steer,report"


# ------------------------------------------------------------------------------------------ --stages

@pytest.mark.parametrize("spec, why", [
    ("report,report", r"\['report'\] given more than once"),
    ("report,analyze", r"out of order.*here: --stages=analyze,report"),
    ("", "no stages given"),
    ([], "no stages given"),
    ("collect,,report", "an empty stage name"),
    ("collect,repot", r"unknown stage\(s\) \['repot'\]"),
])
def test_bad_stage_lists_are_refused_with_the_valid_order(spec, why):
    with pytest.raises(StageError, match=f"(?s){why}.*stages run in this order: {ORDER}"):
        stages.parse_stages(spec)


def test_stage_lists_in_order_pass():
    assert stages.parse_stages("convert, eval,report") == ["convert", "eval", "report"]
    assert stages.parse_stages(["analyze", "steer"]) == ["analyze", "steer"]


def test_empty_stages_flag_is_refused_not_all_six(tmp_path):
    """``--stages=`` used to fall back to config.stages and run every stage."""
    out = launch_main(f"--config={ROOT}/configs/demo.py", f"--workdir={tmp_path / 'w'}", "--stages=")
    assert out.returncode != 0
    assert "no stages given" in out.stderr and ORDER in out.stderr
    assert not (tmp_path / "w").exists()


# ------------------------------------------------------------------------------------------ task files

def _belebele_row(**over):
    row = {"flores_passage": "p", "question": "q", "mc_answer1": "a", "mc_answer2": "b", "mc_answer3": "c",
           "mc_answer4": "d", "correct_answer_num": "2"}
    return {**row, **over}


def test_garbled_jsonl_names_the_file_and_its_line(tmp_path):
    path = tmp_path / "eng_Latn.jsonl"
    path.write_text(json.dumps(_belebele_row()) + "\n\n" + '{"question": "q", "mc_answer1": ' + "\n")
    with pytest.raises(tasks.TaskError, match=rf"{path}, line 3: not valid JSON \(Expecting value at column \d+\); "
                                              "fix it: each line of a .jsonl file is one JSON object"):
        tasks.check_local_file(tasks.get_task("belebele"), str(path))
    path.write_text(json.dumps(_belebele_row()) + "\n[1, 2]\n")
    with pytest.raises(tasks.TaskError, match=rf"{path}, line 2: a JSON list, not an object"):
        tasks.check_local_file(tasks.get_task("belebele"), str(path))


def test_garbled_json_file_names_the_file(tmp_path):
    path = tmp_path / "de.json"
    path.write_text('[{"question": "q",\n "answer": }]')
    with pytest.raises(tasks.TaskError, match=rf"{path}: not valid JSON \(Expecting value at line 2 column 12\)"):
        tasks.check_local_file(tasks.get_task("mgsm"), str(path))


@pytest.mark.parametrize("task, row, message", [
    ("belebele", _belebele_row(correct_answer_num="5"),
     r"line 2: correct_answer_num is '5'; task 'belebele' needs one of '1', '2', '3', '4'"),
    ("belebele", _belebele_row(correct_answer_num=2), r"line 2: correct_answer_num is 2; task 'belebele' needs one of"),
    ("gmmlu_medical", {"subject": "virology", "question": "q", "option_a": "a", "option_b": "b", "option_c": "c",
                       "option_d": "d", "answer": "E"}, r"line 2: answer is 'E'; task 'gmmlu_medical' needs one of 'A'"),
    ("mgsm", {"question": "q", "answer": None, "answer_number": "seven"},
     r"line 2: answer_number is 'seven'; task 'mgsm' needs a number"),
])
def test_task_values_out_of_range_are_named_with_the_allowed_ones(tmp_path, task, row, message):
    """Used to pass the check and fail inside lm-eval's jinja templates (``list.index``), naming nothing."""
    good = {"belebele": _belebele_row(), "mgsm": {"question": "q", "answer": None, "answer_number": 7},
            "gmmlu_medical": {**row, "answer": "A"}}[task]
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(tasks.TaskError, match=f"{path}, {message}"):
        tasks.check_local_file(tasks.get_task(task), str(path))


def test_demo_files_as_local_data_lack_the_fixed_items():
    """The demo's Global-MMLU file (one item per subject) given as eval.source='local': lm-eval's
    ``AssertionError: Elements of --samples should be in the interval [0,k-1]`` before; now the file,
    the subject, the count and the two ways out."""
    spec = tasks.get_task("gmmlu_medical")
    path = tasks.local_file(spec, "en", os.path.join(tasks.DEMO_DIR, "gmmlu_medical"))
    with pytest.raises(tasks.TaskError, match=rf"{path}: task 'gmmlu_medical' evaluates fixed items .* subject "
                                              r"'clinical_knowledge', but the file has 1 row\(s\) of it.*full Global-MMLU "
                                              r"test split, or set eval.fixed_items=False.*eval.source='demo'"):
        tasks.check_fixed_items(spec, "en", path, None)
    tasks.check_fixed_items(tasks.get_task("belebele"), "eng_Latn", "unused.jsonl", None)  # no fixed items: no check


def test_a_file_with_every_fixed_item_passes(tmp_path):
    spec = tasks.get_task("gmmlu_medical")
    need = {s: max(v) + 1 for s, v in tasks.fixed_items(spec.items_file).items()}
    path = tmp_path / "en.jsonl"
    path.write_text("".join(json.dumps({"subject": s, "question": "q", "option_a": "a", "option_b": "b",
                                        "option_c": "c", "option_d": "d", "answer": "A"}) + "\n"
                            for s, n in need.items() for _ in range(n)))
    tasks.check_fixed_items(spec, "en", str(path), None)
    short = tmp_path / "short.jsonl"
    short.write_text("".join(line + "\n" for line in path.read_text().splitlines()[1:]))  # one row fewer
    first = next(iter(need))
    with pytest.raises(tasks.TaskError, match=f"subject '{first}', but the file has {need[first] - 1} row"):
        tasks.check_fixed_items(spec, "en", str(short), None)
    tasks.check_fixed_items(spec, "en", str(short), 1)  # eval.limit=1: only the first fixed item of each subject


# ------------------------------------------------------------------------------------------ the workdir

def test_workdir_that_is_a_file_is_one_clear_error(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("mine\n")
    for workdir, what in ((f, "is a file"), (f / "run", f"lies under {f}, which is a file")):
        with pytest.raises(PreflightError, match=f"--workdir={workdir} {what}, not a directory; nothing was written"):
            stages.run_stages(stages.default_config(), str(workdir), "report")
    assert f.read_text() == "mine\n"


def test_file_too_large_names_the_file_and_the_limit(tmp_path):
    """``OSError: [Errno 27] File too large`` named no file; a write past ``ulimit -f`` now names both."""
    target = tmp_path / "eval" / "records.jsonl"
    code = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
            f"from moe_jax.io import storage; storage.atomic_write_bytes({str(target)!r}, b'x' * 100000)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert f"File too large (writing {target}; a file size limit: `ulimit -f`" in last, last
    assert not target.exists() and os.listdir(target.parent) == []  # no temp file left


# ------------------------------------------------------------------------------------------ notebooks

def run_config_cell(notebook, **params):
    """The notebook's parameters cell, ``params`` as papermill injects them, then its configuration cell
    (the one that builds ``config``): the namespace after them."""
    import nbformat
    nb = nbformat.read(os.path.join(ROOT, "notebooks", notebook), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    (params_cell,) = [c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    (config_cell,) = [c for c in code if 'config_module("common")' in c]
    ns = {"os": os, "CHECKOUT": ROOT}
    exec(params_cell, ns)
    ns.update(params)
    exec(config_cell, ns)
    return ns


@pytest.mark.parametrize("notebook", ["01_routing_quickstart.ipynb", "02_steering.ipynb"])
def test_notebook_without_english_stops_in_its_configuration_cell(notebook):
    """Used to run every stage and fail later with ``KeyError: 'middle_band'``."""
    with pytest.raises(ValueError, match=r"languages = \['fra_Latn', 'zho_Hans'\] lacks eng_Latn \(English\).*"
                                         r"Add it first, e.g. languages = \['eng_Latn', 'fra_Latn', 'zho_Hans'\]"):
        run_config_cell(notebook, smoke=True, languages=["fra_Latn", "zho_Hans"])


def test_notebook_smoke_mode_says_what_it_changes(capsys):
    ns = run_config_cell("02_steering.ipynb", smoke=True, tau=0.3, limit=50)
    out = capsys.readouterr().out
    assert "smoke mode: tau = 0.1 instead of the 0.3 given" in out
    assert "smoke mode: limit = None instead of the 50 given" in out
    assert ns["tau"] == 0.1 and ns["config"].eval.limit is None
    ns = run_config_cell("02_steering.ipynb", smoke=True, tau=0.05, limit=None)  # nothing changed: nothing said
    assert "smoke mode" not in capsys.readouterr().out and ns["tau"] == 0.05
    ns = run_config_cell("02_steering.ipynb", smoke=False, tau=0.3, limit=50)  # the real run keeps them
    assert "smoke mode" not in capsys.readouterr().out and ns["config"].eval.limit == 50 and ns["tau"] == 0.3


# ------------------------------------------------------------------------------------------ steering options

def test_unknown_steering_method_is_named_with_the_known_ones():
    """``steer.methods=turbo`` used to end in a bare ``KeyError: 'turbo'`` while building the settings."""
    from moe_jax.steering import sweep
    with pytest.raises(ValueError, match=r"unknown steering method\(s\) \['turbo'\] \(steer.methods\); known: soft, "
                                         "hard, mask, proportional, bias"):
        sweep.Grid(methods=("soft", "turbo"), bands=((0, 1),))


@pytest.mark.parametrize("tau", [-0.1, 1.0])
def test_tau_outside_0_1_is_refused_naming_steer_taus(tau):
    """A negative tau selected nearly every expert, and the error came later from the random control."""
    import numpy as np

    from moe_jax.steering import targets as tg
    rng = np.random.default_rng(0)
    task, generic = rng.random((2, 3, 8)) / 8  # [moe_layers, experts] shares
    with pytest.raises(ValueError, match=rf"tau is {tau}: the task targets .* tau must be in \[0, 1\).*steer.taus"):
        tg.task_targets(task, generic, (0, 1, 2), None, tau=tau)
    with pytest.raises(ValueError, match=rf"tau is {tau}: the language targets"):
        tg.language_targets(task, generic, (0, 1, 2), None, tau=tau)


# ------------------------------------------------------------------------------------------ stage outputs

@pytest.mark.parametrize("sub, stage", [("analysis", "analyze"), ("eval", "eval"), ("report", "report")])
def test_damaged_output_names_the_stage_and_its_command(tmp_path, sub, stage):
    """"run that stage again" named neither the stage nor the command."""
    from moe_jax.artifacts import lineage
    from moe_jax.io import integrity
    out_dir = tmp_path / sub
    out_dir.mkdir()
    data = b'{"a": 1}'
    (out_dir / "summary.json").write_bytes(data)
    lineage.write_stamp(str(out_dir), {}, files={"summary.json": integrity.entry_of(data)})
    assert lineage.read_output(str(out_dir), "summary.json") == data
    fix = (f"run the {stage} stage again: python -m moe_jax.launch --config=<your config> --workdir={tmp_path} "
           f"--stages={stage}")
    (out_dir / "summary.json").write_bytes(b'{"a": 2}')
    with pytest.raises(integrity.DigestMismatchError, match="were written; " + re.escape(fix)):
        lineage.read_output(str(out_dir), "summary.json")
    (out_dir / "summary.json").unlink()
    with pytest.raises(integrity.DigestMismatchError, match="but missing; run the " + stage):
        lineage.read_output(str(out_dir), "summary.json")
    (out_dir / "provenance.json").unlink()
    with pytest.raises(integrity.UnpublishedError, match=r"did not finish\); run the " + stage):
        lineage.read_output(str(out_dir), "summary.json")


# ------------------------------------------------------------------------------------------ another model

def demo_config():
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def workdir_of_seed0(tmp_path, checkpoint_seed=0):
    """A workdir whose routing store, task store and checkpoint stamp record the demo model with seed 0
    (only the manifests the model check reads)."""
    config = demo_config()
    tiny = config.model.tiny.to_dict()
    meta = {"model_source": {"tiny": tiny}, "dtype": config.model.dtype}
    w = tmp_path / "w"
    for sub in ("routing", "tasks/math"):
        (w / sub).mkdir(parents=True)
        (w / sub / "meta.json").write_text(json.dumps(meta))
    (w / ".convert_source.json").write_text(
        json.dumps({"source": {"tiny": {**tiny, "seed": checkpoint_seed}}, "dtype": config.model.dtype}))
    config.model.tiny.seed = 1
    return config, w


def tree(root):
    return sorted((p, os.path.getsize(os.path.join(p, f))) for p, _, fs in os.walk(root) for f in fs)


def test_analyze_refuses_stores_of_another_model(tmp_path):
    """``--stages=analyze`` with another model.tiny.seed ran over the seed-0 stores without a word."""
    config, w = workdir_of_seed0(tmp_path)
    before = tree(w)
    with pytest.raises(PreflightError) as e:
        stages.run_stages(config, str(w), "analyze")
    msg = str(e.value)
    for store in ("routing", "tasks/math"):
        assert f"[analyze] {w / store} holds outputs of another model (model_source.tiny.seed: 0 (recorded) != 1 (now))" \
            in msg, msg
    assert (f"run: python -m moe_jax.launch --config=<your config> --workdir={w} --stages=convert,collect,analyze "
            "--config.collect.overwrite=True") in msg, msg
    assert tree(w) == before
    from moe_jax.pipeline import analyze as analysis_stage
    after_collect = analysis_stage.preflight(config, str(w), frozenset({"convert", "collect"}))
    assert not [p for p in after_collect if "another model" in p]  # collect rewrites them first


def test_report_suggests_a_command_that_is_not_refused_itself(tmp_path):
    """The report suggested ``--stages=collect``, which collect's own preflight refuses (a checkpoint and
    a store of another model, without overwrite)."""
    config, w = workdir_of_seed0(tmp_path)
    problems = report_stage.model_problems(config, str(w))
    assert problems[-1].endswith(f"--workdir={w} --stages=convert,collect,analyze,report "
                                 "--config.collect.overwrite=True"), problems
    config.collect.overwrite = True  # what the suggested command sets
    assert not [p for p in collect_stage.preflight(config, str(w), frozenset({"convert"})) if "another model" in p]
    config, w = workdir_of_seed0(tmp_path / "converted", checkpoint_seed=1)  # convert already rerun: not suggested
    assert report_stage.model_problems(config, str(w))[-1].endswith(
        "--stages=collect,analyze,report --config.collect.overwrite=True")


# ------------------------------------------------------------------------------------------ eval options

def test_demo_files_as_local_data_are_refused_in_the_eval_plan():
    """The demo's Global-MMLU files given as eval.source='local' passed preflight and failed in lm-eval
    (``Elements of --samples should be in the interval [0,k-1] ... k=1``)."""
    from moe_jax.pipeline import eval as eval_stage, evaluation
    config = demo_config()
    config.eval.source = "local"
    config.eval.tasks = "gmmlu_medical"
    config.eval.languages = "en"
    config.eval.data_dirs = {"gmmlu_medical": os.path.join(tasks.DEMO_DIR, "gmmlu_medical")}
    path = os.path.join(tasks.DEMO_DIR, "gmmlu_medical", "en.jsonl")
    assert os.path.isfile(path)
    with pytest.raises(tasks.TaskError, match=rf"{re.escape(path)}: task 'gmmlu_medical' evaluates fixed items .*"
                                              r"subject 'clinical_knowledge'.*set eval.fixed_items=False"):
        evaluation.plan(eval_stage.options(config))
    config.eval.fixed_items = False  # the way out: the file's own rows
    assert [t["data_file"] for t in evaluation.plan(eval_stage.options(config))] == [path]
    config.eval.fixed_items, config.eval.source = True, "demo"  # the demo source evaluates them as they are
    assert len(evaluation.plan(eval_stage.options(config))) == 1


def test_demo_with_one_task_says_how_to_set_its_languages():
    """``eval.tasks=mgsm`` on the demo was refused (its eval.languages names three tasks) with no way out."""
    from moe_jax.pipeline import eval as eval_stage, evaluation
    config = demo_config()
    config.eval.tasks = "mgsm"
    with pytest.raises(StageError, match=r"eval.languages names task\(s\) \['gmmlu_medical', 'belebele'\] that are "
                                         r"not in eval.tasks \['mgsm'\]; give the languages of the tasks being run, "
                                         r"e.g. --config.eval.languages=en,zh .*--config.eval.tasks=mgsm,gmmlu_medical,"
                                         "belebele"):
        evaluation.plan(eval_stage.options(config))
    config.eval.languages = "en,zh"  # the suggested flag
    assert [(t["task"], t["code"]) for t in evaluation.plan(eval_stage.options(config))] == [("mgsm", "en"),
                                                                                             ("mgsm", "zh")]


@pytest.mark.parametrize("option, value, message", [
    ("methods", "soft,turbo", r"unknown steering method\(s\) \['turbo'\] \(steer.methods\); known: soft, hard"),
    ("controls", "random,sideways", r"unknown steering control\(s\) \['sideways'\] \(steer.controls\)"),
    ("taus", (0.3, -0.1), r"steer.taus has \[-0.1\]: each tau must be in \[0, 1\), e.g. --config.steer.taus="),
    ("taus", (1.0,), r"steer.taus has \[1.0\]: each tau must be in \[0, 1\)"),
])
def test_steering_grid_options_are_refused_in_preflight(tmp_path, option, value, message):
    """steer.methods=turbo and a tau outside [0, 1) were named only once the settings were built,
    after the launch had started writing; now the preflight refuses them and the workdir is not created."""
    config = demo_config()
    config.steer[option] = value
    with pytest.raises(PreflightError, match=rf"\[steer\] {message}"):
        stages.run_stages(config, str(tmp_path / "w"), "steer")
    assert not (tmp_path / "w").exists()

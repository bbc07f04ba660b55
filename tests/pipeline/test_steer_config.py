"""The steer section of the released-model configs and of the demo: valid, and the study's settings."""

import importlib.util
import os

import pytest

from moe_jax.errors import StageError
from moe_jax.pipeline import steer as stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("name, bands, tau, methods", [
    ("qwen3_30b_a3b", ((7, 34),), 0.4, "soft,hard"), ("phi35_moe_instruct", ((7, 16),), 0.3, "soft,hard"),
    ("gpt_oss_20b", ((3, 18),), 0.3, "hard,soft"), ("olmoe_1b7b_instruct", None, 0.3, "soft,hard"),
    ("qwen15_moe_a27b_chat", None, 0.3, "soft,hard")])
def test_released_configs_steer_mgsm_with_the_study_settings(name, bands, tau, methods, tmp_path):
    c = load(name)
    opts = stage.options(c)
    assert opts.tasks == "mgsm" and opts.task == "math" and opts.taus == (tau,) and opts.methods == methods
    assert opts.languages.split(",") == ["en", "bn", "de", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]
    assert opts.controls == "random,early,late,language" and "math" in c.tasks
    if bands is None:  # the detected middle band: needs the analysis first
        with pytest.raises(StageError, match="has no middle band; run the 'analyze' stage first"):
            stage.parse_bands(opts.bands, str(tmp_path))
    else:
        assert stage.parse_bands(opts.bands, str(tmp_path)) == bands


def test_demo_sweep_and_bad_options():
    opts = stage.options(load("demo"))
    assert (opts.methods, opts.controls, opts.learned.enabled, opts.tasks) == ("soft,hard,mask", "random", True,
                                                                               "belebele")
    c = load("demo")
    c.steer.rule = "language"
    with pytest.raises(StageError, match=r"steer.rule 'language' is not one of \['task', 'shared', 'exclusive'\]"):
        stage.options(c)
    c = load("demo")
    c.steer.statistic = "counts"
    with pytest.raises(StageError, match=r"steer.statistic 'counts' is not one of"):
        stage.options(c)
    c = load("demo")
    c.steer.lamdas = (1.0,)
    with pytest.raises(StageError, match=r"config.steer.lamdas is not a known field \(did you mean config.steer.lambdas\?\)"):
        stage.options(c)

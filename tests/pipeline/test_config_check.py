"""Unknown config fields (typos in config files) are refused before any stage runs, with a close match."""

import os

import ml_collections
import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.pipeline import collect as collect_stage
from tests.helpers.configs import CONFIGS, load_config
from tests.helpers.launch_in_process import launch_main
from tests.helpers.paths import REPO_ROOT as ROOT

def demo():
    return load_config(os.path.join(ROOT, "configs", "demo.py"))


@pytest.mark.parametrize("section, typo, meant", [
    ("config", "stagse", "stages"),
    ("config.model", "dtyp", "dtype"),
    ("config.model.tiny", "sead", "seed"),
    ("config.data", "max_sentence", "max_sentences"),
    ("config.collect", "batchsize", "batch_size"),
    ("config.mesh", "shapes", "shape"),
    ("config.distributed", "enable", "enabled"),
    ("config.analysis", "pivott", "pivot"),
    ("config.analysis.bootstrap", "seeds", "seed"),
    ("config.analysis.experts", "task_taus", "task_tau"),
    ("config.report", "titel", "title"),
])
def test_typo_in_each_section_is_refused_with_the_close_match(section, typo, meant):
    config = demo()
    node = config
    for name in section.split(".")[1:]:
        node = node[name]
    node[typo] = 4  # what a config file's `c.collect.batchsize = 4` does: ConfigDict adds the key
    with pytest.raises(stages.StageError) as e:
        stages.check_config(config)
    msg = str(e.value)
    assert msg.startswith(f"{section}.{typo} is not a known field (did you mean {section}.{meant}?)"), msg
    assert f"known fields of {section}: " in msg and meant in msg.split("known fields of")[1]


def test_every_typo_is_listed_and_far_names_get_no_guess():
    config = demo()
    config.collect.batchsize = 4
    config.report.zzzz = 1
    with pytest.raises(stages.StageError) as e:
        stages.check_config(config)
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("config.collect.batchsize is not a known field (did you mean")
    assert lines[1].startswith("config.report.zzzz is not a known field; known fields of config.report: dpi, title")


def test_free_form_mappings_take_any_keys():
    config = demo()
    config.tasks.my_task = {"source": "builtin_task", "task": "math"}  # task names are user data
    config.analysis.accuracy = {"eng_Latn": 0.5, "xyz_Latn": 0.1}
    config.analysis.task_stores = {"anything": "/some/store"}
    config.mesh.shape = {"data": -1, "model": 1}
    config.mesh.rules = {"expert": None}
    config.model.tiny.overrides = {"num_hidden_layers": 2, "any_hf_key": 1}
    config.data.languages = ["eng_Latn", "fra_Latn"]
    stages.check_config(config)
    # but a task's own fields are checked (moe_jax.data.defaults.task_data_config)
    config.tasks.my_task = {"source": "builtin_task", "task": "math", "max_lenght": 9}
    with pytest.raises(ValueError, match="config.tasks.my_task: field\\(s\\) \\['max_lenght'\\]"):
        stages.check_config(config)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_every_shipped_config_passes(path):
    stages.check_config(load_config(path))


def test_collect_stage_refuses_unknown_collect_fields():
    config = ml_collections.ConfigDict({"collect": {"batch_size": 4, "pad_to_multipl": 8}})
    with pytest.raises(stages.StageError, match="config.collect.pad_to_multipl is not a known field "
                                                "\\(did you mean config.collect.pad_to_multiple\\?\\)"):
        collect_stage.options(config)
    opts = collect_stage.options(ml_collections.ConfigDict({"collect": {"batch_size": 4}}))
    assert opts.batch_size == 4 and opts.pad_to_multiple == collect_stage.default_config().pad_to_multiple


def test_launch_refuses_a_config_file_typo_before_anything_runs(tmp_path):
    cfg = tmp_path / "typo.py"
    cfg.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('demo', {os.path.join(ROOT, 'configs', 'demo.py')!r})\n"
        "demo = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(demo)\n\n"
        "def get_config():\n"
        "    c = demo.get_config()\n"
        "    c.collect.batchsize = 4\n"
        "    return c\n")
    work = tmp_path / "work"
    proc = launch_main(f"--config={cfg}", f"--workdir={work}")
    assert proc.returncode != 0
    assert ("config.collect.batchsize is not a known field (did you mean config.collect.batch_size?)"
            in proc.stderr + proc.stdout)
    assert not work.exists()  # no stage ran

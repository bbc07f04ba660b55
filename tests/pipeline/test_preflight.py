"""Preflight: every requested stage is checked before the first one writes anything (moe_jax.pipeline.registry)."""

import os
import shutil

import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.artifacts import layout as wd
from moe_jax.convert.checkpoint import TOKENIZER_FILES
from tests.helpers.configs import demo_config, small_config
from tests.helpers.launch_in_process import launch_main
from tests.helpers.paths import REPO_ROOT as ROOT
from tests.helpers.workdirs import snapshot


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """A workdir converted and collected for the tiny demo model (seed 0)."""
    work = str(tmp_path_factory.mktemp("pre") / "work")
    stages.run_stages(small_config(), work, "convert,collect")
    return work


@pytest.mark.slow
def test_convert_then_collect_refused_before_convert_replaces_anything(collected):
    """The probe: another model's convert,collect into a workdir holding a store: refused by collect's
    preflight before convert touched checkpoint/ or hf_tiny/; overwrite lifts the refusal."""
    before = snapshot(collected)
    other = small_config()
    other.model.tiny.seed = 1
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(other, collected, "convert,collect")
    msg = str(e.value)
    assert "[collect]" in msg and f"{wd.routing_dir(collected)} holds routing statistics of another model" in msg
    assert "model_source.tiny.seed: 0 (recorded) != 1 (now)" in msg and "collect.overwrite=True" in msg
    assert snapshot(collected) == before  # checkpoint/, hf_tiny/, routing/: not a byte, not a timestamp
    other.collect.overwrite = True
    stages.preflight(other, collected, ["convert", "collect"])  # overwrite: nothing to refuse


def test_collect_alone_refuses_a_checkpoint_of_another_model(collected):
    other = small_config()
    other.model.tiny.seed = 1
    other.collect.overwrite = True
    with pytest.raises(stages.StageError, match=r"\[collect\] .*checkpoint was converted from .*run the 'convert' "
                                                r"stage again"):
        stages.preflight(other, collected, ["collect"])


def test_mesh_larger_than_the_devices_refused_before_the_workdir_exists(tmp_path):
    work = str(tmp_path / "new")
    c = small_config()
    c.mesh.shape = {"data": -1, "model": 16}
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(c, work, "convert,collect")
    assert "[collect] mesh.shape" in str(e.value) and "devices are not divisible" in str(e.value)
    assert f"{work} was not created" in str(e.value)
    assert not os.path.exists(work)


def test_missing_local_data_file_refused_before_convert_writes(tmp_path):
    work = str(tmp_path / "new")
    c = small_config()
    c.data.source = "jsonl"
    c.data.path = str(tmp_path / "nowhere.jsonl")
    with pytest.raises(stages.StageError, match=r"\[collect\] config.data \(jsonl\): .*nowhere.jsonl"):
        stages.run_stages(c, work, "convert,collect")
    assert not os.path.exists(work)


def test_every_problem_of_every_stage_is_listed_at_once(tmp_path):
    work = str(tmp_path / "new")
    c = small_config()
    c.mesh.shape = {"data": -1, "model": 16}
    c.data.source = "jsonl"
    c.data.path = str(tmp_path / "nowhere.jsonl")
    c.eval.tasks = "belebele,no_such_task"
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(c, work, "convert,collect,eval,analyze,report")
    lines = [l.strip() for l in str(e.value).splitlines()[1:]]
    assert [l.split("]")[0] + "]" for l in lines] == ["[collect]", "[collect]", "[eval]"], lines
    assert "no_such_task" in lines[2]
    assert not os.path.exists(work)


def test_later_stages_may_rely_on_earlier_requested_ones(tmp_path):
    """An empty workdir: the full pipeline passes (each stage's inputs come from an earlier one);
    a stage alone names the missing input and the stage that makes it."""
    work = str(tmp_path / "empty")
    stages.preflight(demo_config(), work, list(stages.STAGES))
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(small_config(), work, "analyze")
    assert f"[analyze] no routing store at {wd.routing_dir(work)}; run the collect stage first" in str(e.value)
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(small_config(), work, "collect,report")
    msg = str(e.value)
    assert f"[collect] no converted checkpoint at {wd.checkpoint_dir(work)}; run the 'convert' stage" in msg
    assert f"[report] no analysis at {wd.analysis_dir(work)}; run the analyze stage first" in msg
    assert not os.path.exists(work)


def test_steer_alone_names_stores_and_band(tmp_path):
    work = str(tmp_path / "empty")
    c = demo_config()  # the demo's steering: task store "math", bands "auto"
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(c, work, "steer")
    msg = str(e.value)
    for path in (wd.routing_dir(work), wd.task_store_dir(work, "math")):
        assert f"[steer] no routing store at {path}; run the collect stage first" in msg
    assert "[steer] steer.bands is 'auto' but" in msg and "run the 'analyze' stage first" in msg
    stages.preflight(c, work, ["convert", "collect", "analyze", "steer"])


def test_local_checkpoint_without_tokenizer_files_refused_before_convert(collected, tmp_path):
    """A local HF dir without tokenizer files: convert's preflight names the files transformers
    looks for; with them, the same source passes."""
    src = str(tmp_path / "hf")
    shutil.copytree(wd.tiny_dir(collected), src)
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src, name)):
            os.remove(os.path.join(src, name))
    c = small_config(source="hf_dir", hf_dir=src)
    work = str(tmp_path / "new")
    with pytest.raises(stages.StageError) as e:
        stages.run_stages(c, work, "convert,collect")
    assert f"[convert] {src} has no tokenizer files" in str(e.value) and "tokenizer.json" in str(e.value)
    assert not os.path.exists(work)
    shutil.copyfile(os.path.join(wd.tiny_dir(collected), "tokenizer.json"), os.path.join(src, "tokenizer.json"))
    stages.preflight(c, work, ["convert", "collect"])


def test_checkpoint_tokenizer_must_fit_the_model_and_match_the_store(collected, tmp_path):
    """collect alone: a checkpoint whose tokenizer was replaced since the store was collected is
    refused (another tokenizer hash), and one with more ids than the model's embedding too."""
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer

    work = str(tmp_path / "work")
    shutil.copytree(collected, work)
    c = small_config()
    stages.preflight(c, work, ["collect"])
    build_tiny_tokenizer(wd.checkpoint_dir(work), vocab_size=400)
    with pytest.raises(stages.StageError, match=rf"\[collect\] {wd.routing_dir(work)} was collected with another "
                                                r"tokenizer .*collect.overwrite=True"):
        stages.preflight(c, work, ["collect"])
    build_tiny_tokenizer(wd.checkpoint_dir(work), vocab_size=2 * c.model.tiny.vocab_size)
    with pytest.raises(stages.StageError, match=r"\[collect\] the tokenizer has 1024 token ids .* has 512 rows"):
        stages.preflight(c, work, ["collect"])


def test_launch_lists_the_problems_without_a_traceback(tmp_path):
    work = str(tmp_path / "new")
    r = launch_main(f"--config={ROOT}/configs/demo.py", f"--workdir={work}", "--stages=analyze,report")
    assert r.returncode == 1, r.stderr
    assert f"[analyze] no routing store at {wd.routing_dir(work)}" in r.stderr
    assert f"[report] no analysis at {wd.analysis_dir(work)}" not in r.stderr  # analyze runs first
    assert "Traceback" not in r.stderr and not os.path.exists(work)


def test_steer_task_store_must_be_collected_by_an_earlier_stage(tmp_path):
    """collect running first writes the stores of config.tasks only: a steer.task outside them is named."""
    work = str(tmp_path / "empty")
    c = small_config()  # config.tasks = {}, steer.task = "math"
    with pytest.raises(stages.StageError) as e:
        stages.preflight(c, work, ["convert", "collect", "analyze", "steer"])
    assert str(e.value).count("\n") == 1
    assert (f"[steer] no routing store at {wd.task_store_dir(work, 'math')}; run the collect stage with task 'math' "
            "in config.tasks first") in str(e.value)

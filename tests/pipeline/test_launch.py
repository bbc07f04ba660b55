"""Stage registry, config files, the convert stage and the collect stage's checks (no hub access)."""

import os

import pytest

from moe_jax import sharding as shd
from moe_jax.pipeline import common as pipeline, registry as stages
from moe_jax.convert import tiny
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import convert as convert_stage, loading
from moe_jax.data.languages import validate_languages
from moe_jax.data.tokenize import TokenizerError
from moe_jax.pipeline import collect as collect_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers.configs import CONFIGS, demo_config, load_config
from tests.helpers.launch_in_process import launch_main
R_LANGS = ["eng_Latn", "bam_Latn", "fra_Latn", "tha_Thai", "pes_Arab", "arb_Arab", "arb_Latn", "ary_Arab",
           "hin_Deva", "zho_Hans", "srp_Cyrl", "lit_Latn", "ory_Orya", "ben_Beng", "asm_Beng"]
HUB_IDS = {"olmoe_1b7b_instruct": "allenai/OLMoE-1B-7B-0125-Instruct",
           "qwen15_moe_a27b_chat": "Qwen/Qwen1.5-MoE-A2.7B-Chat", "qwen3_30b_a3b": "Qwen/Qwen3-30B-A3B",
           "phi35_moe_instruct": "microsoft/Phi-3.5-MoE-instruct", "gpt_oss_20b": "openai/gpt-oss-20b"}


# ------------------------------------------------------------------------------------------ registry

def test_stage_registry():
    assert stages.parse_stages("convert, collect") == ["convert", "collect"]
    with pytest.raises(stages.StageError, match="unknown stage\\(s\\) \\['colect'\\]; known stages: convert, collect, "
                                                "eval, analyze"):
        stages.parse_stages("convert,colect")
    assert stages.get_stage("collect") is collect_stage.run
    from moe_jax.pipeline import analyze as analysis_stage
    from moe_jax.pipeline import convert as convert_stage
    from moe_jax.pipeline import report as report_stage
    assert stages.get_stage("analyze") is analysis_stage.run and stages.get_stage("report") is report_stage.run
    assert stages.get_stage("convert") is convert_stage.run


CALLS = []


def record_stage(config, workdir):
    CALLS.append(workdir)


def test_run_stages_in_order_with_defaults(tmp_path, monkeypatch):
    monkeypatch.setitem(stages.STAGES, "record", f"{__name__}:record_stage")
    CALLS.clear()
    config = demo_config()
    config.stages = "record"
    stages.run_stages(config, str(tmp_path))
    assert CALLS == [str(tmp_path)]
    with pytest.raises(stages.StageError, match="unknown stage"):
        stages.run_stages(config, str(tmp_path), "record,nope")
    config.collect.batchsize = 4
    with pytest.raises(stages.StageError, match="config.collect.batchsize is not a known field"):
        stages.run_stages(config, str(tmp_path))
    assert len(CALLS) == 1  # nothing ran: every name and field is checked first


def test_cli_unknown_stage_lists_known_ones(tmp_path):
    proc = launch_main(f"--config={ROOT}/configs/demo.py", f"--workdir={tmp_path}", "--stages=convert,stear")
    assert proc.returncode != 0
    assert "unknown stage(s) ['stear']; known stages: convert, collect, eval, analyze" in proc.stderr + proc.stdout
    assert not os.listdir(tmp_path)


# ------------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_files_validate(path):
    config = load_config(path)
    name = os.path.basename(path)[:-3]
    for section in ("model", "data", "collect", "mesh", "distributed", "analysis", "report", "stages"):
        assert section in config, f"{name}: no {section}"
    stages.check_config(config, num_devices=8)
    stages.check_config(config, num_devices=1)
    assert stages.parse_stages(config.stages)[:2] == ["convert", "collect"]
    if name == "demo":
        assert config.model.source == "tiny_random" and config.data.source == "builtin"
        assert pipeline.model_warning(config.model).startswith("RANDOM WEIGHTS")
    else:
        assert config.model.source == "hub" and config.model.hub_id == HUB_IDS[name]
        assert config.model.dtype == "bfloat16" and config.data.source in ("belebele", "flores_plus")
        assert validate_languages(list(config.data.languages)) == R_LANGS
        assert pipeline.model_warning(config.model) is None
    assert set(HUB_IDS) | {"demo"} == {os.path.basename(p)[:-3] for p in CONFIGS}


@pytest.mark.parametrize("change, error, match", [
    (lambda c: setattr(c.model, "source", "s3"), stages.StageError, "model.source 's3'"),
    (lambda c: setattr(c.model, "dtype", "int8"), ValueError, "unsupported dtype 'int8'"),
    (lambda c: setattr(c.data, "languages", "eng_Latn,eng_latn"), ValueError, "eng_latn"),
    (lambda c: setattr(c.mesh, "shape", {"data": -1, "tensor": 2}), shd.MeshError, "unknown axis names \\['tensor'\\]"),
    (lambda c: setattr(c.collect, "batch_size", 6), shd.MeshError, "batch size 6 is not divisible by the mesh's "
                                                                   "data axis \\(8 devices"),
    (lambda c: c.distributed.update(enabled=True, num_processes=3), shd.MeshError,
     "batch size 8 is not divisible by the 3 processes"),
])
def test_bad_config_is_refused(change, error, match):
    config = demo_config()
    change(config)
    with pytest.raises(error, match=match):
        stages.check_config(config, num_devices=8)


# --------------------------------------------------------------------------------- convert / collect

@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A demo workdir after the convert stage (tiny random model + tiny tokenizer)."""
    workdir = str(tmp_path_factory.mktemp("work"))
    convert_stage.run(demo_config(), workdir)
    return workdir


def test_convert_is_skipped_when_up_to_date(converted):
    meta = os.path.join(wd.checkpoint_dir(converted), "moe_jax.json")
    before = os.stat(meta).st_mtime_ns
    convert_stage.run(demo_config(), converted)
    assert os.stat(meta).st_mtime_ns == before


def test_convert_hf_dir_and_reconvert_on_change(tmp_path):
    hf = tiny.write_random_hf_checkpoint(str(tmp_path / "hf"), tiny.tiny_hf_config("olmoe"), seed=1)
    with open(os.path.join(hf, "tokenizer.json"), "w") as f:  # the convert stage refuses a dir without one
        f.write("{}")
    config = demo_config(source="hf_dir", hf_dir=hf)
    work = str(tmp_path / "work")
    out = convert_stage.run(config, work)
    meta = os.path.join(out, "moe_jax.json")
    first = os.stat(meta).st_mtime_ns
    assert loading.converted_identity(config, work)["dtype"] == "float32"
    config.model.dtype = "bfloat16"
    with pytest.raises(stages.StageError, match="run the 'convert' stage again"):
        loading.converted_identity(config, work)  # collect refuses a checkpoint of another dtype
    convert_stage.run(config, work)
    assert os.stat(meta).st_mtime_ns != first and loading.converted_identity(config, work)["dtype"] == "bfloat16"

    # new weights in the same hf_dir: collect (converted_identity) refuses the stale conversion
    second = os.stat(meta).st_mtime_ns
    tiny.write_random_hf_checkpoint(hf, tiny.tiny_hf_config("olmoe"), seed=2)
    with pytest.raises(stages.StageError, match=f"(?s)the weights in {hf} changed since .*run the 'convert' stage again"):
        loading.converted_identity(config, work)
    convert_stage.run(config, work)
    assert os.stat(meta).st_mtime_ns != second and loading.converted_identity(config, work)["dtype"] == "bfloat16"


def test_hub_source_offline_gives_clear_message(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(*a, **k):
        raise LocalEntryNotFoundError("cannot reach the hub and no cached snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    config = demo_config(source="hub", hub_id="Qwen/Qwen3-30B-A3B")
    with pytest.raises(RuntimeError, match="(?s)could not download .Qwen/Qwen3-30B-A3B.*model.source=.hf_dir."):
        convert_stage.run(config, str(tmp_path))


def test_collect_checks_run_before_loading(converted, tmp_path, monkeypatch):
    import shutil
    work = str(tmp_path / "w")
    shutil.copytree(converted, work)
    loads = []
    monkeypatch.setattr("moe_jax.convert.loader.load_params", lambda *a, **k: loads.append(a) or 1 / 0)

    config = demo_config()
    config.mesh.shape = {"data": 3}
    with pytest.raises(shd.MeshError, match="3 devices in all, but 1 devices are available"):
        collect_stage.run(config, work)

    # a tokenizer with more ids than the model's vocabulary
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer
    build_tiny_tokenizer(wd.checkpoint_dir(work), vocab_size=700)
    with pytest.raises(TokenizerError, match="vocabulary \\(config vocab_size\\) has 512 rows"):
        collect_stage.run(demo_config(), work)

    with pytest.raises(FileNotFoundError, match="run the 'convert' stage first"):
        collect_stage.run(demo_config(), str(tmp_path / "empty"))
    assert loads == []

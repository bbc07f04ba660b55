"""Missing essentials fail loudly, naming the culprit and the repair: the pivot's store file, the
tokenizer files, non-finite weights; the conversion keeps the checkpoint's own dtype by default and
a widening load of a narrowing conversion warns; generate() checks its own arguments."""

import json
import logging
import os

import numpy as np
import pytest

from moe_jax.pipeline import options
from moe_jax import plan
from moe_jax.convert import tiny
from moe_jax.artifacts import layout as wd
from moe_jax.pipeline import analyze as analysis_stage
from moe_jax.analysis.synthetic import DEFAULT_LANGUAGES, SyntheticSpec, write_synthetic_store
from moe_jax.convert import loader
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.safetensors_io import CheckpointError, read_header, read_tensor, write_safetensors
from moe_jax.artifacts import routing_store as store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HF = tiny.tiny_hf_config("qwen3_moe")
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer.model", "vocab.json + merges.txt")


def _analysis_config(languages=None):
    import ml_collections
    c = ml_collections.ConfigDict()
    c.analysis = analysis_stage.default_config()
    c.analysis.bootstrap.n = 50
    c.analysis.consistency_pairs = 50
    if languages:
        c.data = ml_collections.ConfigDict({"languages": languages})
    return c


def test_missing_pivot_file_fails_naming_it_and_the_collect_command(tmp_path):
    routing = wd.routing_dir(str(tmp_path))
    write_synthetic_store(routing, SyntheticSpec(n_sequences=6))
    os.remove(store.lang_path(routing, "eng_Latn"))
    with pytest.raises(store.CorruptStoreError, match=f"eng_Latn.npz: language 'eng_Latn' is listed in meta.json but "
                                                      f"its file is missing.*--workdir={tmp_path} --stages=collect"):
        analysis_stage.run(_analysis_config(), str(tmp_path))
    assert not os.path.exists(wd.analysis_dir(str(tmp_path)))


def test_requested_pivot_never_collected_fails(tmp_path):
    routing = wd.routing_dir(str(tmp_path))
    write_synthetic_store(routing, SyntheticSpec(n_sequences=6, languages=DEFAULT_LANGUAGES[1:4]))
    langs = [lang[0] for lang in DEFAULT_LANGUAGES[:4]]
    with pytest.raises(FileNotFoundError, match=r"pivot language 'eng_Latn' is requested \(config.data.languages\) "
                                                r"but the routing store has no .*eng_Latn.npz.*--stages=collect"):
        analysis_stage.run(_analysis_config(",".join(langs)), str(tmp_path))


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """float32 and bfloat16 random checkpoints (config.json names their dtype), without tokenizer files."""
    base = tmp_path_factory.mktemp("hf")
    return {d: tiny.write_random_hf_checkpoint(str(base / d), HF, seed=1, dtype=d) for d in ("float32", "bfloat16")}


def test_conversion_without_tokenizer_is_refused_naming_the_files(hf_dirs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="has no tokenizer files") as e:
        convert_checkpoint(hf_dirs["float32"], out, require_tokenizer=True)
    assert all(name in str(e.value) for name in TOKENIZER_NAMES)
    assert os.listdir(tmp_path) == []  # nothing written: a retry is not blocked


def _demo_config(hf_dir):
    import importlib.util
    spec = importlib.util.spec_from_file_location("demo_cfg", os.path.join(ROOT, "configs", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model.source, config.model.hf_dir = "hf_dir", hf_dir
    config.data.languages, config.data.max_sentences, config.tasks = "eng_Latn,fra_Latn", 4, {}
    config.collect.progress = False
    return config


def test_stages_without_tokenizer_fail_before_writing_and_the_retry_works(hf_dirs, tmp_path):
    """The convert stage refuses a source without tokenizer files and writes nothing; with them added it
    converts; the collect stage refuses a checkpoint without them before any store exists."""
    from moe_jax.pipeline import convert as convert_stage
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer
    from moe_jax.pipeline import collect as collect_stage

    src = tiny.write_random_hf_checkpoint(str(tmp_path / "src"), tiny.tiny_hf_config("qwen3_moe", vocab_size=512))
    config, work = _demo_config(src), str(tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="has no tokenizer files") as e:
        convert_stage.run(config, work)
    assert all(name in str(e.value) for name in TOKENIZER_NAMES)
    assert not os.path.exists(work) or os.listdir(work) == []
    build_tiny_tokenizer(src, vocab_size=512)
    ckpt = convert_stage.run(config, work)
    assert os.path.isfile(os.path.join(ckpt, "tokenizer.json"))

    for name in os.listdir(src):
        if name.startswith("tokenizer") or name in ("special_tokens_map.json", "chat_template.jinja"):
            os.remove(os.path.join(ckpt, name)) if os.path.exists(os.path.join(ckpt, name)) else None
    with pytest.raises(FileNotFoundError, match=f"{ckpt} has no tokenizer files.*the convert stage copies them"):
        collect_stage.run(config, work)
    assert not os.path.exists(wd.routing_dir(work))


def _with_tensor(src, dst, name, value):
    """A copy of the single-file checkpoint ``src`` with tensor ``name``'s first entry set to ``value``."""
    import shutil
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    infos, _ = read_header(path)
    tensors = {}
    for n, info in infos.items():
        x = read_tensor(info)
        if n == name:
            x = x.copy()
            x.reshape(-1)[3] = value
        tensors[n] = x
    write_safetensors(path, tensors)
    return dst


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(hf_dirs, tmp_path, value):
    name = "model.layers.1.mlp.experts.3.down_proj.weight"
    bad = _with_tensor(hf_dirs["float32"], str(tmp_path / "bad"), name, value)
    with pytest.raises(CheckpointError, match=f"tensor '{name}' holds non-finite values \\({value}"):
        convert_checkpoint(bad, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["bad"]
    with pytest.raises(CheckpointError, match=name):
        loader.load_params(bad)


def test_conversion_keeps_the_checkpoints_own_dtype(hf_dirs, tmp_path):
    for dtype, hf_dir in hf_dirs.items():
        out = convert_checkpoint(hf_dir, tmp_path / dtype)  # dtype "auto"
        meta = json.load(open(os.path.join(out, "moe_jax.json")))
        assert meta["dtype"] == meta["source_dtype"] == dtype
        _, params = loader.load_params(out, dtype="auto")
        assert {str(x.dtype) for x in __import__("jax").tree.leaves(params)} == {dtype}
    # config.json without a dtype: the stored one
    import shutil
    bare = shutil.copytree(hf_dirs["bfloat16"], tmp_path / "bare")
    cfg = json.load(open(bare / "config.json"))
    cfg.pop("dtype", None)
    cfg.pop("torch_dtype", None)
    (bare / "config.json").write_text(json.dumps(cfg))
    out = convert_checkpoint(bare, tmp_path / "bare_out")
    assert json.load(open(os.path.join(out, "moe_jax.json")))["dtype"] == "bfloat16"
    # the pipeline's default and the memory plan's reading of it
    assert options.ModelOptions().dtype == options.default_config().model.dtype == "auto"
    config = _demo_config(hf_dirs["bfloat16"])
    config.model.dtype = "auto"
    assert plan.workload(config, "bfloat16").dtype_bytes == 2 and plan.workload(config, "float32").dtype_bytes == 4


def test_widening_load_of_a_narrowing_conversion_warns(hf_dirs, tmp_path, caplog):
    narrowed = convert_checkpoint(hf_dirs["float32"], tmp_path / "narrowed", dtype="bfloat16")
    native = convert_checkpoint(hf_dirs["bfloat16"], tmp_path / "native")
    def warnings():
        return [r.getMessage() for r in caplog.records if r.name == "moe_jax.convert.loader"]

    with caplog.at_level(logging.WARNING, logger="moe_jax.convert.loader"):
        loader.load_params(native, dtype="float32")  # bf16 weights as they were released: nothing lost
        loader.load_params(narrowed, dtype="bfloat16")
        assert warnings() == []
        loader.load_params(narrowed, dtype="float32")
    (message,) = warnings()
    assert ("converted to bfloat16 from float32 weights" in message and "1e-2" in message
            and "convert again with dtype float32" in message)


@pytest.mark.slow
def test_generate_checks_its_arguments():
    from moe_jax.models.config import ModelConfig
    from moe_jax.models.model import MoeModel
    from moe_jax.models.params import init_params
    cfg = ModelConfig.from_hf(HF)
    model = MoeModel(cfg, init_params(cfg, seed=0))
    ids = np.array([5, 6, 7])
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=f"max_new_tokens must be a positive int, got {bad!r}"):
            model.generate(ids, max_new_tokens=bad)
    with pytest.raises(ValueError, match=r"stop_token_ids holds \[128\], outside the vocabulary \[0, 128\)"):
        model.generate(ids, max_new_tokens=2, stop_token_ids=[1, 128])
    assert model.generate(ids, max_new_tokens=2, stop_token_ids=[1]).tokens.shape[0] == 1  # [S]: one prompt

"""The public model API: moe_jax.load on both directory kinds, router outputs, nnx.capture."""

import numpy as np
import pytest
from flax import nnx

import moe_jax
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.tiny import tiny_hf_config, write_random_hf_checkpoint


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("api")
    hf = write_random_hf_checkpoint(d / "hf", tiny_hf_config("qwen3_moe"), seed=3)
    return hf, convert_checkpoint(hf, d / "jax", dtype="float32")


def test_tokenizer_travels_with_the_checkpoint(tmp_path):
    """``model.tokenizer``: the directory's tokenizer, loaded from an HF dir and from the converted
    dir (the converter copies its files); None when the directory has none."""
    from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer

    hf = write_random_hf_checkpoint(tmp_path / "hf", tiny_hf_config("olmoe"), seed=0)
    bare = moe_jax.load(hf)
    assert bare.tokenizer is None
    tok = build_tiny_tokenizer(str(tmp_path / "hf"), texts=["routing in many languages"] * 4, vocab_size=300)
    out = convert_checkpoint(hf, tmp_path / "jax", dtype="float32")
    text = "routing in many languages"
    for model in (moe_jax.load(hf), moe_jax.load(out)):
        assert model.tokenizer.encode(text) == tok.encode(text) and len(tok.encode(text)) > 1
        assert model.tokenizer.chat_template == tok.chat_template is not None
    assert moe_jax.load(out, load_tokenizer=False).tokenizer is None


def test_hf_dir_and_converted_dir_load_the_same_model(dirs):
    a, b = (moe_jax.load(p) for p in dirs)
    ids = np.random.default_rng(0).integers(0, a.cfg.vocab_size, (2, 12))
    oa, ob = a(ids, return_router_logits=True), b(ids, return_router_logits=True)
    np.testing.assert_array_equal(np.asarray(oa.logits), np.asarray(ob.logits))
    np.testing.assert_array_equal(np.asarray(oa.router_logits), np.asarray(ob.router_logits))


def test_router_outputs_only_when_asked(dirs):
    model = moe_jax.load(dirs[1])
    ids = np.zeros((1, 5), np.int32)
    out = model(ids)
    assert out.router_logits is None and out.topk_idx is None and out.topk_weights is None
    out = model(ids, return_router_logits=True)
    cfg = model.cfg
    assert out.router_logits.shape == (cfg.num_moe_layers, 1, 5, cfg.num_experts)
    assert out.topk_idx.shape == out.topk_weights.shape == (cfg.num_moe_layers, 1, 5, cfg.top_k)
    # Qwen3 renormalises its top-k weights.
    np.testing.assert_allclose(np.asarray(out.topk_weights).sum(-1), 1.0, rtol=1e-6)
    assert not nnx.state(model, nnx.Intermediate)  # nothing kept on the module outside capture


def test_nnx_capture_returns_router_intermediates(dirs):
    model = moe_jax.load(dirs[1])
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, (2, 7))
    out, inter = nnx.capture(model, nnx.Intermediate)(ids, return_router_logits=True)
    for name in ("router_logits", "topk_idx", "topk_weights"):
        (captured,) = inter[name].get_value()  # sow appends to a tuple
        np.testing.assert_array_equal(np.asarray(captured), np.asarray(getattr(out, name)))

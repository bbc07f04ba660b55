"""The public model API: moe_jax.load on both directory kinds, router outputs, nnx.capture.

The forwards of the Qwen3-MoE checkpoint run one batch shape (``IDS_SHAPE``): one compile each for
router outputs on and off."""

import numpy as np
import pytest
from flax import nnx

import moe_jax
from moe_jax.convert.checkpoint import convert_checkpoint
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint


IDS_SHAPE = (2, 12)


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


@pytest.mark.slow
def test_hf_dir_and_converted_dir_load_the_same_model(dirs):
    a, b = (moe_jax.load(p) for p in dirs)
    ids = np.random.default_rng(0).integers(0, a.cfg.vocab_size, IDS_SHAPE)
    oa, ob = a(ids, return_router_logits=True), b(ids, return_router_logits=True)
    np.testing.assert_array_equal(np.asarray(oa.logits), np.asarray(ob.logits))
    np.testing.assert_array_equal(np.asarray(oa.router_logits), np.asarray(ob.router_logits))


@pytest.mark.slow
def test_router_outputs_only_when_asked(dirs):
    model = moe_jax.load(dirs[1])
    ids = np.zeros(IDS_SHAPE, np.int32)
    out = model(ids)
    assert out.router_logits is None and out.topk_idx is None and out.topk_weights is None
    out = model(ids, return_router_logits=True)
    cfg = model.cfg
    assert out.router_logits.shape == (cfg.num_moe_layers, *IDS_SHAPE, cfg.num_experts)
    assert out.topk_idx.shape == out.topk_weights.shape == (cfg.num_moe_layers, *IDS_SHAPE, cfg.top_k)
    # Qwen3 renormalises its top-k weights.
    np.testing.assert_allclose(np.asarray(out.topk_weights).sum(-1), 1.0, rtol=1e-6)
    assert not nnx.state(model, nnx.Intermediate)  # nothing kept on the module outside capture


@pytest.mark.slow
def test_nnx_capture_returns_router_intermediates(dirs):
    model = moe_jax.load(dirs[1])
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, IDS_SHAPE)
    out, inter = nnx.capture(model, nnx.Intermediate)(ids, return_router_logits=True)
    for name in ("router_logits", "topk_idx", "topk_weights"):
        (captured,) = inter[name].get_value()  # sow appends to a tuple
        np.testing.assert_array_equal(np.asarray(captured), np.asarray(getattr(out, name)))


# ----------------------------------------------------------------------------------------------
# Bad input at the public entry points: a clear error naming the culprit


@pytest.fixture(scope="module")
def tiny_model():
    from moe_jax.models.config import ModelConfig
    from moe_jax.models.model import MoeModel
    from moe_jax.models.params import init_params
    cfg = ModelConfig.from_hf(tiny_hf_config("qwen3_moe"))  # vocab 128, 2 MoE layers, 8 experts, top-2
    return MoeModel(cfg, init_params(cfg, seed=0))


def call_and_generate(model, *args, **kw):
    return (lambda: model(*args, **kw), lambda: model.generate(*args, max_new_tokens=2, **kw))


@pytest.mark.parametrize("bad_id", [128, 1000, -1])
def test_out_of_vocabulary_ids_are_refused(tiny_model, bad_id):
    ids = np.array([[5, 6, bad_id, 7]])
    for entry in call_and_generate(tiny_model, ids):
        with pytest.raises(ValueError, match=f"token id {bad_id}, outside the vocabulary.*vocab_size=128"):
            entry()
    with pytest.raises(ValueError, match="integer token ids"):
        tiny_model(ids.astype(np.float32))


@pytest.mark.slow
def test_one_dimensional_ids_are_one_sequence(tiny_model):
    # with an intervention and router outputs: the programs test_bad_interventions_... compiles
    ids, mask, kw = np.array([5, 6, 7]), np.array([1, 1, 1]), dict(intervention=tiny_model.no_intervention())
    out = tiny_model(ids, attention_mask=mask, return_router_logits=True, **kw)
    assert out.logits.shape == (1, 3, 128)
    np.testing.assert_array_equal(out.logits, tiny_model(ids[None], attention_mask=mask[None],
                                                         return_router_logits=True, **kw).logits)
    gen = tiny_model.generate(ids, max_new_tokens=2, stop_token_ids=[], **kw)
    assert gen.tokens.shape == (1, 2)
    np.testing.assert_array_equal(gen.tokens, tiny_model.generate(ids[None], max_new_tokens=2, stop_token_ids=[],
                                                                  **kw).tokens)


def test_attention_mask_of_another_shape_is_refused(tiny_model):
    for entry in call_and_generate(tiny_model, np.ones((2, 4), int), np.ones((2, 5), int)):
        with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\), input_ids \(2, 4\)"):
            entry()


@pytest.mark.slow
def test_bad_interventions_are_refused_naming_the_field(tiny_model):
    from moe_jax.models.intervention import FORCE
    ids, none = np.array([[5, 6, 7]]), tiny_model.no_intervention()
    cases = [(none._replace(bias=np.zeros((2, 9), np.float32)), r"intervention\.bias has shape \(2, 9\).*\[2, 8\]"),
             (none._replace(mode=np.zeros((8,), np.int32)), r"intervention\.mode has shape \(8,\)"),
             (none._replace(mode=np.full((2, 8), 3, np.int32)), r"intervention\.mode holds \[3\]; valid modes")]
    over = np.zeros((2, 8), np.int32)
    over[1, :3] = FORCE  # 3 > top-2 at the second MoE layer (decoder layer 1)
    cases.append((none._replace(mode=over), "forces 3 experts at layer 1, more than top-k=2.*allow_over_k=True"))
    for iv, message in cases:
        for entry in call_and_generate(tiny_model, ids, intervention=iv):
            with pytest.raises(ValueError, match=message):
                entry()
    out = tiny_model(ids, np.ones_like(ids), intervention=none._replace(mode=over), allow_over_k=True,
                     return_router_logits=True)
    assert set(np.asarray(out.topk_idx[1]).ravel()) <= {0, 1, 2}  # the forced experts take the top-k
    tiny_model.generate(ids, max_new_tokens=2, intervention=none._replace(mode=over), allow_over_k=True)

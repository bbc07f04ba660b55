"""Hidden-state capture and the logit lens against transformers in float32, for every family.

Each tiny model is built by transformers (eager, norms and biases perturbed), saved and loaded with
``load_params``; a batch with a full, a left-padded and a right-padded row is compared on real tokens:
``hidden_states`` entry by entry against ``output_hidden_states=True``, and the logit lens (final norm +
lm_head on every layer's residual stream) against transformers' own ``model.norm`` and ``lm_head``.
Capture is free when not asked for, equal under scan and unrolled layers, and sown under ``nnx.capture``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from moe_jax.convert.loader import load_params
from moe_jax.convert.tiny import tiny_hf_config
from moe_jax.models.decoder import forward
from moe_jax.models.lens import logit_lens, residual_stream
from moe_jax.models.model import MoeModel
from tests.helpers.hf_reference import build_hf_model, save_hf_model

B, S = 3, 24
TOL = 2e-5  # max error over the max magnitude of each compared array, float32
# one family in the fast lane; the others take the same code path with their own layer and norm kinds
FAMILIES = ["qwen2_moe", *(pytest.param(f, marks=pytest.mark.slow)
                           for f in ("qwen3_moe", "olmoe", "phimoe", "gpt_oss"))]


def batch(vocab):
    ids = np.random.default_rng(0).integers(0, vocab, (B, S))
    mask = np.ones((B, S), np.int64)
    mask[1, :5] = 0  # left padding
    mask[2, -7:] = 0  # right padding
    return ids, mask


def close(got, want, real, what):
    got, want = np.asarray(got)[real], np.asarray(want)[real]
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= TOL, f"{what}: relative error {err:.2e}"


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tmp_path_factory):
    hf_model = build_hf_model(tiny_hf_config(request.param))
    cfg, params = load_params(save_hf_model(hf_model, tmp_path_factory.mktemp(request.param)))
    ids, mask = batch(cfg.vocab_size)
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        ref = hf_model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                       position_ids=torch.as_tensor(positions), output_hidden_states=True, use_cache=False)
    out = forward(params, cfg, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), return_hidden_states=True)
    return dict(hf_model=hf_model, ref=ref, cfg=cfg, params=params, ids=ids, mask=mask, out=out, real=mask.astype(bool))


def test_hidden_states_match_transformers(case):
    out, ref, cfg = case["out"], case["ref"], case["cfg"]
    assert out.hidden_states.shape == (cfg.num_layers + 1, B, S, cfg.hidden_size)
    assert out.hidden_states.dtype == out.last_residual.dtype == jnp.float32
    assert len(ref.hidden_states) == cfg.num_layers + 1
    for layer, want in enumerate(ref.hidden_states):  # 0: embeddings; the last after the final norm
        close(out.hidden_states[layer], want.numpy(), case["real"], f"hidden_states[{layer}]")
    close(out.logits, ref.logits.numpy(), case["real"], "logits")


def test_logit_lens_matches_transformers_head(case):
    """The lens of layer l is transformers' ``lm_head(model.norm(h_l))`` on the pre-norm stream; at the last
    layer it is the model's logits."""
    out, ref, hf_model = case["out"], case["ref"], case["hf_model"]
    stream = residual_stream(out)
    lens = jax.jit(logit_lens, static_argnums=1)(case["params"], case["cfg"], stream)  # [L + 1, B, S, V]
    with torch.no_grad():
        for layer, h in enumerate(ref.hidden_states[:-1]):
            close(lens[layer], hf_model.lm_head(hf_model.model.norm(h)).numpy(), case["real"], f"lens[{layer}]")
    close(lens[-1], ref.logits.numpy(), case["real"], "lens at the last layer")
    # the last residual is the stream before the final norm: normed, it is transformers' last hidden state
    assert not np.allclose(np.asarray(out.last_residual)[case["real"]], ref.hidden_states[-1].numpy()[case["real"]])


def test_capture_is_free_when_not_asked_and_equal_unrolled(case):
    cfg, params = case["cfg"], case["params"]
    ids, mask = jnp.asarray(case["ids"], jnp.int32), jnp.asarray(case["mask"], jnp.int32)
    bare = forward.lower(params, cfg, ids, mask).compile()
    asked = forward.lower(params, cfg, ids, mask, return_hidden_states=True).compile()
    assert [x.shape for x in jax.tree.leaves(bare.out_info)] == [(B, S, cfg.vocab_size)]  # nothing else leaves
    extra = asked.cost_analysis()["flops"] - bare.cost_analysis()["flops"]
    assert 0 <= extra <= 16 * B * S * cfg.hidden_size  # at most the one extra final norm of the last residual
    unrolled = forward(params, cfg, ids, mask, return_hidden_states=True, scan_layers=False)
    np.testing.assert_allclose(unrolled.hidden_states, case["out"].hidden_states, rtol=1e-5, atol=1e-5)


def test_model_api_and_nnx_capture(case):
    model = MoeModel(case["cfg"], case["params"])
    out, inter = nnx.capture(model, nnx.Intermediate)(case["ids"], case["mask"], return_hidden_states=True)
    for name in ("hidden_states", "last_residual"):
        (captured,) = inter[name].get_value()
        np.testing.assert_array_equal(np.asarray(captured), np.asarray(getattr(out, name)))
    assert "router_logits" not in inter  # only what was asked is sown
    assert model(case["ids"], case["mask"]).hidden_states is None
    with pytest.raises(ValueError, match="return_hidden_states=True"):
        residual_stream(model(case["ids"], case["mask"]))

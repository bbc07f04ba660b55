"""PhiMoE at exactly the LongRoPE boundary: a total length equal to ``original_max_position_embeddings``
stays in the short regime, with default positions and in a padded batch whose padded width exceeds
the boundary while no row does. transformers 5.23 always uses the short factors, so here (and only
here) it is the reference; beyond the boundary see ``test_parity.test_phimoe_long_rope_beyond_original_max``.
"""

import numpy as np
import pytest

import moe_jax
from tests.helpers.hf_reference import build_hf_model, reference_forward, save_hf_model
from moe_jax.convert.tiny import tiny_hf_config

TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("phimoe_boundary")
    hf_model = build_hf_model(tiny_hf_config("phimoe"), seed=2)
    save_hf_model(hf_model, str(d))
    model = moe_jax.load(d)
    return hf_model, model, model.cfg.longrope.original_max_position_embeddings


def rel_err(got, want, real):
    return np.abs(np.asarray(got) - want)[real].max() / np.abs(want[real]).max()


def test_length_equal_to_original_max_uses_short_factors(models):
    """No mask, no positions: positions 0..S-1, total length S = original max -> short regime."""
    hf_model, model, orig = models
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, (2, orig))
    ref_logits, _ = reference_forward(hf_model, ids)  # transformers: position_ids = arange(S)
    err = rel_err(model(ids).logits, ref_logits, np.ones(ids.shape, bool))
    assert err <= TOL, f"logits max rel err {err:.2e} at length {orig}"


@pytest.mark.slow
def test_padded_batch_wider_than_original_max_keeps_short_factors(models):
    """Padded width 80 > 64, but every row holds at most 64 real tokens (left, right padded, short):
    the regime follows the positions, not the padded width."""
    hf_model, model, orig = models
    S = orig + 16
    ids = np.random.default_rng(1).integers(0, model.cfg.vocab_size, (3, S))
    mask = np.ones((3, S), np.int64)
    mask[0, :S - orig] = 0  # left padded, exactly orig real tokens
    mask[1, orig:] = 0  # right padded, exactly orig real tokens
    mask[2, 30:] = 0  # short row
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    assert pos.max() + 1 == orig
    ref_logits, _ = reference_forward(hf_model, ids, mask, position_ids=pos)
    err = rel_err(model(ids, attention_mask=mask).logits, ref_logits, mask.astype(bool))
    assert err <= TOL, f"logits max rel err {err:.2e} in a padded batch of width {S}"

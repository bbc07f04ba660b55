"""Per-item parity of the moe_jax lm-eval model with lm-eval's own HF backend on one tiny model.

Both run through ``lm_eval.simple_evaluate(..., log_samples=True)`` on local tasks shaped like
Belebele (log-likelihood multiple choice) and MGSM direct (greedy generation with stop strings and
the flexible-extract filter), with and without the chat template, and with a context window short
enough that requests are truncated from the left.

Generations must be identical strings. A difference is accepted only at a near-tie: where
transformers' own greedy path has two tokens within 1e-4 in logit (float32 rounding may then pick
either); the test checks that on the reference model itself.
"""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
import torch  # noqa: E402
from tests.helpers.eval_fixtures import belebele_like_task, mgsm_like_task, write_tiny_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import moe_jax.eval  # noqa: E402,F401  registers "moe_jax"

# "al" and "ik" are frequent in this random model's output: some rows stop early, others run to
# max_gen_toks, so the cut at the first stop string is exercised.
pytestmark = pytest.mark.slow  # lm-eval end to end, twice (moe_jax and transformers) per test

UNTIL = ["Question:", "</s>", "<|im_end|>", "al", "ik"]
BATCH = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    model_dir = write_tiny_model(str(root / "model"))
    data = root / "data"
    data.mkdir()
    tasks = [belebele_like_task(str(data)), mgsm_like_task(str(data), UNTIL)]
    return model_dir, tasks


def run(setup, model, max_length=None, **kwargs):
    model_dir, tasks = setup
    args = f"pretrained={model_dir},dtype=float32"
    if model == "hf":
        args += ",attn_implementation=eager,device=cpu"
    if max_length:
        args += f",max_length={max_length}"
    return lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, batch_size=BATCH, log_samples=True,
                                   task_manager=TaskManager(include_defaults=False), **kwargs)


def by_doc(result, task):
    return {s["doc_id"]: s for s in result["samples"][task]}


def assert_loglikelihoods_match(ours, ref):
    mine, theirs = by_doc(ours, "tiny_belebele"), by_doc(ref, "tiny_belebele")
    assert sorted(mine) == sorted(theirs) and mine
    for doc_id, s in theirs.items():
        a = np.array([r[0][0] for r in mine[doc_id]["resps"]])
        b = np.array([r[0][0] for r in s["resps"]])
        np.testing.assert_allclose(a, b, rtol=1e-4, err_msg=f"doc {doc_id}")
        assert [r[0][1] for r in mine[doc_id]["resps"]] == [r[0][1] for r in s["resps"]]
        assert mine[doc_id]["acc"] == s["acc"] and mine[doc_id]["acc_norm"] == s["acc_norm"]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["tiny_belebele"][metric] == ref["results"]["tiny_belebele"][metric]


def min_greedy_gap(model_dir, prompt, steps):
    """Smallest top-1 minus top-2 logit along transformers' greedy path from ``prompt``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    ids = torch.tensor([tok.encode(prompt)])
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores)[:, 0].topk(2, dim=-1).values
    return float((top2[:, 0] - top2[:, 1]).min())


def assert_generations_match(ours, ref, model_dir):
    mine, theirs = by_doc(ours, "tiny_mgsm"), by_doc(ref, "tiny_mgsm")
    assert sorted(mine) == sorted(theirs) and mine
    for doc_id, s in theirs.items():
        if mine[doc_id]["resps"] != s["resps"]:
            gap = min_greedy_gap(model_dir, s["arguments"][0][0], 24)
            assert gap < 1e-4, f"doc {doc_id}: {mine[doc_id]['resps']} != {s['resps']} without a near-tie"
            continue
        assert mine[doc_id]["filtered_resps"] == s["filtered_resps"]
        assert mine[doc_id]["exact_match"] == s["exact_match"]


@pytest.fixture(scope="module")
def plain(setup):
    return run(setup, "moe_jax"), run(setup, "hf")


def test_loglikelihoods_and_accuracy_match_hf(plain):
    assert_loglikelihoods_match(*plain)


def test_generations_and_exact_match_match_hf(plain, setup):
    assert_generations_match(*plain, setup[0])
    texts = [s["resps"][0][0] for s in plain[1]["samples"]["tiny_mgsm"]]
    assert min(map(len, texts)) < 10 < max(map(len, texts)), texts  # some rows cut early, some not


def test_chat_template_matches_hf(setup):
    ours, ref = (run(setup, m, apply_chat_template=True, limit=4) for m in ("moe_jax", "hf"))
    prompt = by_doc(ref, "tiny_belebele")[0]["arguments"][0][0]
    assert prompt.startswith("<|im_start|>user\n")
    assert_loglikelihoods_match(ours, ref)
    assert_generations_match(ours, ref, setup[0])


def test_truncated_requests_match_hf(setup):
    from moe_jax.eval.harness import MoeJaxLM
    lm = MoeJaxLM(pretrained=setup[0], batch_size=BATCH, max_length=32)
    kwargs = dict(tasks=setup[1][:1], log_samples=True, task_manager=TaskManager(include_defaults=False))
    ours = lm_eval.simple_evaluate(model=lm, **kwargs)
    assert lm.stats["truncated"] == 4 * len(by_doc(ours, "tiny_belebele"))  # every passage is > 33 tokens
    ref = run(setup, "hf", max_length=32)
    assert_loglikelihoods_match(ours, ref)

"""MoeJaxLM and the token-level scoring behind it, against unbatched references computed with the
plain forward pass (parity with lm-eval's HF backend is in test_lm_eval_parity.py)."""

import functools
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from tests.helpers.eval_fixtures import belebele_like_task, write_tiny_model
from lm_eval.api.instance import Instance

from moe_jax.eval import scoring
from moe_jax.eval.harness import MoeJaxLM, _stop_settled
from moe_jax.models.decoder import forward

REF_LEN = 160  # references run every sequence padded to this length: one compile


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("harness") / "model"))


@pytest.fixture(scope="module")
def lm(model_dir):
    return MoeJaxLM(pretrained=model_dir, batch_size=3, max_length=96)


def ref_logprobs(lm, ids, intervention=None):
    """log_softmax of the logits of the unpadded sequence ``ids``: ``[len(ids), V]`` (float64)."""
    x = np.zeros((1, REF_LEN), np.int32)
    m = np.zeros((1, REF_LEN), np.int32)
    x[0, :len(ids)], m[0, :len(ids)] = ids, 1
    logits = np.asarray(forward(lm.params, lm.cfg, jnp.asarray(x), jnp.asarray(m), None, intervention).logits)
    z = logits[0, :len(ids)].astype(np.float64)
    return z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)


def ref_loglikelihood(lm, ctx, cont, max_length):
    full = (list(ctx) + list(cont))[-(max_length + 1):]
    lp = ref_logprobs(lm, full[:-1])
    rows = lp[len(full) - 1 - len(cont):]
    return float(sum(rows[j, t] for j, t in enumerate(cont))), bool(all(rows[j].argmax() == t for j, t in enumerate(cont)))


def random_requests(rng, n, vocab, lo=2, hi=90):
    out = []
    for _ in range(n):
        ctx = rng.integers(3, vocab, rng.integers(lo, hi)).tolist()
        out.append((ctx, rng.integers(3, vocab, rng.integers(1, 6)).tolist()))
    return out


@pytest.mark.slow  # compiles the scoring programs of several shapes
def test_loglikelihood_tokens_match_unbatched_reference(lm):
    rng = np.random.default_rng(0)
    V = lm.cfg.vocab_size
    reqs = random_requests(rng, 7, V)
    ctx = reqs[0][0]
    reqs += [(ctx, [t]) for t in (5, 9, 11)]  # one-token choices sharing a context: one forward pass
    reqs += [(ctx[:-2], ctx[-2:] + [7])]  # same context + continuation[:-1], split elsewhere
    reqs += [(rng.integers(3, V, 120).tolist(), [4, 8])]  # longer than max_length + 1: cut from the left
    # The greedy continuation of a context, so is_greedy is True for once.
    greedy = [int(ref_logprobs(lm, ctx)[-1].argmax())]
    reqs += [(ctx, greedy)]
    stats = scoring.new_stats()
    got = scoring.loglikelihood_tokens(lm.params, lm.cfg, reqs, max_length=96, batch_size=3, stats=stats)
    for (c, d), (lp, g) in zip(reqs, got):
        ref_lp, ref_g = ref_loglikelihood(lm, c, d, 96)
        assert lp == pytest.approx(ref_lp, rel=1e-5)
        assert g == ref_g
    assert got[-1][1] is True
    assert stats["truncated"] == 1
    assert stats["batches"] == 3  # 13 requests, 9 distinct model inputs, batches of 3


@pytest.mark.slow
def test_text_requests_follow_lm_eval_encoding(lm):
    tok = lm.tokenizer
    reqs = [Instance("loglikelihood", {}, args, i) for i, args in enumerate(
        [("Answer: ", "4"), ("Answer:", " 4"), ("", "hello world")])]
    (a, _), (b, _), (c, _) = lm.loglikelihood(reqs, disable_tqdm=True)
    assert a == b  # the trailing space moves onto the continuation
    # An empty context is conditioned on the prefix token (EOS: this tokenizer has no BOS).
    assert tok.bos_token_id is None and lm.prefix_token_id == tok.eos_token_id
    ref, _ = ref_loglikelihood(lm, [tok.eos_token_id], tok.encode("hello world"), 96)
    assert c == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_loglikelihood_rolling_sums_disjoint_windows(lm):
    from lm_eval import utils as lm_utils
    text = " ".join(["The river flows north through the old town, past the market."] * 12)
    ids = lm.tokenizer.encode(text)
    assert len(ids) > 2 * 96  # three windows of the 96-token context
    windows = [lm_utils.make_disjoint_window(w) for w in
               lm_utils.get_rolling_token_windows(ids, lm.prefix_token_id, 96, context_len=1)]
    ref = sum(ref_loglikelihood(lm, c, d, 96)[0] for c, d in windows)
    assert sum(len(d) for _, d in windows) == len(ids)
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    assert got == pytest.approx(ref, rel=1e-5)


@pytest.mark.slow
def test_bucketing_keeps_compiles_few(lm):
    rng = np.random.default_rng(1)
    V = lm.cfg.vocab_size
    reqs = random_requests(rng, 40, V, lo=10, hi=90)
    stats = scoring.new_stats()
    scoring.loglikelihood_tokens(lm.params, lm.cfg, reqs, max_length=96, batch_size=3, stats=stats)
    lengths = {len(c) + len(d) - 1 for c, d in reqs}
    assert stats["compiles"] <= len({scoring.bucket_length(n) for n in lengths}) < len(lengths)
    # New requests of other lengths in the same range: every shape is already compiled.
    again = scoring.new_stats()
    scoring.loglikelihood_tokens(lm.params, lm.cfg, random_requests(rng, 40, V, lo=16, hi=80), max_length=96,
                                 batch_size=3, stats=again)
    assert again["compiles"] == 0 and again["batches"] == 14
    assert again["padded_tokens"] < 0.35 * (again["tokens"] + again["padded_tokens"])


def test_bucket_length():
    assert [scoring.bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 129, 256, 257, 1000)] == \
        [8, 8, 16, 40, 64, 80, 160, 256, 320, 1024]
    for n in range(1, 3000):
        b = scoring.bucket_length(n)
        assert n <= b <= max(8, 1.25 * n + 8)


def ref_generate(lm, prompt_ids, max_new, until):
    """Greedy decoding with the full forward pass (no cache), cut at the first stop string."""
    ids, out = list(prompt_ids), []
    for _ in range(max_new):
        t = int(ref_logprobs(lm, ids)[-1].argmax())
        out.append(t)
        ids.append(t)
        if t in lm.stop_token_ids:
            break
    text = lm.tokenizer.decode(out, skip_special_tokens=True)
    for s in until:
        text = text.split(s)[0]
    return text


@pytest.mark.slow
def test_generate_until_matches_uncached_reference(lm):
    prompts = ["Question: Tom has 3 apples. How many?\nAnswer:", "Hello", "Der Zug fährt um 7 Uhr ab.\nAntwort:",
               "x"]
    until = ["Question:", "al", "ik"]
    kwargs = {"until": until, "max_gen_toks": 10, "do_sample": False}
    lm.decode_chunk = 4  # 10 tokens = 3 chunks, the last one cut
    try:
        got = lm.generate_until([Instance("generate_until", {}, (p, dict(kwargs)), i) for i, p in enumerate(prompts)],
                                disable_tqdm=True)
    finally:
        lm.decode_chunk = 32
    eos = lm.tokenizer.decode([lm.eot_token_id])
    for p, g in zip(prompts, got):
        assert g == ref_generate(lm, lm.tokenizer.encode(p), 10, until + [eos])


def test_generate_until_keeps_the_last_max_length_minus_max_gen_toks_prompt_tokens(lm, monkeypatch):
    seen = []

    def spy(params, cfg, prompts, **kw):
        seen.extend(prompts)
        return [[] for _ in prompts]
    monkeypatch.setattr(scoring, "greedy_until_tokens", spy)
    long = " ".join(f"word{i}" for i in range(200))
    ids = lm.tokenizer.encode(long)
    assert len(ids) > 96
    before = lm.stats["truncated"]
    lm.generate_until([Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 10}), i)
                       for i, p in enumerate([long, "Hello"])], disable_tqdm=True)
    assert seen == [ids[-(96 - 10):], lm.tokenizer.encode("Hello")]  # HFLM: max_length - max_gen_toks
    assert lm.stats["truncated"] == before + 1


def test_generate_until_refuses_sampling_and_unknown_kwargs(lm):
    def gen(kwargs):
        return lm.generate_until([Instance("generate_until", {}, ("Hi", kwargs), 0)], disable_tqdm=True)
    with pytest.raises(ValueError, match="greedily only"):
        gen({"until": ["\n"], "do_sample": True, "temperature": 0.7})
    with pytest.raises(ValueError, match="unsupported generation kwargs \\['repetition_penalty'\\]"):
        gen({"until": ["\n"], "repetition_penalty": 1.3})
    with pytest.raises(ValueError, match="max_gen_toks 96 must be less than max_length 96"):
        gen({"until": ["\n"], "max_gen_toks": 96})


def test_stop_settled():
    assert _stop_settled("abc\nd", ["\n"])
    assert not _stop_settled("a b Quest", ["Question:"])
    assert not _stop_settled("xx:yyQ", ["yyQz", "Q"])  # "yyQz" may still complete and cut earlier
    assert _stop_settled("xx:yyQa", ["yyQz", "Q"])


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)
    return str(path)


def mc_requests():
    return [Instance("loglikelihood", {}, ("The river flows north through the", c), i)
            for i, c in enumerate([" town", " market", " bridge"])]


@pytest.mark.slow
def test_steering_file(lm, model_dir, tmp_path):
    L, E = lm.cfg.num_moe_layers, lm.cfg.num_experts
    base = lm.loglikelihood(mc_requests(), disable_tqdm=True)
    make = functools.partial(MoeJaxLM, pretrained=model_dir, batch_size=3, max_length=96)
    neutral = make(steering=write_json(tmp_path / "n.json", {"bias": [[0.0] * E] * L}))
    assert neutral.loglikelihood(mc_requests(), disable_tqdm=True) == base
    bias = np.zeros((L, E))
    bias[:, 0] = 5.0  # expert 0 always chosen
    steered = make(steering=write_json(tmp_path / "b.json", {"bias": bias.tolist(), "mode": "none"}))
    changed = steered.loglikelihood(mc_requests(), disable_tqdm=True)
    assert all(abs(a[0] - b[0]) > 1e-4 for a, b in zip(changed, base))
    # The same edit as a SteeringSpec (method "bias", lam * weight on the targets).
    spec = {"method": "bias", "lam": 5.0, "targets": [[l, 0, 1.0] for l in lm.cfg.moe_layer_ids]}
    assert make(steering=write_json(tmp_path / "s.json", spec)).loglikelihood(mc_requests(), disable_tqdm=True) == changed
    with pytest.raises(ValueError, match=f"field 'bias' has shape \\[{L}, {E - 1}\\]; the model needs"):
        make(steering=write_json(tmp_path / "bad.json", {"bias": [[0.0] * (E - 1)] * L}))
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['gain'\\]"):
        make(steering=write_json(tmp_path / "bad2.json", {"gain": 1.0}))
    bad = lm.model.no_intervention()._replace(bias=np.zeros((L + 1, E), np.float32))
    with pytest.raises(ValueError, match=f"intervention field 'bias' has shape \\[{L + 1}, {E}\\]"):
        MoeJaxLM(model=lm.model, intervention=bad)
    with pytest.raises(ValueError, match="unknown mode 'boost'"):
        make(steering=write_json(tmp_path / "bad3.json", {"mode": "boost"}))


@pytest.mark.slow
def test_lm_eval_cli_runs_the_model(model_dir, tmp_path, monkeypatch):
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    from moe_jax.eval import lm_eval as cli

    task = belebele_like_task(str(tmp_path), name="tiny_cli_belebele")
    import yaml
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "tiny_cli_belebele.yaml").write_text(yaml.safe_dump(task))
    # lm-eval's own task index takes ~20 s to build; the local task does not need it.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    out = tmp_path / "out"
    cli.main(["--model", "moe_jax", "--model_args", f"pretrained={model_dir},max_length=96", "--batch_size", "3",
              "--tasks", "tiny_cli_belebele", "--include_path", str(tmp_path / "tasks"), "--limit", "2",
              "--output_path", str(out)])
    results = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.startswith("results")]
    assert len(results) == 1
    with open(results[0]) as f:
        res = json.load(f)
    assert res["config"]["model"] == "moe_jax"
    assert res["results"]["tiny_cli_belebele"]["acc,none"] in (0.0, 0.5, 1.0)

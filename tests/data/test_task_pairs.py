"""Two-turn task corpora: prompt/response pairs rendered as a user and an assistant turn, the counted
turns (count = both | prompt | response), the JSONL layouts and their errors, and their collection."""

import copy
import json
import os

import numpy as np
import pytest

from moe_jax.data import corpora, local_files
from moe_jax.data import tokenize as T
from moe_jax.data.defaults import default_config, task_data_config
from moe_jax.data.parallel import CorpusError, Turns, align
from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer

PREFIX, MIDDLE, END = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>\n"
COUNTED = {"both": (True, True), "prompt": (True, False), "response": (False, True)}  # (prompt, response)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def pairs():
    return corpora.load_builtin_task("math", max_sentences=6).texts["eng_Latn"]


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------------------------------ encoding

@pytest.mark.parametrize("count", ["both", "prompt", "response"])
def test_two_turn_chat_counts_exactly_the_chosen_turn_texts(tok, pairs, count):
    enc = T.encode_texts(tok, pairs, count=count, max_length=512)
    head, mid, end = ids_of(tok, PREFIX), ids_of(tok, MIDDLE), ids_of(tok, END)
    for (prompt, response), ids, mask in zip(pairs, enc.input_ids, enc.count_mask):
        p, r = ids_of(tok, prompt), ids_of(tok, response)
        # user turn, then assistant turn, and no generation prompt after it
        assert ids.tolist() == head + p + mid + r + end
        rendered = tok.apply_chat_template([{"role": "user", "content": prompt},
                                            {"role": "assistant", "content": response}],
                                           add_generation_prompt=False, tokenize=False)
        assert tok.decode(ids) == rendered == PREFIX + prompt + MIDDLE + response + END
        use_p, use_r = COUNTED[count]
        assert mask.tolist() == ([False] * len(head) + [use_p] * len(p) + [False] * len(mid) +
                                 [use_r] * len(r) + [False] * len(end))


def test_two_turn_without_exclusion_counts_every_token(tok, pairs):
    enc = T.encode_texts(tok, pairs, exclude_template_tokens=False, max_length=512)
    for (prompt, response), ids, mask in zip(pairs, enc.input_ids, enc.count_mask):
        assert mask.all() and tok.decode(ids) == PREFIX + prompt + MIDDLE + response + END
    with pytest.raises(ValueError, match="count='prompt'.*needs exclude_template_tokens=True"):
        T.encode_texts(tok, pairs, exclude_template_tokens=False, count="prompt")


def test_two_turn_without_chat_template_is_prompt_newline_response(tok):
    pairs = [Turns("Name a prime number", "Seven is prime."), Turns("What is 6 times 7?", "It is 42.")]
    for count, (use_p, use_r) in COUNTED.items():
        enc = T.encode_texts(tok, pairs, chat_template=False, count=count)
        for (prompt, response), ids, mask in zip(pairs, enc.input_ids, enc.count_mask):
            p, nl, r = ids_of(tok, prompt), ids_of(tok, "\n"), ids_of(tok, response)
            assert ids.tolist() == ids_of(tok, prompt + "\n" + response) == p + nl + r  # no BOS: none configured
            assert mask.tolist() == [use_p] * len(p) + [False] * len(nl) + [use_r] * len(r)


def test_template_that_depends_on_the_turn_text(tok):
    """A marker added before turns with digits: each turn text is located in the prompt itself."""
    t2 = copy.deepcopy(tok)
    t2.chat_template = ("{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{% if '1' in m['content'] %}[num] "
                        "{% endif %}{{ m['content'] }}<|im_end|>\n{%- endfor %}")
    pairs = [Turns("What is 1 plus 1?", "It is 2."), Turns("Add two and two.", "That makes 1 less than 5.")]
    for count, parts in (("both", (0, 1)), ("prompt", (0,)), ("response", (1,))):
        enc = T.encode_texts(t2, pairs, count=count)
        assert [t2.decode(ids[m]) for ids, m in zip(enc.input_ids, enc.count_mask)] == \
            ["".join(pair[k] for k in parts) for pair in pairs]
    assert "[num] That makes" in t2.decode(enc.input_ids[1])


def test_count_errors(tok):
    with pytest.raises(ValueError, match="count must be one of both, prompt, response, got 'answer'"):
        T.encode_texts(tok, [Turns("a", "b")], count="answer")
    with pytest.raises(ValueError, match="count='response' picks a turn.*text 1 is a single text"):
        T.encode_texts(tok, [Turns("a", "b"), "c"], count="response")
    with pytest.raises(T.TokenizerError, match="no counted token within max_length=4"):
        T.encode_texts(tok, [Turns("Hello", "World")], count="response", max_length=4)


def test_corpus_encoding_options_add_count_for_pairs_only():
    cfg = default_config()
    single = corpora.load_builtin(["eng_Latn"], max_sentences=2)
    two_turn = corpora.load_builtin_task("medicine", max_sentences=2)
    assert cfg.count == "both" and T.corpus_encoding_options(cfg, single) == T.encoding_options(cfg)
    assert T.corpus_encoding_options(cfg, two_turn) == {**T.encoding_options(cfg), "count": "both"}
    cfg.count = "response"
    assert T.corpus_encoding_options(cfg, two_turn)["count"] == "response"
    with pytest.raises(ValueError, match="count='response' picks a turn.*builtin holds single texts"):
        T.corpus_encoding_options(cfg, single)


def test_count_is_set_per_task():
    data = default_config()
    data.count = "prompt"  # config.data's count is the main corpus's, not inherited by a task
    assert task_data_config(data, "math", {"source": "builtin_task", "task": "math"}).count == "both"
    t = task_data_config(data, "math", {"source": "builtin_task", "task": "math", "count": "response"})
    assert t.count == "response"


# ------------------------------------------------------------------------------------------ JSONL

def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return str(path)


def test_jsonl_pair_layouts(tmp_path):
    wide = write_lines(tmp_path / "wide.jsonl", [
        {"id": 1, "eng_Latn": {"prompt": " Q1 ", "response": "A1\n"}, "fra_Latn": {"prompt": "q1", "response": "a1"}},
        {"id": 2, "eng_Latn": {"prompt": "Q2", "response": " "}, "fra_Latn": {"prompt": "q2", "response": "a2"}},
        {"id": 3, "eng_Latn": {"prompt": "Q3", "response": "A3"}, "fra_Latn": {"prompt": "q3", "response": "a3"}}])
    c = corpora.load_corpus({"source": "jsonl", "path": wide})
    assert c.two_turn and c.ids == ["1", "3"] and c.dropped_ids == ["2"]  # an empty turn drops the id
    assert c.texts == {"eng_Latn": [Turns("Q1", "A1"), Turns("Q3", "A3")],
                       "fra_Latn": [Turns("q1", "a1"), Turns("q3", "a3")]}
    long = write_lines(tmp_path / "long.jsonl", [{"id": "x", "lang": "deu_Latn", "prompt": "F", "response": "A"}])
    assert corpora.load_jsonl(long).texts == {"deu_Latn": [Turns("F", "A")]}
    pair = write_lines(tmp_path / "pair.jsonl", [{"id": "m1", "prompt": "P", "response": "R", "split": "dev"}])
    c = corpora.load_corpus({"source": "jsonl", "path": pair, "split": "dev"})
    assert c.languages == ["eng_Latn"] and c.texts["eng_Latn"] == [Turns("P", "R")]


@pytest.mark.parametrize("line, pattern", [
    ({"id": 5, "prompt": "P"}, "missing key 'response'"),
    ({"id": 5, "eng_Latn": {"prompt": "P"}}, "missing key 'eng_Latn.response'"),
    ({"id": 5, "lang": "eng_Latn", "response": "R"}, "missing key 'prompt'"),
    ({"id": 5, "prompt": "P", "response": 7}, "field 'response' is int, not a string"),
    ({"id": 5, "eng_Latn": {"prompt": ["P"], "response": "R"}}, "field 'eng_Latn.prompt' is list, not a string"),
    ({"id": 5, "eng_Latn": {"prompt": "P", "response": "R", "answer": "A"}},
     "field 'eng_Latn' has key\\(s\\) \\['answer'\\]"),
    ({"id": 5, "prompt": "P", "response": "R", "eng_Latn": "x"},
     "key\\(s\\) \\['eng_Latn'\\] beside 'prompt'/'response'"),
    ({"id": 5, "lang": "eng_Latn", "text": "T", "prompt": "P", "response": "R"}, "both 'text' and 'prompt'"),
    ({"id": 5, "eng_Latn": "a single text"}, "a single text, but .*:1 holds a prompt/response pair"),
])
def test_jsonl_pair_errors_name_file_line_and_field(tmp_path, line, pattern):
    path = write_lines(tmp_path / "bad.jsonl", [{"id": 1, "eng_Latn": {"prompt": "P", "response": "R"}}, line])
    with pytest.raises(CorpusError, match=f"^{path}:2: .*{pattern}"):
        local_files.read_jsonl(path, None, None)


def test_align_refuses_mixed_kinds():
    with pytest.raises(CorpusError, match="mixes prompt/response pairs \\(fra_Latn\\) with single texts"):
        align("t", None, {"eng_Latn": [("1", "a")], "fra_Latn": [("1", Turns("b", "c"))]})
    with pytest.raises(CorpusError, match="sentence '1' of eng_Latn is Turns, not a string or Turns"):
        align("t", None, {"eng_Latn": [("1", Turns("a", 3))]})


# ------------------------------------------------------------------------------------------ collect

@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """convert + collect of the tiny demo model with a two-turn task corpus counting responses only."""
    from moe_jax.pipeline import convert as convert_stage
    from moe_jax.pipeline import collect as collect_stage

    tmp = tmp_path_factory.mktemp("pairs")
    path = write_lines(tmp / "qa.jsonl", [{"id": f"q{i}", "prompt": p, "response": r} for i, (p, r) in enumerate([
        ("What is the capital of France?", "Paris is the capital of France."),
        ("Name a colour of the sky.", "The sky is often blue."),
        ("How many legs does a spider have?", "A spider has eight legs.")])])
    workdir = str(tmp / "work")
    convert_stage.run(qa_config(path, "response"), workdir)
    return workdir, path, collect_stage.run(qa_config(path, "response"), workdir)


def qa_config(path, count, overwrite=False):
    from tests.helpers.configs import demo_config

    config = demo_config()
    config.data.max_sentences = 2
    config.tasks = {"qa": {"source": "jsonl", "path": path, "count": count}}
    config.collect.overwrite = overwrite
    return config


@pytest.mark.slow  # converts a tiny model and runs the collect stage twice
def test_collect_two_turn_task_store_records_count(collected):
    from transformers import AutoTokenizer

    from moe_jax.artifacts import layout as wd
    from moe_jax.pipeline import collect as collect_stage
    from moe_jax.artifacts import routing_store as store

    workdir, path, out = collected
    main = store.read_meta(os.path.join(workdir, "routing"))
    meta, data = store.read_store(os.path.join(workdir, "tasks", "qa"))
    assert meta["data_source"]["count"] == "response" and "count" not in main["data_source"]
    assert meta["template"] == main["template"] and meta["task"] == "qa"
    tok = AutoTokenizer.from_pretrained(wd.checkpoint_dir(workdir))
    pairs = corpora.load_jsonl(path).texts["eng_Latn"]
    response_tokens = [len(ids_of(tok, r)) for _, r in pairs]
    assert data["eng_Latn"]["seq_lengths"].tolist() == response_tokens
    assert out["tasks/qa"]["eng_Latn"]["counted_tokens"] == sum(response_tokens)

    # another count is another store: refused, then recollected with overwrite
    with pytest.raises(store.StoreMismatchError, match="tasks/qa holds routing statistics of another"):
        collect_stage.run(qa_config(path, "both"), workdir)
    out = collect_stage.run(qa_config(path, "both", overwrite=True), workdir)
    assert list(out) == ["tasks/qa"]  # the main store is unchanged
    both, data = store.read_store(os.path.join(workdir, "tasks", "qa"))
    assert both["data_source"]["count"] == "both" and both["fingerprint"] != meta["fingerprint"]
    assert data["eng_Latn"]["seq_lengths"].tolist() == [len(ids_of(tok, p)) + len(ids_of(tok, r)) for p, r in pairs]
    np.testing.assert_allclose(data["eng_Latn"]["seq_topk_freq"].sum(-1), 3, atol=1e-5)  # top-3 model

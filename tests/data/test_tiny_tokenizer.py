import json
import os
import time

import pytest
from transformers import AutoTokenizer

from moe_jax.data.corpora import load_builtin
from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny"))
    with open(os.path.join(out, "config.json"), "w") as f:  # a checkpoint file that must survive
        f.write('{"model_type": "qwen2_moe"}')
    t0 = time.perf_counter()
    tok = build_tiny_tokenizer(out)
    return out, tok, time.perf_counter() - t0


def test_fast_deterministic_and_keeps_other_files(built, tmp_path):
    out, tok, seconds = built
    assert seconds < 5.0
    assert json.load(open(os.path.join(out, "config.json"))) == {"model_type": "qwen2_moe"}
    assert not [f for f in os.listdir(out) if f.startswith(".")]  # no temporary directory left
    build_tiny_tokenizer(str(tmp_path))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(os.path.join(out, name), "rb") as a, open(tmp_path / name, "rb") as b:
            assert a.read() == b.read(), name


def test_loads_offline_with_special_tokens_and_template(built):
    out, _, _ = built
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.is_fast and len(tok) == 512
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    cfg = json.load(open(os.path.join(out, "tokenizer_config.json")))
    assert "<|im_start|>" in cfg["chat_template"] and cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    messages = [{"role": "user", "content": "Bonjour !"}]
    assert tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False) == \
        "<|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False) == \
        "<|im_start|>user\nBonjour !<|im_end|>\n"
    ids = tok("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2  # markers are single special tokens


def test_round_trip_every_script(built):
    _, tok, _ = built
    corpus = load_builtin()
    for lang in corpus.languages:
        for text in corpus.texts[lang]:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text, lang
    unseen = "Ελληνικά, עברית, 한국어 and emoji 🙂 round-trip byte by byte."
    assert tok.decode(tok(unseen, add_special_tokens=False)["input_ids"]) == unseen


def test_small_vocab_and_custom_texts(tmp_path):
    tok = build_tiny_tokenizer(str(tmp_path), texts=["aaa bbb aaa bbb"] * 10, vocab_size=270)
    assert len(tok) <= 270 and tok.decode(tok("aaa bbb")["input_ids"]) == "aaa bbb"
    with pytest.raises(ValueError, match="vocab_size 200 < 259"):
        build_tiny_tokenizer(str(tmp_path / "x"), texts=["a"], vocab_size=200)

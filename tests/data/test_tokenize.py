"""Tokenisation: template exclusion, truncation, padding, batches, vocabulary check."""

import copy

import numpy as np
import pytest

from moe_jax.data import tokenize as T
from moe_jax.data.corpora import load_builtin
from moe_jax.data.defaults import default_config
from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def corpus():
    return load_builtin()


@pytest.fixture(scope="module")
def bos_tok(tok):
    """The tiny tokenizer with a BOS added to raw text (like Llama/Phi tokenizers)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|im_end|>")


def test_template_exclusion_counts_exactly_the_user_text(tok, corpus):
    prefix = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    suffix = tok("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    for lang in corpus.languages:
        texts = corpus.texts[lang]
        enc = T.encode_texts(tok, texts, max_length=512)
        assert enc.num_truncated == 0
        for text, ids, mask in zip(texts, enc.input_ids, enc.count_mask):
            alone = tok(text, add_special_tokens=False)["input_ids"]
            assert ids.dtype == np.int32 and mask.dtype == bool
            assert tok.decode(ids[mask]) == text
            assert ids[mask].tolist() == alone  # the text tokenizes the same inside the template
            assert ids.tolist() == prefix + alone + suffix
            assert mask.tolist() == [False] * len(prefix) + [True] * len(alone) + [False] * len(suffix)


def test_template_without_exclusion_counts_everything(tok, corpus):
    enc = T.encode_texts(tok, corpus.texts["rus_Cyrl"][:5], exclude_template_tokens=False)
    for ids, mask in zip(enc.input_ids, enc.count_mask):
        assert mask.all() and tok.decode(ids).startswith("<|im_start|>user\n")


def test_thinking_flag_reaches_the_template(tok):
    on = T.encode_texts(tok, ["Hello"], enable_thinking=True).input_ids[0]
    off = T.encode_texts(tok, ["Hello"], enable_thinking=False).input_ids[0]
    assert tok.decode(on).endswith("<|im_start|>assistant\n") and tok.decode(off).endswith("</think>\n\n")


def test_raw_text_with_bos(bos_tok):
    texts = ["Paris is the capital of France.", "猫每天要睡很多个小时。"]
    enc = T.encode_texts(bos_tok, texts, chat_template=False)
    for text, ids, mask in zip(texts, enc.input_ids, enc.count_mask):
        assert ids.tolist() == bos_tok(text)["input_ids"] and ids[0] == 0  # BOS added to raw text
        assert not mask[0] and mask[1:].all() and bos_tok.decode(ids[mask]) == text
    enc_all = T.encode_texts(bos_tok, texts, chat_template=False, exclude_template_tokens=False)
    assert all(m.all() for m in enc_all.count_mask)


def test_truncation_keeps_the_first_tokens_and_counts(tok, corpus):
    texts = corpus.texts["ben_Beng"]
    full = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                    tokenize=True, enable_thinking=False) for t in texts]
    full = [f["input_ids"] if isinstance(f, dict) or hasattr(f, "keys") else f for f in full]
    max_length = int(np.median([len(f) for f in full]))
    enc = T.encode_texts(tok, texts, max_length=max_length)
    expected = np.array([len(f) > max_length for f in full])
    assert 0 < expected.sum() < len(texts)
    assert enc.num_truncated == expected.sum() and (enc.truncated == expected).all()
    for f, ids in zip(full, enc.input_ids):
        assert ids.tolist() == list(f)[:max_length]
    assert (enc.lengths == np.minimum([len(f) for f in full], max_length)).all()


def test_encode_errors(tok):
    with pytest.raises(T.TokenizerError, match="no counted token within max_length=3"):
        T.encode_texts(tok, ["Hello world"], max_length=3)
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        T.encode_texts(tok, ["x"], max_length=0)
    assert len(T.encode_texts(tok, [])) == 0

    class NoTemplate:
        chat_template, is_fast = None, True

    with pytest.raises(T.TokenizerError, match="chat_template=False"):
        T.encode_texts(NoTemplate(), ["x"])

    class Slow:
        is_fast = False

    with pytest.raises(T.TokenizerError, match="only fast tokenizers"):
        T.encode_texts(Slow(), ["x"])


def test_template_that_depends_on_the_text(tok):
    """A template adding a marker for texts with digits: the text is located in the prompt itself."""
    t2 = copy.deepcopy(tok)
    t2.chat_template = ("{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{% if '1' in m['content'] %}[num] "
                        "{% endif %}{{ m['content'] }}<|im_end|>\n{%- endfor %}<|im_start|>assistant\n")
    texts = ["Athens, 1896.", "No digits here."]
    enc = T.encode_texts(t2, texts)
    assert t2.decode(enc.input_ids[0]).startswith("<|im_start|>user\n[num] Athens")
    assert [t2.decode(ids[m]) for ids, m in zip(enc.input_ids, enc.count_mask)] == texts


def test_template_that_rewrites_text():
    class Upper:  # a template that upper-cases the user text: exclusion is impossible, and says so
        is_fast, chat_template = True, "x"

        def apply_chat_template(self, messages, **kw):
            return "<|im_start|>user\n" + messages[0]["content"].upper() + "<|im_end|>\n"

    with pytest.raises(T.TokenizerError, match="verbatim.*exclude_template_tokens=False"):
        T.encode_texts(Upper(), ["hello"])


def test_encode_corpus_reads_config(tok, corpus):
    cfg = default_config()
    cfg.max_length = 24
    cfg.chat_template = False
    enc = T.encode_corpus(tok, corpus.select(["eng_Latn", "tha_Thai"]), cfg)
    assert list(enc) == ["eng_Latn", "tha_Thai"]
    assert all(len(ids) <= 24 for e in enc.values() for ids in e.input_ids)
    assert T.encoding_options(cfg) == {"chat_template": False, "exclude_template_tokens": True,
                                       "enable_thinking": False, "max_length": 24}


def test_pad_batch_right_and_left():
    seqs = [np.array([5, 6, 7], np.int32), np.array([8], np.int32)]
    masks = [np.array([False, True, True]), np.array([True])]
    r = T.pad_batch(seqs, masks, pad_id=9, padding_side="right", pad_to_multiple=4)
    assert r["input_ids"].tolist() == [[5, 6, 7, 9], [8, 9, 9, 9]]
    assert r["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert r["count_mask"].tolist() == [[False, True, True, False], [True, False, False, False]]
    assert r["input_ids"].dtype == np.int32 and r["attention_mask"].dtype == np.int32
    assert r["count_mask"].dtype == bool
    left = T.pad_batch(seqs, masks, pad_id=9, padding_side="left", pad_to_multiple=4)
    assert left["input_ids"].tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert left["attention_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert left["count_mask"].tolist() == [[False, False, True, True], [False, False, False, True]]
    assert T.pad_batch(seqs, pad_to_multiple=16)["input_ids"].shape == (2, 16)
    assert T.pad_batch(seqs, length=5)["count_mask"].tolist() == [[True] * 3 + [False] * 2, [True] + [False] * 4]
    with pytest.raises(ValueError, match="3 tokens does not fit length=2"):
        T.pad_batch(seqs, length=2)
    with pytest.raises(ValueError, match="padding_side"):
        T.pad_batch(seqs, padding_side="center")
    with pytest.raises(ValueError, match="row 1: count mask of length 2 for 1 tokens"):
        T.pad_batch(seqs, [masks[0], np.ones(2, bool)])


@pytest.mark.parametrize("sort, side", [(True, "right"), (False, "left")])
def test_batches_cover_every_sequence_once(sort, side):
    rng = np.random.default_rng(0)
    lengths = [3, 9, 1, 17, 5, 5, 12, 2, 8, 4]
    enc = T.EncodedTexts([rng.integers(1, 50, n).astype(np.int32) for n in lengths],
                         [rng.random(n) < 0.7 for n in lengths], np.zeros(len(lengths), bool))
    out = list(T.batches(enc, 4, pad_id=0, padding_side=side, pad_to_multiple=8, sort_by_length=sort))
    assert len(out) == 3 and all(b.input_ids.shape[0] == 4 for b in out)
    seen = np.concatenate([b.seq_index[b.valid] for b in out])
    assert sorted(seen.tolist()) == list(range(10))
    if sort:
        assert [lengths[i] for i in seen] == sorted(lengths, reverse=True)
    else:
        assert seen.tolist() == list(range(10))
    for b in out:
        assert b.input_ids.shape[1] % 8 == 0 and b.input_ids.shape == b.attention_mask.shape == b.count_mask.shape
        for row, i in enumerate(b.seq_index):
            att = b.attention_mask[row].astype(bool)
            if i < 0:  # dummy row: one attended pad token, nothing counted
                assert att.sum() == 1 and not b.count_mask[row].any() and not b.valid[row]
                continue
            assert b.input_ids[row][att].tolist() == enc.input_ids[i].tolist()
            assert b.count_mask[row][att].tolist() == enc.count_mask[i].tolist()
            assert not b.count_mask[row][~att].any()
            assert att[0] if side == "right" else att[-1]
    assert out[-1].valid.tolist() == [True, True, False, False]
    fixed = list(T.batches(enc, 4, length=32))
    assert all(b.input_ids.shape == (4, 32) for b in fixed)


def test_check_tokenizer(tok):
    T.check_tokenizer(tok, len(tok))
    T.check_tokenizer(tok, len(tok) + 64)  # padded embedding tables are fine
    with pytest.raises(T.TokenizerError, match=rf"{len(tok)} token ids .* has {len(tok) - 1} rows"):
        T.check_tokenizer(tok, len(tok) - 1)


def test_pad_token_id(tok):
    assert T.pad_token_id(tok) == tok.convert_tokens_to_ids("<|endoftext|>") == 0

    class NoPad:
        pad_token_id, eos_token_id = None, 7

    assert T.pad_token_id(NoPad()) == 7

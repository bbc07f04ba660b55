"""A tiny byte-level BPE tokenizer with a Qwen-style chat template, for tests and the offline demo.

Byte-level, so every script round-trips; pre-tokenised with the Qwen2 split pattern, so chat
template markers, newlines and words fall into separate tokens as in the real checkpoints. Trained
in well under a second on the shipped corpus, deterministically (same texts -> same files), and
saved in the ``save_pretrained`` layout that ``AutoTokenizer.from_pretrained(dir)`` loads offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from moe_jax.data.corpora import load_builtin
from moe_jax.io import storage

# Qwen2 / Qwen3 pre-tokenisation pattern (numbers split digit by digit).
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PAD_TOKEN, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# Qwen-style template: one turn per message; the generation prompt opens the assistant turn and,
# with enable_thinking=False (as Qwen3 is run in the studies), closes an empty think block.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def train_backend(texts: Iterable[str], vocab_size: int = 512):
    """The ``tokenizers.Tokenizer`` (byte-level BPE, special tokens first: ids 0, 1, 2)."""
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} < {256 + len(SPECIAL_TOKENS)}: the 256 byte symbols and "
                         f"{len(SPECIAL_TOKENS)} special tokens must fit")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return tok


def build_tiny_tokenizer(out_dir: str, texts: Iterable[str] | None = None, vocab_size: int = 512):
    """Trains the tiny tokenizer on ``texts`` (default: the shipped corpus), saves it to ``out_dir``
    and returns it loaded back through ``AutoTokenizer`` (a fast tokenizer).

    Files already in ``out_dir`` (a checkpoint's config and weights) are kept; the tokenizer files
    are written to a temporary directory first and moved in one by one (each move atomic); a
    ``gs://`` ``out_dir`` gets them uploaded one object each from a local temporary directory.
    """
    if texts is None:
        corpus = load_builtin()
        texts = [t for lang in corpus.languages for t in corpus.texts[lang]]
    backend = train_backend(texts, vocab_size)
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END, pad_token=PAD_TOKEN,
                                   model_max_length=32768)
    fast.chat_template = CHAT_TEMPLATE
    if storage.is_remote(out_dir):  # HF writes only local dirs: save locally, then upload each file
        with tempfile.TemporaryDirectory(prefix="moe_jax-tokenizer-") as tmp:
            _save(fast, tmp)
            storage.upload_tree(tmp, out_dir)
            return AutoTokenizer.from_pretrained(tmp)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=out_dir, prefix=".tokenizer.")
    try:
        _save(fast, tmp)
        for name in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(out_dir)


def _save(fast, directory: str) -> None:
    # save_jinja_files=False keeps the template inside tokenizer_config.json (one file to read).
    fast.save_pretrained(directory, save_jinja_files=False)
    _portable_config(os.path.join(directory, "tokenizer_config.json"))


def _portable_config(path: str) -> None:
    """Names the generic fast-tokenizer class, which transformers 4.x and 5.x both resolve."""
    with open(path) as f:
        cfg = json.load(f)
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.setdefault("chat_template", CHAT_TEMPLATE)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)

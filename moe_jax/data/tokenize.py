"""Tokenisation for routing collection: chat-template wrapping, counted-token masks, padding, batches.

Each text becomes ``input_ids [L_i]`` and ``count_mask [L_i]``: the tokens whose routing enters the
statistics. A text is a string, rendered as one user turn with the generation prompt, or
``Turns(prompt, response)``, rendered as a user turn followed by an assistant turn (no generation
prompt); without a chat template a pair is the raw string ``prompt + "\n" + response``. With
``exclude_template_tokens`` the mask is 1 only on tokens that overlap the counted turn texts inside
the templated string (character offsets of a fast tokenizer), so chat markers, role lines, the
generation prompt and any BOS are excluded; without it every token counts (as in Bandarkar et
al.'s routing study; docs/methods.md#notation). ``count`` picks the turns of a pair: "both"
(default), "prompt" or "response". Padding never counts.

Over-long sequences are cut to the first ``max_length`` tokens (right truncation): under causal
attention the routing of the kept tokens is then exactly what it is in the full sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from moe_jax.data.parallel import Turns

# private-use characters: never in real text or templates
_SENTINELS = ("\ue000moe_jax_user_text\ue001", "\ue000moe_jax_response_text\ue001")
RAW_SEPARATOR = "\n"  # between prompt and response without a chat template
# count option -> indices of the counted turns of a pair (a single text is one turn, always counted)
COUNTS = {"both": (0, 1), "prompt": (0,), "response": (1,)}


class TokenizerError(ValueError):
    """The tokenizer cannot serve this model or these options."""


@dataclasses.dataclass
class EncodedTexts:
    """Token sequences of N texts (variable length, unpadded).

    input_ids:  N arrays [L_i] int32
    count_mask: N arrays [L_i] bool   tokens that enter the routing statistics
    truncated:  [N] bool              sequences cut to max_length
    """

    input_ids: list[np.ndarray]
    count_mask: list[np.ndarray]
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        """[N] int32 tokens per sequence (after truncation)."""
        return np.array([len(x) for x in self.input_ids], dtype=np.int32)

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


class Batch(NamedTuple):
    """A padded batch of B rows (fixed B; the last batch is filled with dummy rows).

    input_ids [B,S] int32, attention_mask [B,S] int32 (1 = token), count_mask [B,S] bool,
    seq_index [B] int32 (index of the sequence in the EncodedTexts, -1 for a dummy row),
    valid [B] bool (False for dummy rows).
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    count_mask: np.ndarray
    seq_index: np.ndarray
    valid: np.ndarray


def encoding_options(cfg: Any = None, **overrides) -> dict:
    """The tokenisation options of ``config.data`` (recorded with the routing statistics)."""
    opts = {"chat_template": True, "exclude_template_tokens": True, "enable_thinking": False, "max_length": 256}
    for key in opts:
        value = _field(cfg, key)
        if value is not None:
            opts[key] = value
    opts.update(overrides)
    return opts


def corpus_encoding_options(cfg: Any, corpus) -> dict:
    """``encoding_options(cfg)`` for ``corpus``, plus ``count`` (from ``cfg``, default "both") when its
    texts are prompt/response pairs: only then does it change the numbers (and the store fingerprint)."""
    opts = encoding_options(cfg)
    count = _field(cfg, "count") or "both"
    _check_count(count, opts["exclude_template_tokens"])
    if corpus.two_turn:
        opts["count"] = count
    elif count != "both":
        raise ValueError(f"count={count!r} picks a turn of prompt/response pairs, but {corpus.name} holds "
                         "single texts; leave count at 'both'")
    return opts


def _field(cfg: Any, key: str):
    if cfg is None:
        return None
    return cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)


def _check_count(count: str, exclude_template_tokens: bool) -> None:
    if count not in COUNTS:
        raise ValueError(f"count must be one of {', '.join(COUNTS)}, got {count!r}")
    if count != "both" and not exclude_template_tokens:
        raise ValueError(f"count={count!r} locates the turn's text by character offsets: it needs "
                         "exclude_template_tokens=True")


def check_tokenizer(tokenizer, vocab_size: int) -> None:
    """Raises ``TokenizerError`` when token ids can exceed the model's embedding rows."""
    n = len(tokenizer)
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    if vocab:
        n = max(n, max(vocab.values()) + 1)
    if n > vocab_size:
        raise TokenizerError(
            f"the tokenizer has {n} token ids (0..{n - 1}) but the model's vocabulary (config vocab_size) "
            f"has {vocab_size} rows: ids >= {vocab_size} would index past the embedding table. "
            "Use the tokenizer saved with this checkpoint.")


def pad_token_id(tokenizer) -> int:
    """The id used for padding: pad, else eos, else 0 (padded positions are masked anyway)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _turns(text) -> tuple[str, ...]:
    """The turn texts of a text: (user,) or (prompt, response)."""
    return tuple(text) if isinstance(text, Turns) else (text,)


def _render(tokenizer, turns: Sequence[str], enable_thinking: bool) -> str:
    messages = [{"role": role, "content": t} for role, t in zip(("user", "assistant"), turns)]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=len(turns) == 1, tokenize=False,
                                         enable_thinking=enable_thinking)


def _template_pieces(tokenizer, n_turns: int, enable_thinking: bool) -> tuple[str, ...]:
    """The n+1 template strings around the n turn texts of the templated prompt."""
    marks = _SENTINELS[:n_turns]
    rendered = _render(tokenizer, marks, enable_thinking)
    if any(rendered.count(m) != 1 for m in marks) or rendered.find(marks[0]) > rendered.find(marks[-1]):
        raise TokenizerError("the chat template does not render each message verbatim once, in order; set "
                             "config.data.exclude_template_tokens=False")
    pieces = []
    for m in marks:
        head, rendered = rendered.split(m)
        pieces.append(head)
    return tuple(pieces) + (rendered,)


def _locate(prompt: str, turns: Sequence[str], pieces: Sequence[str], i: int) -> list[tuple[int, int]]:
    """Character spans ``[(start, end)]`` of the turn texts in the templated ``prompt``."""
    spans, pos = [], len(pieces[0])
    if prompt == pieces[0] + "".join(t + p for t, p in zip(turns, pieces[1:])):
        for t, piece in zip(turns, pieces[1:]):
            spans.append((pos, pos + len(t)))
            pos += len(t) + len(piece)
        return spans
    for k, t in enumerate(turns):  # content-dependent template: locate each text itself, in order
        start = prompt.find(t, pos)
        start = prompt.find(t) if start < 0 and k == 0 else start
        if start < 0:
            raise TokenizerError(f"text {i} does not appear verbatim in its templated prompt (the "
                                 "template rewrites it); set config.data.exclude_template_tokens=False")
        spans.append((start, start + len(t)))
        pos = start + len(t)
    return spans


def _prompts(tokenizer, texts: Sequence, chat_template: bool, enable_thinking: bool, locate: bool
             ) -> tuple[list[str], list[list[tuple[int, int]]]]:
    """Strings to tokenize and the character spans of the turn texts in each (if ``locate``)."""
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise TokenizerError("the tokenizer has no chat template; set config.data.chat_template=False "
                             "to tokenize the raw text")
    prompts, spans, pieces = [], [], {}
    for i, text in enumerate(texts):
        turns = _turns(text)
        if chat_template:
            prompt = _render(tokenizer, turns, enable_thinking)
            if locate and len(turns) not in pieces:
                pieces[len(turns)] = _template_pieces(tokenizer, len(turns), enable_thinking)
        else:
            prompt = RAW_SEPARATOR.join(turns)
            pieces[len(turns)] = ("",) + (RAW_SEPARATOR,) * (len(turns) - 1) + ("",)
        prompts.append(prompt)
        spans.append(_locate(prompt, turns, pieces[len(turns)], i) if locate else [])
    return prompts, spans


def encode_texts(tokenizer, texts: Sequence, *, chat_template: bool = True,
                 exclude_template_tokens: bool = True, enable_thinking: bool = False,
                 max_length: int = 256, count: str = "both") -> EncodedTexts:
    """Tokenizes ``texts`` (strings or ``Turns``; optionally in the chat template) with counted-token masks.

    A token counts when ``exclude_template_tokens`` is False, or when its character span overlaps a
    counted turn text (a token straddling a text boundary counts): the user text of a string, the
    turns ``count`` names of a pair ("both" | "prompt" | "response"; not "both" needs
    ``exclude_template_tokens``). Needs a fast tokenizer for the offsets when excluding template tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    _check_count(count, exclude_template_tokens)
    if exclude_template_tokens and not getattr(tokenizer, "is_fast", False):
        raise TokenizerError("excluding template tokens needs character offsets, which only fast "
                             "tokenizers give; load a fast tokenizer or set exclude_template_tokens=False")
    if len(texts) == 0:
        return EncodedTexts([], [], np.zeros(0, dtype=bool))
    if count != "both":
        single = next((i for i, t in enumerate(texts) if not isinstance(t, Turns)), None)
        if single is not None:
            raise ValueError(f"count={count!r} picks a turn of prompt/response pairs, but text {single} is a "
                             "single text")
    prompts, spans = _prompts(tokenizer, texts, chat_template, enable_thinking, exclude_template_tokens)
    # A templated prompt already holds its special tokens; raw text gets the tokenizer's (e.g. BOS).
    enc = tokenizer(prompts, add_special_tokens=not chat_template, return_offsets_mapping=exclude_template_tokens)
    ids_out, mask_out, truncated = [], [], np.zeros(len(texts), dtype=bool)
    for i, ids in enumerate(enc["input_ids"]):
        ids = np.asarray(ids, dtype=np.int32)
        if exclude_template_tokens:
            off = np.asarray(enc["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
            counted = [spans[i][k] for k in COUNTS[count] if k < len(spans[i])]
            mask = np.zeros(len(ids), dtype=bool)
            for start, end in counted:
                mask |= (off[:, 1] > off[:, 0]) & (off[:, 0] < end) & (off[:, 1] > start)
        else:
            mask = np.ones(len(ids), dtype=bool)
        if len(ids) > max_length:
            ids, mask, truncated[i] = ids[:max_length], mask[:max_length], True
        if not mask.any():
            raise TokenizerError(f"text {i} has no counted token within max_length={max_length} (the "
                                 "template prefix fills it, or the text is empty); raise max_length")
        ids_out.append(ids)
        mask_out.append(mask)
    return EncodedTexts(ids_out, mask_out, truncated)


def encode_corpus(tokenizer, corpus, cfg: Any = None, languages: Sequence[str] | None = None,
                  **overrides) -> dict[str, EncodedTexts]:
    """``encode_texts`` for every language of a ``ParallelCorpus`` with the options of ``cfg``."""
    opts = {**corpus_encoding_options(cfg, corpus), **overrides}
    langs = list(languages or corpus.languages)
    return {lang: encode_texts(tokenizer, corpus.texts[lang], **opts)
            for lang in tqdm(langs, desc="tokenize", unit="lang", disable=len(langs) < 4)}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def pad_batch(sequences: Sequence[np.ndarray], count_masks: Sequence[np.ndarray] | None = None, *,
              pad_id: int = 0, padding_side: str = "right", pad_to_multiple: int = 16,
              length: int | None = None) -> dict[str, np.ndarray]:
    """Pads B sequences to ``[B,S]``.

    S = ``length`` if given, else the longest sequence rounded up to ``pad_to_multiple`` (so jit
    sees few shapes). Returns input_ids [B,S] int32, attention_mask [B,S] int32, count_mask [B,S]
    bool (the given masks, or all real tokens; padding is never counted).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not sequences:
        raise ValueError("pad_batch needs at least one sequence")
    longest = max(len(s) for s in sequences)
    if length is None:
        length = _round_up(max(longest, 1), max(int(pad_to_multiple), 1))
    elif longest > length:
        raise ValueError(f"a sequence of {longest} tokens does not fit length={length}")
    b = len(sequences)
    input_ids = np.full((b, length), pad_id, dtype=np.int32)
    attention = np.zeros((b, length), dtype=np.int32)
    counted = np.zeros((b, length), dtype=bool)
    for i, seq in enumerate(sequences):
        n = len(seq)
        sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
        if count_masks is not None and len(count_masks[i]) != n:
            raise ValueError(f"row {i}: count mask of length {len(count_masks[i])} for {n} tokens")
        input_ids[i, sl] = seq
        attention[i, sl] = 1
        counted[i, sl] = True if count_masks is None else np.asarray(count_masks[i], dtype=bool)
    return {"input_ids": input_ids, "attention_mask": attention, "count_mask": counted}


def batches(encoded: EncodedTexts, batch_size: int, *, pad_id: int = 0, padding_side: str = "right",
            pad_to_multiple: int = 16, length: int | None = None, sort_by_length: bool = True
            ) -> Iterator[Batch]:
    """Fixed-size padded batches over the sequences of one language.

    sort_by_length: longest first (less padding; any out-of-memory shows on the first batch); rows
        map back to sequences through ``seq_index``.
    The last batch is filled with dummy rows (``valid`` False, ``seq_index`` -1): one attended pad
    token each, so no row is fully masked (no NaN in attention), and nothing counted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = encoded.lengths
    order = np.argsort(-lengths, kind="stable") if sort_by_length else np.arange(len(encoded))
    dummy_ids, dummy_mask = np.array([pad_id], dtype=np.int32), np.zeros(1, dtype=bool)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n_dummy = batch_size - len(idx)
        seqs = [encoded.input_ids[i] for i in idx] + [dummy_ids] * n_dummy
        masks = [encoded.count_mask[i] for i in idx] + [dummy_mask] * n_dummy
        arrays = pad_batch(seqs, masks, pad_id=pad_id, padding_side=padding_side,
                           pad_to_multiple=pad_to_multiple, length=length)
        seq_index = np.concatenate([idx, np.full(n_dummy, -1)]).astype(np.int32)
        yield Batch(arrays["input_ids"], arrays["attention_mask"], arrays["count_mask"], seq_index,
                    seq_index >= 0)

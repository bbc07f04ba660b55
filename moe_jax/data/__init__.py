"""Parallel corpora (FLORES+, Belebele, local files, a shipped corpus), language codes, tokenisation.

    from moe_jax.data import load_corpus, encode_corpus, batches
    corpus = load_corpus(config.data)                 # ParallelCorpus aligned by sentence id
    encoded = encode_corpus(tokenizer, corpus, config.data)
    for batch in batches(encoded["eng_Latn"], batch_size=8, pad_id=pad_token_id(tokenizer)): ...
"""

from moe_jax.data.corpora import (SOURCES, load_belebele, load_builtin, load_corpus, load_flores_dir,
                                  load_flores_plus, load_jsonl)
from moe_jax.data.defaults import default_config
from moe_jax.data.hub import HubAccessError
from moe_jax.data.languages import UnknownLanguageError, validate_language
from moe_jax.data.parallel import AlignmentError, CorpusError, MissingLanguageError, ParallelCorpus, Turns
from moe_jax.data.tokenize import (Batch, EncodedTexts, TokenizerError, batches, check_tokenizer,
                                   corpus_encoding_options, encode_corpus, encode_texts, encoding_options,
                                   pad_batch, pad_token_id)

__all__ = [
    "SOURCES", "load_belebele", "load_builtin", "load_corpus", "load_flores_dir", "load_flores_plus", "load_jsonl",
    "default_config", "HubAccessError", "UnknownLanguageError", "validate_language", "AlignmentError",
    "CorpusError", "MissingLanguageError", "ParallelCorpus", "Turns", "Batch", "EncodedTexts", "TokenizerError",
    "batches", "check_tokenizer", "corpus_encoding_options", "encode_corpus", "encode_texts", "encoding_options",
    "pad_batch", "pad_token_id",
]

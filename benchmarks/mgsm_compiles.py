"""Compiles of a full MGSM-shaped ``generate_until`` run through ``MoeJaxLM``, and that they do not
grow with the number of items.

    python benchmarks/mgsm_compiles.py [--languages 11] [--items 250] [--batch_size 16]

Fake requests shaped like ``mgsm_direct``: 11 languages x 250 prompts of 30-250 tokens (text from
the shipped corpus), ``max_gen_toks`` 256, MGSM's stop strings. A random model never writes them,
so the benchmark's LM subclass ends each row after a pseudo-random number of tokens instead (most
rows after 5-60 tokens, 5% at 256), derived from the row's first generated tokens. Runs once with
``--items`` and once with twice as many (fresh jit caches), on a tiny random model, and prints
compiles, compile seconds (tracing, lowering and XLA compilation) and wall time of each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zlib

import jax
import numpy as np
from lm_eval.api.instance import Instance

from moe_jax.data.corpora import load_builtin
from moe_jax.data.tiny_tokenizer import build_tiny_tokenizer
from moe_jax.eval.harness import MoeJaxLM
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

LANGS = ["bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh"]
UNTIL = ["Question:", "</s>", "<|im_end|>"]


class FakeStopLM(MoeJaxLM):
    """Ends a row after a length drawn from a hash of its first two tokens (a stand-in for a stop
    string a trained model would write)."""

    def _stopped(self, tokens, stops):
        if len(tokens) < 2:
            return False
        h = zlib.crc32(np.asarray(tokens[:2], np.int32).tobytes())
        target = 256 if h % 20 == 0 else 5 + h % 56
        return len(tokens) >= target


def prompts(tok, n_langs: int, n_items: int, seed: int = 0) -> list[str]:
    corpus = load_builtin()
    texts = [t for lang in corpus.languages for t in corpus.texts[lang]]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_langs * n_items):
        n = int(np.clip(rng.lognormal(np.log(90), 0.5), 30, 250))
        ids: list[int] = []
        while len(ids) < n:
            ids += tok.encode(" " + texts[rng.integers(len(texts))])
        out.append("Question: " + tok.decode(ids[:n - 4]) + "\nAnswer:")
    return out


def run(model_dir: str, contexts: list[str], batch_size: int) -> dict:
    jax.clear_caches()
    lm = FakeStopLM(pretrained=model_dir, batch_size=batch_size)
    kwargs = {"until": UNTIL, "do_sample": False, "temperature": 0.0}
    reqs = [Instance("generate_until", {}, (c, dict(kwargs)), i) for i, c in enumerate(contexts)]
    t = time.perf_counter()
    lm.generate_until(reqs, disable_tqdm=True)
    return {**lm.stats, "wall_s": time.perf_counter() - t}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--languages", type=int, default=len(LANGS))
    ap.add_argument("--items", type=int, default=250)
    ap.add_argument("--batch_size", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tok = build_tiny_tokenizer(d)
        cfg = tiny_hf_config("qwen3_moe", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, max_position_embeddings=1024)
        write_random_hf_checkpoint(d, cfg, seed=0)
        lengths = [len(tok.encode(c)) for c in prompts(tok, args.languages, args.items)]
        print(f"device={jax.devices()[0].device_kind} cpus={os.cpu_count()} prompts: {args.languages} x "
              f"{args.items}, {min(lengths)}-{max(lengths)} tokens (median {int(np.median(lengths))}), "
              f"max_gen_toks 256, batch {args.batch_size}")
        for scale in (1, 2):
            s = run(d, prompts(tok, args.languages, scale * args.items), args.batch_size)
            print(f"items x{scale}: {args.languages * scale * args.items} prompts, {s['batches']} batches, "
                  f"compiles {s['compiles']}, compile {s['compile_seconds']:.1f} s, wall {s['wall_s']:.1f} s, "
                  f"prompt padding {s['padded_fraction']:.1%}")


if __name__ == "__main__":
    main()

"""Cost of collecting hidden-state summaries beside routing (``collect.hidden_states``): time per
language and stored bytes, against routing-only collection of the same texts in the same process.

    python benchmarks/hidden_collection.py [--models demo,medium] [--seqs 64] [--seq-len 128] [--batch 8]

Random weights and token ids (only cost is measured); models as in ``collect_throughput.py``. Each
step is compiled on a first batch, then one language of ``--seqs`` sequences is timed for each
setting, alternating three times (the median is printed). Bytes: the ``.npz`` a language file would
hold (``np.savez`` of the arrays). Also prints the size the reduced form takes for the released
Qwen3-30B-A3B over FLORES+ (48 layers, 1012 sentences, 256 dimensions).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import sharding as shd
from moe_jax.convert.tiny import tiny_hf_config
from moe_jax.data.tokenize import EncodedTexts
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import init_params
from moe_jax.routing import collect, hidden_statistics

MODELS = {
    "demo": lambda: tiny_hf_config("qwen2_moe", vocab_size=512, num_hidden_layers=8, mlp_only_layers=[1]),
    "medium": lambda: tiny_hf_config("olmoe", vocab_size=32000, hidden_size=512, num_hidden_layers=8,
                                     num_attention_heads=8, num_key_value_heads=8, intermediate_size=256,
                                     num_experts=16, num_experts_per_tok=2, max_position_embeddings=4096),
}


def npz_bytes(arrays) -> int:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return len(buf.getvalue())


def measure(name: str, seqs: int, seq_len: int, batch: int) -> dict:
    cfg = ModelConfig.from_hf(MODELS[name]())
    mesh = shd.make_mesh({"data": -1, "model": 1})
    params = jax.device_put(jax.tree.map(jnp.asarray, init_params(cfg, seed=0)), shd.param_shardings(cfg, mesh))
    rng = np.random.default_rng(0)
    texts = EncodedTexts([rng.integers(0, cfg.vocab_size, seq_len).astype(np.int32) for _ in range(seqs)],
                         [np.ones(seq_len, bool) for _ in range(seqs)], np.zeros(seqs, bool))
    sets = (rng.random((2, cfg.vocab_size)) < 0.2).astype(np.float32)
    hidden = collect.HiddenInputs(hidden_statistics.projection(cfg.hidden_size), sets)
    kw = dict(cfg=cfg, mesh=mesh, batch_size=batch, pad_to_multiple=seq_len)
    settings = {"routing only": (collect.make_collect_step(cfg, mesh), None),
                "routing + hidden states": (collect.make_collect_step(cfg, mesh, hidden_states=True), hidden)}
    first = EncodedTexts(texts.input_ids[:batch], texts.count_mask[:batch], texts.truncated[:batch])
    for step, extra in settings.values():  # compile
        collect.collect_language(step, params, first, hidden=extra, **kw)
    seconds = {k: [] for k in settings}
    sizes = {}
    for _ in range(3):
        for k, (step, extra) in settings.items():
            t = time.perf_counter()
            res = collect.collect_language(step, params, texts, hidden=extra, **kw)
            seconds[k].append(time.perf_counter() - t)
            sizes[k] = npz_bytes(res.arrays)
    return {k: (statistics.median(v), sizes[k]) for k, v in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,medium")
    ap.add_argument("--seqs", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}")
    print("| model | setting | seconds | time ratio | language file bytes | size ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models.split(","):
        res = measure(name, args.seqs, args.seq_len, args.batch)
        (t0, b0) = res["routing only"]
        for k, (t, b) in res.items():
            print(f"| {name} | {k} | {t:.3f} | {t / t0:.2f} | {b} | {b / b0:.2f} |", flush=True)
    mb = (48 + 1) * 1012 * hidden_statistics.PROJECTION_DIM * 2 / 1e6
    print(f"Qwen3-30B-A3B over FLORES+: seq_hidden [1012, 49, 256] float16 = {mb:.1f} MB per language, "
          f"seq_lens_mass [1012, 49, 2] float32 = {49 * 1012 * 2 * 4 / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

"""Routing-collection throughput (tokens/s) of random models on the local devices.

    python benchmarks/collect_throughput.py [--models demo,medium] [--seqs 64] [--seq-len 128] [--batch 8]

Models: ``demo`` (the tiny qwen2_moe of configs/demo.py, vocab 512), ``medium`` (olmoe layout,
hidden 512, 8 layers, 16 experts top-2, expert width 256 as OLMoE's ratio, vocab 32000). Random
weights and random token ids: only speed is measured. The first pass compiles; the timed pass
reuses the compiled step. ``forward only`` is the same forward reduced to one number (router
logits summed), so the difference is the cost of the statistics and the host side.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax import sharding as shd
from moe_jax.data.tokenize import EncodedTexts
from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import init_params
from moe_jax.routing import collect
from moe_jax.convert.tiny import tiny_hf_config

MODELS = {
    "demo": lambda: tiny_hf_config("qwen2_moe", vocab_size=512, num_hidden_layers=8, mlp_only_layers=[1]),
    "medium": lambda: tiny_hf_config("olmoe", vocab_size=32000, hidden_size=512, num_hidden_layers=8,
                                     num_attention_heads=8, num_key_value_heads=8, intermediate_size=256,
                                     num_experts=16, num_experts_per_tok=2, max_position_embeddings=4096),
}


def measure(name: str, seqs: int, seq_len: int, batch: int, dtype: str, backend: str) -> float:
    cfg = ModelConfig.from_hf(MODELS[name]())
    mesh = shd.make_mesh({"data": -1, "model": 1})
    params = jax.device_put(jax.tree.map(lambda x: jnp.asarray(x, dtype), init_params(cfg, seed=0)),
                            shd.param_shardings(cfg, mesh))
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, cfg.vocab_size, seq_len).astype(np.int32) for _ in range(seqs)]
    masks = [np.ones(seq_len, bool) for _ in range(seqs)]
    step = collect.make_collect_step(cfg, mesh, backend=backend)
    kw = dict(cfg=cfg, mesh=mesh, batch_size=batch, pad_to_multiple=seq_len)
    t0 = time.perf_counter()
    collect.collect_language(step, params, EncodedTexts(ids[:batch], masks[:batch], np.zeros(batch, bool)), **kw)  # compile
    compile_s = time.perf_counter() - t0
    res = collect.collect_language(step, params, EncodedTexts(ids, masks, np.zeros(seqs, bool)), **kw)
    base = jax.jit(lambda p, x, m: forward(p, cfg, x, attention_mask=m, return_router=True, compute_logits=False,
                                           backend=backend).router_logits.sum())
    x, m = jnp.asarray(np.stack(ids[:batch])), jnp.ones((batch, seq_len), jnp.int32)
    jax.block_until_ready(base(params, x, m))
    t0 = time.perf_counter()
    for _ in range(seqs // batch):
        jax.block_until_ready(base(params, x, m))
    fwd_tps = (seqs // batch) * batch * seq_len / (time.perf_counter() - t0)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"{name:7s} params {n_params / 1e6:7.1f}M  layers {cfg.num_layers} experts {cfg.num_experts} "
          f"top-{cfg.top_k}  {seqs}x{seq_len} tokens, batch {batch}, {dtype}, {backend}: "
          f"collect {res.tokens_per_s:9.0f} tokens/s, forward only {fwd_tps:9.0f} tokens/s "
          f"(first batch incl. compile {compile_s:.1f} s)", flush=True)
    return res.tokens_per_s


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo,medium")
    p.add_argument("--seqs", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--backend", default="dense")
    a = p.parse_args()
    print(f"devices: {jax.devices()}")
    for name in a.models.split(","):
        measure(name, a.seqs, a.seq_len, a.batch, a.dtype, a.backend)


if __name__ == "__main__":
    main()

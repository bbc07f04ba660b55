"""Compile time of the forward pass (router logits on) against depth.

    python benchmarks/compile.py [--depths=6,12,24,48] [--backend=auto] [--family=olmoe]

A scaled model (hidden 256, 16 experts top-4, vocab 4096; random weights, never run), batch 4 x 64
tokens. Prints trace+lower and XLA compile seconds per depth and the ratio to the shallowest.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import param_shapes
from moe_jax.tiny import tiny_hf_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="6,12,24,48")
    p.add_argument("--backend", default="auto")
    p.add_argument("--family", default="olmoe")
    a = p.parse_args()
    print(f"jax {jax.__version__} on {jax.default_backend()}; backend {a.backend}; forward with router logits, 4 x 64 tokens")
    first = None
    for depth in (int(d) for d in a.depths.split(",")):
        cfg = ModelConfig.from_hf(tiny_hf_config(a.family, vocab_size=4096, hidden_size=256, num_hidden_layers=depth,
                                                 num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                                                 num_experts=16, num_experts_per_tok=4))
        params = param_shapes(cfg)
        ids = jax.ShapeDtypeStruct((4, 64), jnp.int32)
        fn = jax.jit(forward, static_argnames=("cfg", "return_router", "backend"))
        t0 = time.perf_counter()
        lowered = fn.lower(params, cfg, ids, ids, return_router=True, backend=a.backend)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        total = t2 - t0
        first = first or total
        print(f"{depth:3d} layers: lower {t1 - t0:5.2f} s, compile {t2 - t1:5.2f} s, total {total:5.2f} s "
              f"({total / first:4.2f}x of {a.depths.split(',')[0]} layers)", flush=True)


if __name__ == "__main__":
    main()

"""Compile time of the forward pass (router logits on) against depth.

    python benchmarks/compile.py [--depths=6,12,24,48] [--backend=auto] [--family=olmoe]

A scaled model (hidden 256, 16 experts top-4, vocab 4096; random weights, never run), batch 4 x 64
tokens. Prints trace+lower and XLA compile seconds per depth, the ratio to the shallowest and the
lowered program's size; ``--unrolled`` compiles the unrolled layer loop instead of the scan (the
reference path, whose program grows with depth). Goal: deepest <= 1.5x the shallowest.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig
from moe_jax.models.decoder import forward
from moe_jax.models.params import param_shapes
from moe_jax.convert.tiny import tiny_hf_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="6,12,24,48")
    p.add_argument("--backend", default="auto")
    p.add_argument("--family", default="olmoe")
    p.add_argument("--unrolled", action="store_true", help="unrolled layers (scan_layers=False)")
    a = p.parse_args()
    layers = "unrolled" if a.unrolled else "scanned"
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); backend {a.backend}; "
          f"forward with router logits, 4 x 64 tokens; {layers} layers")
    depths = [int(d) for d in a.depths.split(",")]
    first = total = None
    # the first, untimed: one-off process warm-up, at another depth (the same one would hit jit's cache)
    for i, depth in enumerate([depths[0] + 1] + depths):
        cfg = ModelConfig.from_hf(tiny_hf_config(a.family, vocab_size=4096, hidden_size=256, num_hidden_layers=depth,
                                                 num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                                                 num_experts=16, num_experts_per_tok=4))
        params = param_shapes(cfg)
        ids = jax.ShapeDtypeStruct((4, 64), jnp.int32)
        fn = jax.jit(forward, static_argnames=("cfg", "return_router", "backend", "scan_layers"))
        t0 = time.perf_counter()
        lowered = fn.lower(params, cfg, ids, ids, return_router=True, backend=a.backend, scan_layers=not a.unrolled)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
        if i == 0:
            continue
        total = t2 - t0
        first = first or total
        print(f"{depth:3d} layers: lower {t1 - t0:5.2f} s, compile {t2 - t1:5.2f} s, total {total:5.2f} s "
              f"({total / first:4.2f}x of {depths[0]} layers), program {len(lowered.as_text()) / 1e3:.0f} kB",
              flush=True)
    print(f"ratio {depths[-1]} / {depths[0]} layers: {total / first:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()

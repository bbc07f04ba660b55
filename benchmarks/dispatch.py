"""Expert dispatch backends: time per MoE layer, as ratios against the dense reference.

    python benchmarks/dispatch.py [--tokens 4096] [--shape olmoe|qwen3|phi|tiny] [--dtype bfloat16]
                                  [--backends dense,grouped,tokamax,ragged]

Prints milliseconds per call and the speed-up of each backend over ``dense`` (same process, same
inputs, compiled once, median of repeats). Results also checked equal to ``dense``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.models import experts

# (hidden, expert width, experts, top-k) of the released models.
SHAPES = {"olmoe": (2048, 1024, 64, 8), "qwen3": (2048, 768, 128, 8), "phi": (4096, 6400, 16, 2),
          "tiny": (256, 128, 16, 4)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backends", default=",".join(experts.available_backends()),
                    help="comma-separated; dense first (the reference); ragged is very slow on CPU")
    args = ap.parse_args()
    H, F, E, k = SHAPES[args.shape]
    dt = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(args.tokens, H)), dt)
    ex = {n: jnp.asarray(rng.normal(size=s) * 0.02, dt)
          for n, s in (("gate", (E, H, F)), ("up", (E, H, F)), ("down", (E, F, H)))}
    w, idx = jax.lax.top_k(jax.nn.softmax(jnp.asarray(rng.normal(size=(args.tokens, E)), jnp.float32)), k)
    useful = 2 * 3 * args.tokens * k * H * F
    print(f"device={jax.devices()[0].device_kind} shape={args.shape} T={args.tokens} H={H} F={F} E={E} k={k} "
          f"dtype={args.dtype}")
    times, ref = {}, None
    for name in args.backends.split(","):
        fn = jax.jit(lambda x, idx, w, ex, name=name: experts.dispatch(x, idx, w, ex, name))
        y = fn(x, idx, w, ex).block_until_ready()
        ref = y if ref is None else ref
        err = float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref.astype(jnp.float32))))
        ts = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn(x, idx, w, ex).block_until_ready()
            ts.append(time.perf_counter() - t)
        times[name] = float(np.median(ts))
        print(f"{name:8s} {times[name] * 1e3:9.2f} ms  {useful / times[name] / 1e12:7.3f} useful TFLOP/s  "
              f"max|diff vs dense| {err:.2e}")
    for name, t in times.items():
        print(f"speed-up of {name} over dense: {times['dense'] / t:.2f}x")


if __name__ == "__main__":
    main()

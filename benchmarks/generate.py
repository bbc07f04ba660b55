"""Greedy generation speed: moe_jax ``generate`` (KV cache, one jitted program) against transformers
``generate`` on the same random weights and prompts, in the same process.

    python benchmarks/generate.py [--config=scaled|olmoe|qwen3] [--batches=8,32] [--prompt-len=32]
                                  [--new-tokens=32] [--dtype=float32|bfloat16] [--layers=N]

``scaled`` (default, about a minute on 2 CPU cores): OLMoE's layout scaled down (hidden 384,
6 layers, 32 experts top-4, vocab 8192). ``olmoe`` / ``qwen3``: the released OLMoE-1B-7B and
Qwen3-30B-A3B shapes, for a GPU (``--layers`` cuts the depth to fit memory). Prompts are random
ids, left-padded to ``prompt-len`` with lengths between half and all of it; both sides produce
exactly ``new-tokens`` tokens per row (no stop token; transformers with ``min_new_tokens``), so
tokens/s count the same work. transformers runs eager attention and eager experts, as the
parity tests do. Each side runs once untimed first (moe_jax compiles, torch warms up), then the
best of ``--repeats`` interleaved timed runs counts (robust to other load on a shared machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import moe_jax
from moe_jax.convert.tiny import tiny_hf_config

CONFIGS = {
    "scaled": lambda: tiny_hf_config(
        "olmoe", vocab_size=8192, hidden_size=384, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=6, intermediate_size=192, num_experts=32, num_experts_per_tok=4,
        max_position_embeddings=4096),
    "olmoe": lambda: tiny_hf_config(  # OLMoE-1B-7B-0924
        "olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, intermediate_size=1024, num_experts=64, num_experts_per_tok=8,
        max_position_embeddings=4096),
    "qwen3": lambda: tiny_hf_config(  # Qwen3-30B-A3B
        "qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768,
        num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=40960),
}


def hf_model(hf_cfg: dict, dtype: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(**hf_cfg)
    kw = dict(dtype=getattr(torch, dtype), attn_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_config(config, experts_implementation="eager", **kw)
    except TypeError:  # transformers v4
        model = AutoModelForCausalLM.from_config(config, **kw)
    return model.to(device).eval()


def prompts(vocab: int, batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (batch, length))
    mask = np.zeros((batch, length), np.int64)
    for row, n in enumerate(rng.integers(length // 2, length + 1, batch)):
        mask[row, length - n:] = 1
    return np.where(mask == 1, ids, 0), mask


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="scaled", choices=sorted(CONFIGS))
    p.add_argument("--batches", default="8,32")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per side; the best counts")
    a = p.parse_args()
    hf_cfg = CONFIGS[a.config]()
    if a.layers:
        hf_cfg["num_hidden_layers"] = a.layers
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"jax devices: {jax.devices()}; torch device: {device}, threads {torch.get_num_threads()}")
    ref = hf_model(hf_cfg, a.dtype, device)
    with tempfile.TemporaryDirectory() as d:  # same weights through the ordinary loading path
        ref.save_pretrained(os.path.join(d, "hf"))
        model = moe_jax.load(os.path.join(d, "hf"), dtype=a.dtype)
    cfg, n = model.cfg, a.new_tokens
    n_params = sum(x.size for x in jax.tree.leaves(model.param_tree))
    print(f"{a.config}: {n_params / 1e6:.1f}M params, {cfg.num_layers} layers, {cfg.num_experts} experts "
          f"top-{cfg.top_k}, hidden {cfg.hidden_size}, vocab {cfg.vocab_size}, {a.dtype}; prompts of "
          f"<= {a.prompt_len} tokens (left-padded), {n} new tokens per row, greedy")
    for batch in (int(b) for b in a.batches.split(",")):
        ids, mask = prompts(cfg.vocab_size, batch, a.prompt_len)

        def run_jax():
            return np.asarray(model.generate(ids, mask, max_new_tokens=n, stop_token_ids=[]).tokens)

        def run_hf():
            with torch.no_grad():
                out = ref.generate(input_ids=torch.tensor(ids, device=device),
                                   attention_mask=torch.tensor(mask, device=device), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0)
            return out[:, ids.shape[1]:].cpu().numpy()

        _, first = timed(run_jax)
        run_hf()  # warm-up: torch's first generate call pays one-time setup
        t_jax = t_hf = float("inf")
        for _ in range(a.repeats):  # interleaved, so both sides see the same background load
            got, t = timed(run_jax)
            t_jax = min(t_jax, t)
            want, t = timed(run_hf)
            t_hf = min(t_hf, t)
        first -= t_jax
        assert got.shape == want.shape == (batch, n)
        tps_jax, tps_hf = batch * n / t_jax, batch * n / t_hf
        print(f"batch {batch:3d}: moe_jax {tps_jax:8.1f} new tokens/s, transformers {tps_hf:8.1f} new tokens/s, "
              f"ratio {tps_jax / tps_hf:5.2f}x; moe_jax compile {first:.1f} s; "
              f"greedy tokens equal {np.mean(got == want):.3f}", flush=True)


if __name__ == "__main__":
    main()

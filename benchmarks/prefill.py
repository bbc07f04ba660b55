"""Prefill speed: moe_jax's forward with router logits (each dispatch backend) and routing collection
against transformers' forward with router logits (eager experts and its fastest experts
implementation), in the same process, on the same weights and tokens; plus compiled / useful FLOPs.

    python benchmarks/prefill.py [--size=scaled|real] [--layouts=olmoe,qwen3,phi] [--batch=8]
                                 [--seq=128] [--dtype=float32|bfloat16] [--backends=...] [--layers=N]

``scaled`` (default, 1-2 minutes on 2 CPU cores): each released layout's expert count, top-k and
routing rule with hidden 512 and 4 layers. ``real``: the released OLMoE-1B-7B, Qwen3-30B-A3B and
Phi-3.5-MoE shapes, for a GPU (``--layers`` cuts the depth to fit memory). Tokens are random ids,
left-padded, lengths between half and all of ``--seq``. Each side runs once untimed (compile /
warm-up), then the best of ``--repeats`` interleaved runs counts (robust to other load).

FLOPs: "useful" counts every matmul the model needs with each token's k experts only (attention
over the full S x S scores, as both sides compute it); "compiled" is the matmul FLOPs of XLA's
optimised program with loop bodies counted by trip count (``benchmarks/flops.py``); ``grouped``'s
loops over experts and chunks have data-dependent trip counts, so its expert matmuls count as
``6 * hidden * width`` per row its loops ran (counted inside them, on this forward's routing) and
the rest of its program from the HLO; "xla" is XLA's own ``cost_analysis()['flops']``, which
counts a loop body once (so it undercounts ``grouped``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import moe_jax
from moe_jax import sharding as shd
from moe_jax.models import experts
from moe_jax.models.decoder import forward
from moe_jax.routing import collect
from moe_jax.convert.tiny import tiny_hf_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import compiled_flops  # noqa: E402
from harness import best_of, tokens  # noqa: E402

SCALED = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, max_position_embeddings=4096)
# (scaled, real): config.json dicts. Phi without LongRoPE: past the original length transformers
# 5.23 keeps the short factors, moe_jax switches (README), and the logits check would differ.
LAYOUTS = {
    "olmoe": (
        lambda: tiny_hf_config("olmoe", **SCALED, num_attention_heads=8, num_key_value_heads=8,
                               intermediate_size=256, num_experts=64, num_experts_per_tok=8),
        lambda: tiny_hf_config("olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16,
                               num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024,
                               num_experts=64, num_experts_per_tok=8, max_position_embeddings=4096)),
    "qwen3": (
        lambda: tiny_hf_config("qwen3_moe", **SCALED, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
                               intermediate_size=1024, moe_intermediate_size=128, num_experts=128,
                               num_experts_per_tok=8),
        lambda: tiny_hf_config("qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=48,
                               num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
                               moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                               max_position_embeddings=40960)),
    "phi": (
        lambda: tiny_hf_config("phimoe", **SCALED, num_attention_heads=8, num_key_value_heads=2,
                               intermediate_size=800, num_local_experts=16, num_experts_per_tok=2, rope_scaling=None),
        lambda: tiny_hf_config("phimoe", vocab_size=32064, hidden_size=4096, num_hidden_layers=32,
                               num_attention_heads=32, num_key_value_heads=8, intermediate_size=6400,
                               num_local_experts=16, num_experts_per_tok=2, max_position_embeddings=131072,
                               rope_scaling=None)),
}


def useful_flops(cfg, batch: int, seq: int) -> float:
    """Matmul FLOPs of the forward with each token's k experts only (logits included)."""
    H, D, N, K = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    per_token = 2 * H * (N * D + 2 * K * D) + 2 * N * D * H + 2 * 2 * seq * N * D  # projections, scores, values
    layer = [per_token + (2 * H * cfg.num_experts + cfg.top_k * 6 * H * cfg.expert_width
                          + 6 * H * (cfg.shared_expert_width or 0) + (2 * H if cfg.shared_expert_width else 0))
             if moe else per_token + 6 * H * cfg.dense_width for moe in cfg.moe_layers]
    return batch * seq * (sum(layer) + 2 * H * cfg.vocab_size)


def grouped_expert_flops(params, cfg, ids, mask) -> float:
    """Expert matmul FLOPs ``grouped`` runs in one forward: the rows its chunk loops count, every layer."""
    rows = []

    def counted(x, idx, w, p, act):
        y, n = experts.grouped_expert_rows(x, idx, w, p, act)
        jax.debug.callback(lambda n: rows.append(int(n)), n)
        return y
    experts.BACKENDS["grouped_counted"] = counted  # a temporary backend name: a fresh trace of forward
    try:
        forward(params, cfg, ids, mask, return_router=True, backend="grouped_counted").logits.block_until_ready()
        jax.effects_barrier()
    finally:
        del experts.BACKENDS["grouped_counted"]
    return 6.0 * cfg.hidden_size * cfg.expert_width * sum(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="scaled", choices=["scaled", "real"])
    p.add_argument("--layouts", default="olmoe,qwen3,phi")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--backends", default=None, help="default: every available backend but ragged on CPU")
    p.add_argument("--layers", type=int, default=None, help="override num_hidden_layers")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backends = a.backends.split(",") if a.backends else [
        b for b in experts.available_backends() if not (jax.default_backend() == "cpu" and b in ("ragged", "tokamax"))]
    print(f"jax {jax.default_backend()} {jax.devices()[0].device_kind}; torch {device}, {torch.get_num_threads()} "
          f"threads; {a.dtype}; batch {a.batch} x seq {a.seq} (left-padded); auto -> {experts.resolve('auto')}")
    for layout in a.layouts.split(","):
        hf_cfg = LAYOUTS[layout][a.size == "real"]()
        if a.layers:
            hf_cfg["num_hidden_layers"] = a.layers
        torch.manual_seed(0)
        ref = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_cfg), dtype=getattr(torch, a.dtype),
                                               attn_implementation="eager").to(device).eval()
        with tempfile.TemporaryDirectory() as d:
            ref.save_pretrained(os.path.join(d, "hf"))
            model = moe_jax.load(os.path.join(d, "hf"), dtype=a.dtype, load_tokenizer=False)
        cfg, params = model.cfg, model.param_tree
        ids, mask = tokens(cfg.vocab_size, a.batch, a.seq)
        jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
        tids, tmask = torch.tensor(ids, device=device, dtype=torch.long), torch.tensor(mask, device=device)
        tpos = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0), device=device)  # from the mask, as moe_jax
        useful = useful_flops(cfg, a.batch, a.seq)
        print(f"\n{layout}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_experts} experts top-{cfg.top_k}"
              f" width {cfg.expert_width}, {sum(x.size for x in jax.tree.leaves(params)) / 1e6:.0f}M params; "
              f"useful {useful / 1e9:.1f} GFLOP per forward")
        fns = {}
        for b in backends:
            fwd = lambda b=b: forward(params, cfg, jids, jmask, return_router=True, backend=b).logits.block_until_ready()  # noqa: E731
            compiled = jax.jit(forward, static_argnames=("cfg", "return_router", "backend")).lower(
                params, cfg, jids, jmask, return_router=True, backend=b).compile()
            dynamic = experts.resolve(b) == "grouped"
            flops = compiled_flops(compiled, "skip" if dynamic else "raise") + (
                grouped_expert_flops(params, cfg, jids, jmask) if dynamic else 0.0)
            print(f"  moe_jax {b:8s} compiled/useful FLOPs {flops / useful:5.2f} "
                  f"(xla cost analysis {compiled.cost_analysis()['flops'] / useful:5.2f})")
            fns[f"moe_jax {b}"] = fwd
        mesh = shd.make_mesh({"data": -1, "model": 1})
        step = collect.make_collect_step(cfg, mesh)
        fns["moe_jax collect"] = lambda: jax.block_until_ready(step(params, jids, jmask, jmask))

        def hf(impl):
            def run():
                ref.set_experts_implementation(impl)
                with torch.no_grad():
                    out = ref(input_ids=tids, attention_mask=tmask, position_ids=tpos, output_router_logits=True)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out
            return run
        impls = ["eager", "grouped_mm"]
        try:
            hf("grouped_mm")()
        except Exception as e:  # noqa: BLE001  not available on this torch / device
            print(f"  transformers grouped_mm unavailable: {type(e).__name__}: {str(e)[:120]}")
            impls = ["eager", "batched_mm"]
        for impl in impls:
            fns[f"transformers {impl}"] = hf(impl)
        load = os.getloadavg()[0]
        best = best_of(fns, a.repeats)
        print(f"  (1-minute load average {load:.1f} before, {os.getloadavg()[0]:.1f} after the timed runs, "
              f"{len(os.sched_getaffinity(0))} of {os.cpu_count()} cores for this process; other processes share them)")
        fastest_hf = min(v for k, v in best.items() if k.startswith("transformers"))
        n = a.batch * a.seq
        for name, t in best.items():
            print(f"  {name:24s} {n / t:9.0f} tokens/s  {useful / t / 1e9:6.1f} useful GFLOP/s  "
                  f"{fastest_hf / t:5.2f}x of transformers' fastest", flush=True)
        ref.set_experts_implementation("eager")
        got = np.asarray(forward(params, cfg, jids, jmask, backend="auto").logits, np.float32)
        want = hf("eager")().logits.float().cpu().numpy()
        real = mask.astype(bool)
        print(f"  auto vs transformers eager logits max rel err "
              f"{np.abs(got - want)[real].max() / np.abs(want[real]).max():.1e}")


if __name__ == "__main__":
    main()

"""One device benchmark for a short accelerator session: prefill with router logits, greedy decode
and one routing-collection batch, moe_jax against transformers' fastest experts implementation on
the same random weights and tokens, in the same run; one JSON and one table.

    python -m benchmarks.device [--layouts=scaled,real] [--dtype=bfloat16] [--out=device_benchmark.json]

Layouts (``LAYOUTS``): ``scaled`` (Qwen3-30B-A3B's 128 experts top-8 and routing with hidden 512,
4 layers, vocab 8192), ``real`` (the released OLMoE-1B-7B shapes, 6.9B parameters: 14 GB in
bfloat16 per side), ``tiny`` (seconds; the test suite's smoke run). The default runs ``scaled``
and, on a GPU or TPU, ``real`` as well; on CPU ``scaled`` alone (under 3 minutes on 2 cores).

Per layout, each measurement runs once untimed (compile / warm-up), then the best of ``--repeats``
interleaved runs counts:

* ``prefill``: moe_jax's forward with router logits (``backend="auto"``) against transformers'
  forward with ``output_router_logits=True``;
* ``decode``: greedy generation of ``--new-tokens`` tokens per row after the prompt (both sides
  produce exactly that many), new tokens/s;
* ``collect``: one batch of routing collection (forward with router logits and the on-device
  statistics) against transformers' forward with router logits (what a collection on it runs).

transformers runs sdpa attention and its fastest experts implementation here (of ``grouped_mm``,
``batched_mm`` and ``eager``, timed on the prefill). Columns: tokens/s, moe_jax over transformers, peak memory (JAX: the device's
``peak_bytes_in_use`` when it reports one, else XLA's memory analysis of the compiled program:
arguments + temporaries + outputs; torch: ``max_memory_allocated`` on CUDA, blank on CPU) and
moe_jax's compile time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # transformers shares the accelerator

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.harness import best_of, tokens  # noqa: E402
from moe_jax.models import experts  # noqa: E402
from moe_jax.convert.tiny import tiny_hf_config  # noqa: E402

LAYOUTS = {
    "tiny": lambda: tiny_hf_config("qwen3_moe", vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                   moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2),
    "scaled": lambda: tiny_hf_config("qwen3_moe", vocab_size=8192, hidden_size=512, num_hidden_layers=4,
                                     num_attention_heads=8, num_key_value_heads=2, head_dim=64, intermediate_size=1024,
                                     moe_intermediate_size=128, num_experts=128, num_experts_per_tok=8,
                                     max_position_embeddings=4096),
    "real": lambda: tiny_hf_config("olmoe", vocab_size=50304, hidden_size=2048, num_hidden_layers=16,
                                   num_attention_heads=16, num_key_value_heads=16, intermediate_size=1024,
                                   num_experts=64, num_experts_per_tok=8, max_position_embeddings=4096),
}
# (batch, prompt length, new tokens) per layout
WORKLOADS = {"tiny": (2, 16, 4), "scaled": (8, 128, 16), "real": (8, 512, 32)}


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layouts", default=None, help="default: scaled on CPU, scaled,real on a GPU or TPU")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU or TPU, float32 on CPU")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="device_benchmark.json")
    return p.parse_args(argv)


def jax_peak(compiled) -> tuple[int, str]:
    """``(bytes, source)``: the device's peak when it reports one, else XLA's analysis of ``compiled``."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device"
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes), "xla"


def hf_model(hf_cfg: dict, dtype: str, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf_cfg), dtype=getattr(torch, dtype),
                                             attn_implementation="sdpa")
    return model.to(device).eval()


def fastest_experts(model, run) -> str:
    """transformers' fastest experts implementation here (``grouped_mm``, ``batched_mm``, ``eager``):
    each that runs is timed once after a warm-up run; the model is left set to the fastest."""
    times = {}
    for impl in ("grouped_mm", "batched_mm", "eager"):
        try:
            model.set_experts_implementation(impl)
            run()
        except Exception:  # noqa: BLE001  not available on this torch / device
            continue
        t0 = time.perf_counter()
        run()
        times[impl] = time.perf_counter() - t0
    best = min(times, key=times.get)
    model.set_experts_implementation(best)
    return best


def bench_layout(layout: str, dtype: str, repeats: int) -> list[dict]:
    import torch
    import moe_jax
    from moe_jax import sharding as shd
    from moe_jax.models.decoder import forward
    from moe_jax.models import generate as gen
    from moe_jax.routing import collect

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, seq, new = WORKLOADS[layout]
    ref = hf_model(LAYOUTS[layout](), dtype, device)
    with tempfile.TemporaryDirectory() as d:  # the same weights through the ordinary loading path
        ref.save_pretrained(os.path.join(d, "hf"))
        model = moe_jax.load(os.path.join(d, "hf"), dtype=dtype, load_tokenizer=False)
    cfg, params = model.cfg, model.param_tree
    ids, mask = tokens(cfg.vocab_size, batch, seq)
    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    tids, tmask = torch.tensor(ids, device=device, dtype=torch.long), torch.tensor(mask, device=device)
    tpos = torch.tensor(np.maximum(np.cumsum(mask, 1) - 1, 0), device=device)  # from the mask, as moe_jax

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def hf_prefill():
        with torch.no_grad():
            ref(input_ids=tids, attention_mask=tmask, position_ids=tpos, output_router_logits=True)
        sync()

    def hf_decode():
        with torch.no_grad():
            ref.generate(input_ids=tids, attention_mask=tmask, max_new_tokens=new, min_new_tokens=new,
                         do_sample=False, pad_token_id=0)
        sync()

    impl = fastest_experts(ref, hf_prefill)
    mesh = shd.make_mesh({"data": -1, "model": 1})
    step = collect.make_collect_step(cfg, mesh)
    programs = {}

    def compile_timed(name, lowered):
        t0 = time.perf_counter()
        programs[name] = lowered.compile()
        return time.perf_counter() - t0

    stop = jnp.zeros((0,), jnp.int32)  # no stop token: every row generates exactly ``new`` tokens
    compile_s = {
        "prefill": compile_timed("prefill", forward.lower(params, cfg, jids, jmask, return_router=True)),
        "decode": compile_timed("decode", gen._generate_jit.lower(params, cfg, jids, jmask, new, stop, 0, None,
                                                                  "auto", False)),
        "collect": compile_timed("collect", step.lower(params, jids, jmask, jmask)),
    }
    moe = {"prefill": lambda: jax.block_until_ready(programs["prefill"](params, jids, jmask)),
           "decode": lambda: jax.block_until_ready(programs["decode"](params, jids, jmask, stop, 0, None)),
           "collect": lambda: jax.block_until_ready(programs["collect"](params, jids, jmask, jmask))}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = best_of({**{f"moe_jax {k}": v for k, v in moe.items()}, "hf prefill": hf_prefill, "hf decode": hf_decode},
                   repeats)
    hf_peak = int(torch.cuda.max_memory_allocated()) if device == "cuda" else None
    rows = []
    for task, hf_key, n in (("prefill", "hf prefill", batch * seq), ("decode", "hf decode", batch * new),
                            ("collect", "hf prefill", batch * seq)):
        peak, source = jax_peak(programs[task])
        rows.append(dict(layout=layout, task=task, batch=batch, seq=seq, new_tokens=new, dtype=dtype,
                         tokens_per_s=n / best[f"moe_jax {task}"], hf_tokens_per_s=n / best[hf_key],
                         ratio=best[hf_key] / best[f"moe_jax {task}"], jax_peak_bytes=peak, jax_peak_source=source,
                         hf_peak_bytes=hf_peak, compile_s=compile_s[task], hf_experts=impl,
                         backend=experts.resolve("auto")))
    return rows


def table(rows: list[dict], device: str) -> str:
    GiB = 1024 ** 3
    out = [f"device: {device}",
           "| layout | task | batch x seq (+new) | dtype | moe_jax tok/s | transformers tok/s (experts) | ratio | "
           "JAX peak GiB | torch peak GiB | compile s |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        hf_peak = "" if r["hf_peak_bytes"] is None else f"{r['hf_peak_bytes'] / GiB:.2f}"
        out.append(f"| {r['layout']} | {r['task']} | {r['batch']} x {r['seq']}"
                   f"{' (+' + str(r['new_tokens']) + ')' if r['task'] == 'decode' else ''} | {r['dtype']} | "
                   f"{r['tokens_per_s']:.0f} | {r['hf_tokens_per_s']:.0f} ({r['hf_experts']}) | {r['ratio']:.2f} | "
                   f"{r['jax_peak_bytes'] / GiB:.2f} ({r['jax_peak_source']}) | {hf_peak} | {r['compile_s']:.1f} |")
    return "\n".join(out)


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"CPU, {len(os.sched_getaffinity(0))} cores (jax cpu)"
    return f"{d.device_kind} ({d.platform}), {jax.device_count()} device(s)"


def main(argv=None) -> dict:
    a = _args(argv)
    accel = jax.default_backend() != "cpu"
    layouts = (a.layouts or ("scaled,real" if accel else "scaled")).split(",")
    dtype = a.dtype or ("bfloat16" if accel else "float32")
    unknown = [x for x in layouts if x not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; known: {sorted(LAYOUTS)}")
    t0 = time.perf_counter()
    rows = [r for layout in layouts for r in bench_layout(layout, dtype, a.repeats)]
    result = {"device": device_name(), "jax": jax.__version__, "seconds": time.perf_counter() - t0, "rows": rows}
    text = table(rows, result["device"])
    print(text, flush=True)
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    return result


if __name__ == "__main__":
    main()

"""The memory planner's per-device estimates against XLA's memory analysis of the programs the stages
compile, for the released configs (configs/*.py) at two workloads, on 1 or 8 devices (simulated
CPU devices here): the table of docs/tpu.md.

    python benchmarks/plan_vs_xla.py [--devices=1|8] [--models=olmoe,qwen15,qwen3,phi,gptoss] [--json=FILE]

Everything is compiled ahead of time from shapes (nothing is allocated, no checkpoint is read):
each model's ``config.json`` values are the released ones (tests/helpers/released.py). The
mesh is the config's (``mesh.shape``: the whole mesh on the model axis for Qwen3-30B-A3B and
Phi-3.5-MoE, on the data axis for the others) with the default sharding rules. Workloads: ``study``
(the config's collect batch, eval batch 8, 512 tokens, 256 generated) and ``long`` (batch 8 of
2048 tokens, 256 generated).
"""

from __future__ import annotations

import argparse
import os
import sys


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--workloads", default="study,long")
    ap.add_argument("--json", default="")
    return ap.parse_args(argv)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# short name: (config file, name in tests.helpers.released.RELEASED)
MODELS = {
    "olmoe": ("olmoe_1b7b_instruct.py", "OLMoE-1B-7B-0125-Instruct"),
    "qwen15": ("qwen15_moe_a27b_chat.py", "Qwen1.5-MoE-A2.7B"),
    "qwen3": ("qwen3_30b_a3b.py", "Qwen3-30B-A3B"),
    "phi": ("phi35_moe_instruct.py", "Phi-3.5-MoE-instruct"),
    "gptoss": ("gpt_oss_20b.py", "gpt-oss-20b"),
}
TERMS = ("parameters", "collect", "eval", "kv_cache")


def pipeline_config(model: str):
    """The released pipeline config (configs/*.py) of ``model``; reading it downloads nothing."""
    import importlib.util
    path = os.path.join(ROOT, "configs", MODELS[model][0])
    spec = importlib.util.spec_from_file_location(f"moe_jax_config_{model}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def workload(model: str, name: str):
    from moe_jax import plan as pl
    c = pipeline_config(model)
    if name == "study":
        return pl.Workload(dtype_bytes=2, collect_batch=int(c.collect.batch_size), eval_batch=int(c.eval.batch_size),
                           seq=int(c.data.max_length), max_gen_toks=int(c.eval.max_gen_toks))
    if name == "long":
        return pl.Workload(dtype_bytes=2, collect_batch=8, eval_batch=8, seq=2048, max_gen_toks=256)
    raise ValueError(f"unknown workload {name!r}: study or long")


def compare(model: str, workload_name: str, devices: int) -> list[dict]:
    """Rows ``{model, workload, devices, mesh, term, estimate, xla, ratio}`` (bytes per device)."""
    if ROOT not in sys.path:  # the released configs' config.json dicts: the tests' helpers package
        sys.path.insert(0, ROOT)
    from tests.helpers.released import RELEASED
    from moe_jax import plan as pl
    from moe_jax import sharding as shd
    from moe_jax.models.config import ModelConfig
    c = pipeline_config(model)
    cfg = ModelConfig.from_hf(RELEASED[MODELS[model][1]][0])
    w = workload(model, workload_name)
    rules = shd.rules_from_config(c.get("mesh"))
    acc = pl.Accelerator("CPU", pl.host_ram() // devices, devices, devices)
    plan = pl.make_plan(cfg, acc, c.mesh.shape, w, rules=rules, model=model)
    rows = pl.compare_with_xla(plan, cfg, w, rules=rules)
    mesh = "x".join(f"{k}{v}" for k, v in plan.mesh.items() if v > 1) or "1"
    return [dict(model=MODELS[model][1], workload=workload_name, devices=devices, mesh=mesh, term=t, estimate=e,
                 xla=x, ratio=e / x if x else float("nan")) for t, e, x in rows]


def table(rows: list[dict]) -> str:
    GiB = 1024 ** 3
    out = ["| model | workload | devices (mesh) | term | estimate GiB | XLA GiB | estimate / XLA |",
           "|---|---|---|---|---:|---:|---:|"]
    out += [f"| {r['model']} | {r['workload']} | {r['devices']} ({r['mesh']}) | {r['term']} | {r['estimate'] / GiB:.2f} | "
            f"{r['xla'] / GiB:.2f} | {r['ratio']:.2f} |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> None:
    args = _args(argv)
    if args.devices > 1:  # before jax is imported
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={args.devices}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import json
    rows = []
    for model in args.models.split(","):
        for name in args.workloads.split(","):
            rows += compare(model, name, args.devices)
            print("\n".join(table(rows[-len(TERMS):]).splitlines()[2:]), flush=True)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

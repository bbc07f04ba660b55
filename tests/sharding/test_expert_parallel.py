"""Expert parallelism on 8 simulated CPU devices: with the experts split over the mesh's ``model``
axis, every dispatch backend gives the 1-device result and the compiled program never all-gathers
an expert weight (each device runs its own experts; only activations are summed).

XLA_FLAGS must be set before jax is imported, so the 8-device half runs this file as a script in a
subprocess and writes its results to an .npz that the test compares with an in-process run.
"""

import re
import sys

import numpy as np
import pytest
from tests.helpers.simulated_devices import run_on_devices

from moe_jax.convert.tiny import tiny_hf_config

pytestmark = pytest.mark.slow  # 8 simulated devices in a subprocess

# GPT-OSS: expert biases and the clamped activation; 8 experts top-2, hidden 32
HF = tiny_hf_config("gpt_oss", num_local_experts=8, num_experts_per_tok=2)
MESHES = {"m8": {"data": 1, "model": 8}, "d2m4": {"data": 2, "model": 4}}
BACKENDS = ("grouped", "dense")


def expert_weight_gathers(hlo: str, shapes: set[tuple[int, ...]]) -> list[str]:
    """all-gather instructions whose result is an expert weight's full shape."""
    found = []
    for m in re.finditer(r"= \w+\[([\d,]*)\][^ ]* all-gather(?:-start)?\(", hlo):
        dims = tuple(int(d) for d in m.group(1).split(",") if d)
        if dims in shapes:
            found.append(m.group(0))
    return found


def run_all(meshes: dict) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp
    from moe_jax import sharding as shd
    from moe_jax.models.config import ModelConfig
    from moe_jax.models.decoder import forward
    from moe_jax.models.params import init_params
    from moe_jax.routing import collect

    cfg = ModelConfig.from_hf(HF)
    host = jax.tree.map(jnp.asarray, init_params(cfg, seed=1))
    for lp in host["layers"]:  # routing far from uniform, so every shard gets work
        lp["moe"]["router"]["kernel"] = lp["moe"]["router"]["kernel"] * 20
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, cfg.vocab_size, (4, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] >= np.array([[0], [3], [0], [5]]), jnp.int32)
    moe = host["layers"][0]["moe"]
    # a gather of the whole layer stack [L, E, ...] or of one scanned layer's [E, ...]
    expert_shapes = {tuple(moe[n].shape[i:]) for n in ("gate", "up", "down", "gate_bias", "up_bias", "down_bias")
                     for i in (0, 1)}
    run = jax.jit(forward, static_argnames=("cfg", "return_router", "backend"))
    out = {}
    for name, shape in meshes.items():
        mesh = shd.make_mesh(shape)
        params = jax.device_put(host, shd.param_shardings(cfg, mesh))
        batch = jax.device_put((ids, mask), shd.batch_sharding(mesh))
        if name != "one":
            assert params["layers"][0]["moe"]["gate"].sharding.spec[:2] == (None, "model")  # [layers, experts, ...]
        for backend in BACKENDS:
            with jax.set_mesh(mesh):
                compiled = run.lower(params, cfg, *batch, return_router=True, backend=backend).compile()
                res = compiled(params, *batch)
            out[f"{name}/{backend}/gathers"] = np.array(len(expert_weight_gathers(compiled.as_text(), expert_shapes)))
            out[f"{name}/{backend}/logits"] = np.asarray(res.logits)
            out[f"{name}/{backend}/topk_idx"] = np.asarray(res.topk_idx)
        step = collect.make_collect_step(cfg, mesh)  # routing collection sets the mesh itself
        hlo = step.lower(params, *batch, batch[1]).compile().as_text()
        out[f"{name}/collect/gathers"] = np.array(len(expert_weight_gathers(hlo, expert_shapes)))
        if name != "one":  # control: the check sees the gather GSPMD inserts without the shard_map
            compiled = run.lower(params, cfg, *batch, return_router=True, backend="grouped").compile()
            out[f"{name}/control_gathers"] = np.array(len(expert_weight_gathers(compiled.as_text(), expert_shapes)))
    out["device_count"] = np.array(jax.device_count())
    return out


def test_expert_parallel_equals_one_device_without_gathering_weights(tmp_path):
    path = tmp_path / "ep.npz"
    run_on_devices([__file__, str(path)], 8)
    multi = dict(np.load(path))
    assert int(multi["device_count"]) == 8
    single = run_all({"one": {"data": 1, "model": 1}})
    for name in MESHES:
        assert int(multi[f"{name}/control_gathers"]) > 0, name  # the HLO check can fail
        assert int(multi[f"{name}/collect/gathers"]) == 0, name
        for backend in BACKENDS:
            assert int(multi[f"{name}/{backend}/gathers"]) == 0, (name, backend)
            np.testing.assert_array_equal(multi[f"{name}/{backend}/topk_idx"], single[f"one/{backend}/topk_idx"])
            np.testing.assert_allclose(multi[f"{name}/{backend}/logits"], single[f"one/{backend}/logits"],
                                       rtol=1e-5, atol=1e-5, err_msg=f"{name}/{backend}")


if __name__ == "__main__":
    np.savez(sys.argv[1], **run_all(MESHES))

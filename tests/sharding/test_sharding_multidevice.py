"""The same collection on 1 device and on 8 simulated CPU devices (data and model parallel).

XLA_FLAGS must be set before jax is imported, so the 8-device half runs this file as a script in a
subprocess; it writes its results to an .npz that the test compares with an in-process run.
"""

import sys

import numpy as np
import pytest
from tests.helpers.simulated_devices import run_on_devices

pytestmark = pytest.mark.slow  # 8 simulated devices in a subprocess

MESHES = {"d8": {"data": 8, "model": 1}, "d4m2": {"data": 4, "model": 2}, "d2m4": {"data": -1, "model": 4}}
BATCH = 8


def collect_all(mesh_shapes: dict, devices=None) -> dict[str, np.ndarray]:
    import jax
    import jax.numpy as jnp
    from moe_jax import sharding as shd
    from moe_jax.data.tokenize import EncodedTexts
    from moe_jax.models.config import ModelConfig
    from moe_jax.models.params import init_params
    from moe_jax.routing import collect
    from moe_jax.convert.tiny import tiny_hf_config

    cfg = ModelConfig.from_hf(tiny_hf_config("qwen2_moe"))  # 3 layers (one dense), 8 experts, top-3, shared expert
    host_params = init_params(cfg, seed=3)
    rng = np.random.default_rng(5)
    # 21 sequences: batches of 8, 8 and 5 rows; at most 16 tokens: one padded length, one compile per mesh
    ids = [rng.integers(1, cfg.vocab_size, n).astype(np.int32) for n in rng.integers(4, 17, 21)]
    masks = [np.arange(len(x)) >= 2 for x in ids]
    out = {}
    for name, shape in mesh_shapes.items():
        mesh = shd.make_mesh(shape, devices)
        tree = shd.param_shardings(cfg, mesh)
        params = jax.device_put(jax.tree.map(jnp.asarray, host_params), tree)
        if mesh.shape["model"] > 1:  # experts really are split over the model axis
            gate = params["layers"][0]["moe"]["gate"]
            assert gate.sharding.spec[:2] == (None, "model"), gate.sharding  # [layers, experts, ...]
            assert gate.addressable_shards[0].data.shape[1] == cfg.num_experts // mesh.shape["model"]
        step = collect.make_collect_step(cfg, mesh, token_topk=True)
        res = collect.collect_language(step, params, EncodedTexts(ids, masks, np.zeros(len(ids), bool)), cfg=cfg,
                                       mesh=mesh, batch_size=BATCH,
                                       pad_to_multiple=16, keep_token_topk=True)
        out.update({f"{name}/{k}": v for k, v in res.arrays.items()})
    out["device_count"] = np.array(jax.device_count())
    if jax.device_count() == 8:  # a batch that does not split over 8 data shards is refused before compiling
        try:
            shd.check_batch_size(6, shd.make_mesh({"data": 8}))
        except shd.MeshError as e:
            out["batch6_error"] = np.array(str(e))
    return out


def test_eight_devices_match_one(tmp_path):
    path = tmp_path / "multi.npz"
    run_on_devices([__file__, str(path)], 8)
    multi = dict(np.load(path))
    assert int(multi["device_count"]) == 8
    assert "batch size 6 is not divisible by the mesh's data axis (8 devices)" in str(multi["batch6_error"])
    single = collect_all({"one": {"data": -1, "model": 1}})
    for name in MESHES:
        for key, ref in single.items():
            if "/" not in key:
                continue
            key = key.split("/", 1)[1]
            got = multi[f"{name}/{key}"]
            if np.issubdtype(ref.dtype, np.floating):
                np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5, err_msg=f"{name}/{key}")
            else:
                np.testing.assert_array_equal(got, ref, err_msg=f"{name}/{key}")


if __name__ == "__main__":
    np.savez(sys.argv[1], **collect_all(MESHES))

"""Mesh construction, logical-axis rules and batch checks (single device; 8 devices in a subprocess
in test_sharding_multidevice.py)."""

import jax
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from moe_jax import distributed, sharding as shd
from moe_jax.models.config import ModelConfig
from moe_jax.models.params import logical_axes
from moe_jax.pipeline.options import DistributedOptions


def test_axis_sizes_resolve_minus_one():
    assert shd.mesh_axis_sizes({"data": -1, "model": 2}, 8) == {"data": 4, "model": 2}
    assert shd.mesh_axis_sizes({"model": -1}, 8) == {"data": 1, "model": 8}
    assert shd.mesh_axis_sizes({"data": 8}, 8) == {"data": 8, "model": 1}


@pytest.mark.parametrize("shape, n, match", [
    ({"data": -1, "tensor": 2}, 8, "unknown axis names \\['tensor'\\]"),
    ({"data": 2, "model": 2}, 8, "has 4 devices in all, but 8"),
    ({"data": -1, "model": -1}, 8, "at most one -1"),
    ({"data": -1, "model": 3}, 8, "not divisible by the fixed axes' product 3"),
    ({"data": 0}, 1, "sizes must be positive"),
])
def test_impossible_mesh(shape, n, match):
    with pytest.raises(shd.MeshError, match=match):
        shd.mesh_axis_sizes(shape, n)


def test_make_mesh_on_available_devices():
    mesh = shd.make_mesh({"data": -1, "model": 1})
    assert mesh.axis_names == ("data", "model") and mesh.devices.size == jax.device_count()
    with pytest.raises(shd.MeshError, match="devices are available"):
        shd.make_mesh({"data": jax.device_count() + 1})


def test_rules_apply_only_when_divisible():
    mesh = AbstractMesh((4, 2), ("data", "model"))
    assert shd.logical_to_spec((8, 32, 16), ("expert", "embed", "expert_mlp"), mesh) == P("model", None, None)
    # 3 experts do not split over 2: the expert width takes the model axis instead
    assert shd.logical_to_spec((3, 32, 16), ("expert", "embed", "expert_mlp"), mesh) == P(None, None, "model")
    assert shd.logical_to_spec((3, 32, 15), ("expert", "embed", "expert_mlp"), mesh) == P(None, None, None)
    assert shd.logical_to_spec((100, 32), ("vocab", "embed"), mesh) == P(None, None)
    assert shd.logical_to_spec((32,), (None,), mesh) == P(None)
    assert shd.logical_to_spec((32, 8), ("embed", "heads"), mesh, {"heads": "data"}) == P(None, "data")


def test_rules_to_unknown_mesh_axis_are_refused():
    cfg = ModelConfig.from_hf(dict(model_type="olmoe", vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=8, num_experts=4,
                                   num_experts_per_tok=2))
    mesh = shd.make_mesh({"data": -1})
    with pytest.raises(shd.MeshError, match="unknown mesh axes {'expert': 'experts'}"):
        shd.param_shardings(cfg, mesh, {"expert": "experts"})
    tree = shd.param_shardings(cfg, mesh)
    assert jax.tree.structure(tree) == jax.tree.structure(logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    assert tree["layers"][0]["moe"]["gate"].mesh is mesh


def test_batch_checks():
    mesh = AbstractMesh((4, 1), ("data", "model"))
    shd.check_batch_size(8, mesh)
    with pytest.raises(shd.MeshError, match="batch size 6 is not divisible by the mesh's data axis \\(4"):
        shd.check_batch_size(6, mesh)


def test_process_rows_single_process():
    mesh = shd.make_mesh({"data": -1})
    assert shd.process_rows(mesh, 4) == slice(0, 4)


def test_distributed_disabled_is_noop_and_bad_process_id_refused(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for dist in (None, {}, {"enabled": False, "num_processes": 2, "process_id": 1, "coordinator_address": "h:1"}):
        distributed.initialize_distributed(dist)
    assert calls == []  # disabled: jax.distributed is never initialised
    distributed.initialize_distributed({"enabled": True, "num_processes": 2, "process_id": 1, "coordinator_address": "h:1"})
    assert calls == [{"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}]
    with pytest.raises(shd.MeshError, match="process_id=2"):
        distributed.initialize_distributed({"enabled": True, "num_processes": 2, "process_id": 2,
                                    "coordinator_address": "127.0.0.1:1"})


def test_distributed_auto_detects_multihost_tpu_only(monkeypatch):
    """``distributed.enabled="auto"`` (the default) initialises jax.distributed, without coordinator
    flags, exactly in a multi-host Cloud TPU job; never on a plain CPU machine."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert DistributedOptions().enabled == "auto"
    for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                "MEGASCALE_NUM_SLICES", "TPU_SKIP_MDS_QUERY"):
        monkeypatch.delenv(var, raising=False)
    # this machine: no TPU variables, not a Cloud TPU VM (no metadata asked)
    assert not distributed.multihost_tpu_detected()
    assert not distributed.initialize_distributed(DistributedOptions()) and calls == []
    no_vm = lambda: None  # noqa: E731
    assert not distributed.multihost_tpu_detected({"TPU_WORKER_HOSTNAMES": "localhost"}, no_vm)  # one host
    assert distributed.multihost_tpu_detected({"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1", "TPU_WORKER_ID": "1"}, no_vm)
    assert distributed.multihost_tpu_detected({"TPU_PROCESS_ADDRESSES": "10.0.0.2:8476,10.0.0.3:8476"}, no_vm)
    assert distributed.multihost_tpu_detected({"MEGASCALE_NUM_SLICES": "2"}, no_vm)
    assert not distributed.multihost_tpu_detected({"MEGASCALE_NUM_SLICES": "1"}, no_vm)
    assert distributed.multihost_tpu_detected({}, lambda: "10.0.0.2,10.0.0.3")  # GCE TPU VM metadata, 2 workers
    assert not distributed.multihost_tpu_detected({"TPU_SKIP_MDS_QUERY": "1"}, lambda: "10.0.0.2,10.0.0.3")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
    monkeypatch.setenv("TPU_WORKER_ID", "0")
    assert distributed.initialize_distributed({"enabled": "auto", "coordinator_address": "", "num_processes": -1,
                                       "process_id": -1, "cpu_collectives": ""})
    assert calls == [{}]  # jax's own TPU cluster detection fills in coordinator, count and id
    assert not distributed.initialize_distributed({"enabled": "false"}) and calls == [{}]
    with pytest.raises(shd.MeshError, match="expected True, False or 'auto'"):
        distributed.initialize_distributed({"enabled": "maybe"})

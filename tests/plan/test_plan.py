"""Memory planner (moe_jax/plan.py): parameter bytes per device and activation estimates of the released
Qwen3-30B-A3B and Phi-3.5-MoE at bf16 on v5e-8 and v4-8, against hand computations written out below;
the fit decision, the smallest-mesh error, the accelerator table, the CLI and the convert stage's check."""

import fcntl
import json
import subprocess
import sys

import pytest

from benchmarks import plan_vs_xla
from moe_jax import plan as pl
from moe_jax.models.config import ModelConfig
from tests.helpers.simulated_devices import run_on_devices
from tests.helpers.released import RELEASED

GiB = 1024 ** 3
BF16 = 2
# configs/qwen3_30b_a3b.py and phi35_moe_instruct.py: collect batch 16, eval batch 8, data.max_length 512,
# eval max_gen_toks 256
WORK = pl.Workload(dtype_bytes=BF16, collect_batch=16, eval_batch=8, seq=512, max_gen_toks=256)


def qwen3_params_per_device(m):
    """Qwen3-30B-A3B, model axis m: embed [151936, 2048] and lm_head replicated (vocab/embed: no rule),
    per layer q [2048, 32*128], k/v [2048, 4*128], o [4096, 2048] split over m (4*128 = 512 divides 8),
    the routers [2048, 128], two RMSNorms [2048] and the q/k norms [128] replicated,
    experts gate/up/down [128, 2048, 768] split by expert."""
    V, H, L, D, E, W = 151936, 2048, 48, 128, 128, 768
    layer = 2 * H + (H * 4096 + 2 * H * 512 + 4096 * H) / m + 2 * D + H * E + 3 * E * H * W / m
    return (2 * V * H + H + L * layer) * BF16


def phi_params_per_device(m):
    """Phi-3.5-MoE, model axis m: LayerNorms (scale and bias) and the o bias [4096] replicated, q/k/v
    kernels and biases split over heads / kv heads (8 kv heads * 128 = 1024), router [4096, 16] replicated
    (no bias), 16 experts of width 6400, lm_head with a bias [32064] replicated."""
    V, H, L, E, W = 32064, 4096, 32, 16, 6400
    attn = (H * 4096 + 4096 + 2 * (H * 1024 + 1024) + 4096 * H) / m + H
    layer = 4 * H + attn + H * E + 3 * E * H * W / m
    return (V * H + H * V + V + 2 * H + L * layer) * BF16


@pytest.mark.parametrize("name, acc, model_axis, hand", [
    ("Qwen3-30B-A3B", "v5e-8", 8, qwen3_params_per_device(8)),
    ("Qwen3-30B-A3B", "v4-8", 4, qwen3_params_per_device(4)),
    ("Phi-3.5-MoE-instruct", "v5e-8", 8, phi_params_per_device(8)),
    ("Phi-3.5-MoE-instruct", "v4-8", 4, phi_params_per_device(4)),
])
def test_parameter_bytes_per_device_match_hand_computation(name, acc, model_axis, hand):
    cfg = ModelConfig.from_hf(RELEASED[name][0])
    accel = pl.named_accelerator(acc)
    p = pl.make_plan(cfg, accel, {"data": 1, "model": -1}, WORK)  # the configs' model_axis=-1
    assert p.mesh == {"data": 1, "model": model_axis}
    assert p.param_bytes == hand
    assert abs(p.total_params / RELEASED[name][1] - 1) < 0.01  # the published size
    assert p.param_bytes_total == p.total_params * BF16


def test_activation_estimates_match_hand_computation():
    cfg = ModelConfig.from_hf(RELEASED["Qwen3-30B-A3B"][0])
    a = pl.make_plan(cfg, pl.named_accelerator("v5e-8"), {"data": 1, "model": -1}, WORK).activations
    # 4 heads of 32 per device; 4 kv heads do not split over 8 (all 4 stay); no shared expert or dense MLP
    t = 16 * 512  # collect: 16 rows on the one data shard
    layer = 3 * 16 * 4 * 512 * 512 * 4 + 4 * t * 2048 * 4  # float32 scores x3, hidden states x4
    router = 48 * t * 128 * 4
    statistics = 48 * t * 8 * 128 * 8 + 3 * router  # two 4-byte [L, T, k, E] one-hots: larger here
    assert statistics > layer + router and a["collect"] == statistics
    t = 8 * 512  # eval: 8 rows; the float32 logits outgrow the layer
    assert a["eval"] == t * 151936 * 4
    assert a["kv_cache"] == 2 * 48 * 8 * (512 + 256) * 4 * 128 * 2


def test_activation_estimates_at_long_sequences_match_hand_computation():
    """Qwen1.5-MoE on one device at 4096 tokens: the attention peak, with the float32 copy of one
    layer's shared expert [2048, 5632] x 3, outgrows the routing statistics and the logits."""
    cfg = ModelConfig.from_hf(RELEASED["Qwen1.5-MoE-A2.7B"][0])
    w = pl.Workload(dtype_bytes=BF16, collect_batch=2, eval_batch=1, seq=4096, max_gen_toks=0)
    a = pl.make_plan(cfg, pl.named_accelerator("H100-80GB"), {"data": 1, "model": 1}, w).activations
    t = 2 * 4096
    layer = 3 * 2 * 16 * 4096 * 4096 * 4 + 4 * t * 2048 * 4 + 3 * 2048 * 5632 * 4
    router = 24 * t * 60 * 4
    assert a["collect"] == layer + router > 24 * t * 4 * 60 * 8 + 3 * router
    t = 4096
    layer = 3 * 1 * 16 * 4096 * 4096 * 4 + 4 * t * 2048 * 4 + 3 * 2048 * 5632 * 4
    assert a["eval"] == layer > t * 151936 * 4
    assert a["kv_cache"] == 2 * 24 * 1 * 4096 * 16 * 128 * 2


def test_fit_decisions_and_smallest_mesh_error():
    qwen3 = ModelConfig.from_hf(RELEASED["Qwen3-30B-A3B"][0])
    phi = ModelConfig.from_hf(RELEASED["Phi-3.5-MoE-instruct"][0])
    v5e, v4 = pl.named_accelerator("v5e-8"), pl.named_accelerator("v4-8")
    for cfg, acc in ((qwen3, v5e), (qwen3, v4), (phi, v5e), (phi, v4)):
        assert pl.make_plan(cfg, acc, {"data": 1, "model": -1}, WORK).fits
    # replicated over 8 v5e chips (16 GiB each), 57 GiB of Qwen3 weights per chip cannot fit;
    # model axis 2 and 4 leave 29.0 / 15.1 GiB of parameters, 8 is the smallest that fits
    p = pl.make_plan(qwen3, v5e, {"data": -1, "model": 1}, WORK)
    assert not p.fits and p.param_bytes == qwen3_params_per_device(1)
    with pytest.raises(pl.PlanError, match=r"does not fit v5e-8 .*mesh.shape='\{\"data\": -1, \"model\": 8\}' on "
                                           r"these devices"):
        pl.check_plan(p, qwen3, WORK)
    # one H100 cannot hold Phi-3.5-MoE (78 GiB of bf16 weights + activations): two can
    p = pl.make_plan(phi, pl.named_accelerator("H100-80GB"), {"data": -1, "model": 1}, WORK)
    assert not p.fits
    with pytest.raises(pl.PlanError, match=r"model\": 2\}' on H100-80GB-2"):
        pl.check_plan(p, phi, WORK)


def test_accelerator_table():
    v4, v5e, v5p, v6e = (pl.named_accelerator(n) for n in ("v4-8", "v5e-8", "v5p-8", "v6e-8"))
    assert (v4.devices, v4.memory, v4.hosts) == (4, 32 * GiB, 1)  # v4-8: 8 TensorCores = 4 chips
    assert (v5e.devices, v5e.memory, v5e.hosts) == (8, 16 * GiB, 1)
    assert (v5p.devices, v5p.memory) == (4, 95 * GiB)
    assert (v6e.devices, v6e.memory) == (8, 32 * GiB)
    assert pl.named_accelerator("v4-16").hosts == 2 and pl.named_accelerator("v5litepod-16").hosts == 2
    assert pl.named_accelerator("H100-80GB").devices == 1
    with pytest.raises(pl.PlanError, match="unknown accelerator 'v9-8'"):
        pl.named_accelerator("v9-8")
    with pytest.raises(pl.PlanError, match="2 per chip"):
        pl.named_accelerator("v4-3")


@pytest.mark.slow  # two processes of the CLI (its flags are defined in main: one run per process)
def test_cli_prints_plan_and_fails_with_smallest_mesh(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RELEASED["Qwen3-30B-A3B"][0]))
    base = [sys.executable, "-m", "moe_jax.plan", "--config=configs/qwen3_30b_a3b.py",
            f"--config.plan.config_json={path}"]
    ok = subprocess.run(base + ["--accelerator=v4-8"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "mesh         {'data': 1, 'model': 4}" in ok.stdout and "fits         yes" in ok.stdout
    bad = subprocess.run(base + ["--accelerator=v5e-8", "--config.mesh.shape={\"data\": -1, \"model\": 1}"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "fits         NO" in bad.stdout and "\"model\": 8}' on these devices" in bad.stdout


def test_convert_stage_refuses_before_download(tmp_path, monkeypatch):
    from moe_jax.pipeline import convert as convert_stage
    from moe_jax.pipeline.registry import default_config

    path = tmp_path / "config.json"
    path.write_text(json.dumps(RELEASED["Phi-3.5-MoE-instruct"][0]))
    c = default_config()
    c.model.update(source="hub", hub_id="microsoft/Phi-3.5-MoE-instruct")
    c.plan.update(config_json=str(path), accelerator="v5e-8")
    c.mesh.shape = {"data": -1, "model": 1}
    monkeypatch.setattr(convert_stage, "download", lambda *a, **k: pytest.fail("downloaded"))
    with pytest.raises(pl.PlanError, match="Phi-3.5-MoE-instruct \\(bfloat16\\) does not fit v5e-8"):
        convert_stage.run(c, str(tmp_path / "w"))


PLANNED_MODELS = ("olmoe", "qwen15", "qwen3", "phi", "gptoss")  # benchmarks/plan_vs_xla.py's names


@pytest.fixture(scope="module", params=[1, 8])
def xla_rows(request, tmp_path_factory, worker_id):
    """``(devices, rows)``: benchmarks/plan_vs_xla.py's rows of every model, from its CLI. Once per device
    count in the whole session (one import, each program compiled once; the xdist workers share the
    file under a lock): in this process on its one device, in a subprocess with 8 simulated devices
    (XLA_FLAGS must be set before jax is imported)."""
    devices = request.param
    # the session's temp root, shared by its xdist workers (without xdist: this process's own)
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    out = root / f"plan_vs_xla_{devices}.json"
    with open(f"{out}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            args = [f"--devices={devices}", f"--models={','.join(PLANNED_MODELS)}", f"--json={tmp}"]
            if devices == 1:
                plan_vs_xla.main(args)
            else:
                run_on_devices(["benchmarks/plan_vs_xla.py", *args], devices, timeout=1500)
            tmp.rename(out)  # complete or absent
    return devices, json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model", PLANNED_MODELS)
def test_estimates_within_25_percent_of_xla(model, xla_rows):
    """The planner's per-device parameters, collect and eval activations and KV cache against XLA's
    memory analysis of the programs the stages compile (AOT on simulated CPU devices, the config's
    mesh and default sharding rules), at the study and the long workload."""
    devices, all_rows = xla_rows
    rows = [r for r in all_rows if r["model"] == plan_vs_xla.MODELS[model][1]]
    assert {r["devices"] for r in rows} == {devices}
    assert {(r["workload"], r["term"]) for r in rows} == {(w, t) for w in ("study", "long")
                                                          for t in ("parameters", "collect", "eval", "kv_cache")}
    for r in rows:
        assert r["xla"] > 0 and abs(r["estimate"] - r["xla"]) <= 0.25 * r["xla"], r

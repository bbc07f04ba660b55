"""benchmarks/device.py in its smoke form: the tiny layout end to end on CPU (prefill with router
logits, greedy decode, one collection batch, each against transformers on the same weights), one
JSON and one table."""

import json

import pytest

from benchmarks import device  # noqa: E402


@pytest.mark.slow
def test_device_benchmark_tiny_layout_writes_json_and_table(tmp_path):
    out = tmp_path / "bench.json"
    result = device.main(["--layouts=tiny", "--repeats=1", f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["device"].startswith("CPU") and saved == json.loads(json.dumps(result))
    rows = {r["task"]: r for r in saved["rows"]}
    assert set(rows) == {"prefill", "decode", "collect"}
    batch, seq, new = device.WORKLOADS["tiny"]
    for task, r in rows.items():
        assert r["tokens_per_s"] > 0 and r["hf_tokens_per_s"] > 0 and r["compile_s"] >= 0, r
        assert r["ratio"] == pytest.approx(r["tokens_per_s"] / r["hf_tokens_per_s"]), r
        assert r["jax_peak_source"] == "xla" and r["jax_peak_bytes"] > 0 and r["hf_peak_bytes"] is None
        assert (r["batch"], r["seq"], r["new_tokens"]) == (batch, seq, new)
    table = (tmp_path / "bench.md").read_text()
    assert table.count("| tiny |") == 3 and "CPU" in table.splitlines()[0]

"""Two local processes (jax.distributed over 127.0.0.1, gloo CPU collectives) produce the same store
as one process (the stages run in-process), through the real entry point ``python -m moe_jax.launch``,
on one local workdir and on one gs:// workdir (a local GCS emulator); processes given different workdirs
are refused; when process 0 fails in work only it does, both processes stop with an error instead of
waiting for each other forever."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moe_jax.artifacts import routing_store as store
from moe_jax.pipeline import convert as convert_stage, registry as stages
from moe_jax.pipeline.hosts import workdir_problem
from tests.helpers.configs import demo_config, small_config
from tests.helpers.simulated_devices import xla_flags

# the tests that launch processes are slow (two-process runs through the command line); the rules are not

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=configs/demo.py", "--stages=convert,collect", "--config.data.languages=eng_Latn,fra_Latn,hin_Deva",
        "--config.data.max_sentences=20", "--config.collect.progress=False",
        "--config.tasks={}"]  # the task corpora's long sequences would triple each run's batches and compiles
TIMING = ("seconds", "compile_seconds", "tokens_per_s", "file_sha256")  # differ between runs


def launch(workdir, *extra, args=ARGS):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=xla_flags())
    return subprocess.Popen([sys.executable, "-m", "moe_jax.launch", *args, f"--workdir={workdir}", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def launch_two(workdir, *extra, args=ARGS, workdirs=None):
    """Processes 1 and 0 of a two-process run (in that order); ``workdirs``: one per process instead."""
    dist = [f"--config.distributed.{k}" for k in (
        "enabled=True", f"coordinator_address=127.0.0.1:{free_port()}", "num_processes=2")]
    workdirs = workdirs or (workdir, workdir)
    return [launch(workdirs[i], *dist, f"--config.distributed.process_id={i}", *extra, args=args) for i in (1, 0)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(proc, timeout=240):
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def finish_all(procs):
    try:
        return [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


@pytest.mark.slow
def test_two_processes_write_the_same_store_as_one(tmp_path, gcs_dir):
    """On one local workdir, then on one gs:// workdir (no shared filesystem: each process reads what
    process 0 published in the bucket)."""
    # the one-process reference in-process: run_stages is what the command line runs (a launch would
    # add ~7 CPU s of imports); the two-process runs are what goes through the command line
    c = small_config()
    c.data.languages, c.data.max_sentences = "eng_Latn,fra_Latn,hin_Deva", 20  # as ARGS
    stages.run_stages(c, str(tmp_path / "one"), "convert,collect")
    outs = finish_all(launch_two(tmp_path / "two"))
    assert "written to" in outs[1] and "written to" not in outs[0]  # process 0 reports, process 1 only computes
    outs = finish_all(launch_two(gcs_dir))
    assert "written to" in outs[1] and "written to" not in outs[0]

    meta1, one = store.read_store(str(tmp_path / "one" / "routing"))
    for where in (str(tmp_path / "two" / "routing"), f"{gcs_dir}/routing"):
        meta2, two = store.read_store(where)
        assert list(one) == list(two) == ["eng_Latn", "fra_Latn", "hin_Deva"], where
        assert meta1["fingerprint"] == meta2["fingerprint"]
        for lang in one:
            assert set(one[lang]) == set(two[lang])
            for key, ref in one[lang].items():
                if ref.dtype.kind == "f":  # float16 hidden states: equal float32 values may round one ulp apart
                    rtol = 2 ** -10 if ref.dtype == np.float16 else 1e-5
                    np.testing.assert_allclose(two[lang][key], ref, atol=1e-5, rtol=rtol, err_msg=f"{where} {lang}/{key}")
                else:
                    np.testing.assert_array_equal(two[lang][key], ref, err_msg=f"{where} {lang}/{key}")
            strip = lambda s: {k: v for k, v in s.items() if k not in TIMING}
            assert strip(meta1["languages"][lang]) == strip(meta2["languages"][lang])


def fail_together(procs, timeout=150):
    """Both processes exit non-zero within ``timeout`` (a hang fails the test); returns their output."""
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outs):
        assert p.returncode != 0, out[-4000:]
        # not a collective that timed out waiting for the other process (gloo on CPU; NCCL would hang)
        assert "DEADLINE_EXCEEDED" not in out, out[-4000:]
    return outs


@pytest.mark.slow
def test_writer_failure_in_convert_stops_both_processes(tmp_path):
    empty = tmp_path / "hf"  # no weights: converting fails on process 0, the only one that converts
    empty.mkdir()
    outs = fail_together(launch_two(tmp_path / "work", "--config.model.source=hf_dir", f"--config.model.hf_dir={empty}"))
    assert "has no *.safetensors file" in outs[1]  # found by process 0's preflight, before any write
    assert "WriterFailedError: process 0 failed while checking the requested stages" in outs[0]
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_writer_failure_in_collect_stops_both_processes(tmp_path):
    work = tmp_path / "work"
    convert_stage.run(demo_config(), str(work))
    (work / "routing").mkdir()
    (work / "routing" / "meta.json").write_text("{not json")  # process 0 cannot open the store
    outs = fail_together(launch_two(work, "--stages=collect", args=[a for a in ARGS if not a.startswith("--stages")]))
    assert f"{work / 'routing' / 'meta.json'} is not valid JSON" in outs[1]
    assert "WriterFailedError: process 0 failed while checking the requested stages" in outs[0]


@pytest.mark.slow
def test_different_local_workdirs_are_refused_by_every_process(tmp_path):
    """Two processes given different local workdirs (as two pod hosts with their own disks would be)
    both stop before anything is written, saying why and what to use instead."""
    works = [tmp_path / "work0", tmp_path / "work1"]
    outs = fail_together(launch_two(None, workdirs=works))
    for out in outs:
        assert "were given different workdirs" in out and "process 0: " in out and str(works[1]) in out, out[-3000:]
        assert "gs://bucket/prefix" in out
    assert not works[0].exists() and not works[1].exists()


def test_workdir_problem_rules():
    """Which (host, workdir) combinations of the processes can share one workdir."""
    same_host = [("vm0", "/w"), ("vm0", "/w")]
    two_hosts = [("vm0", "/w"), ("vm1", "/w")]
    assert workdir_problem(same_host, False) is None  # one machine, one directory
    assert workdir_problem([("vm0", "/w")], False) is None
    assert "local path" in workdir_problem(two_hosts, False) and "2 hosts (vm0, vm1)" in workdir_problem(two_hosts, False)
    assert workdir_problem(two_hosts, True) is None  # the user says it is NFS (then probed)
    assert workdir_problem([("vm0", "gs://b/w"), ("vm1", "gs://b/w")], False) is None
    assert "different workdirs" in workdir_problem([("vm0", "gs://b/w"), ("vm1", "gs://b/v")], True)
    assert "different workdirs" in workdir_problem([("vm0", "/w"), ("vm0", "/v")], True)

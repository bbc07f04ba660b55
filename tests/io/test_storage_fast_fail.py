"""A ``gs://`` workdir that cannot be reached fails within seconds, saying what was tried and what to
set (issue: about 33 s of gcsfs retries per request, minutes in all, then a raw DNS error).

The network faults are simulated on loopback only: a port with nothing listening, and a port that
accepts connections and never answers (a socket server thread that stops by itself)."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from moe_jax.pipeline import registry as stages
from moe_jax.io import reach as storage_reach
from moe_jax.errors import PreflightError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIMIT_S = 15  # the bound for the whole failure


def dead_port() -> int:
    """A loopback port with nothing listening (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers; stops by itself after ``life_s``."""

    def __init__(self, life_s: float = 30.0):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop_at = time.monotonic() + life_s
        self.held = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while time.monotonic() < self.stop_at:
            try:
                conn, _ = self.sock.accept()
                self.held.append(conn)  # read nothing, answer nothing
            except (socket.timeout, OSError):
                continue
        self.close()

    def close(self):
        self.stop_at = 0
        for c in self.held:
            c.close()
        self.sock.close()


def fails_fast(match, call=None, error=storage_reach.StorageUnreachableError):
    """``call()`` (default: probing gs://moe-jax-test/run) raises ``error`` matching ``match`` within LIMIT_S."""
    t0 = time.monotonic()
    with pytest.raises(error, match=match):
        (call or (lambda: storage_reach.check_reachable("gs://moe-jax-test/run")))()
    assert time.monotonic() - t0 < LIMIT_S


@pytest.fixture
def emulator_at(monkeypatch):
    def point(url):
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", url)
    return point


def test_nothing_listening_fails_fast_naming_the_emulator_setting(emulator_at):
    url = f"http://127.0.0.1:{dead_port()}"
    emulator_at(url)
    fails_fast(f"gs://moe-jax-test/run: could not reach the GCS emulator at STORAGE_EMULATOR_HOST={url} "
               r"\(ConnectionRefusedError.*unset STORAGE_EMULATOR_HOST")


def test_a_port_that_never_answers_fails_within_the_deadline(emulator_at):
    server = SilentServer()
    try:
        emulator_at(f"http://127.0.0.1:{server.port}")
        fails_fast(f"STORAGE_EMULATOR_HOST=http://127.0.0.1:{server.port}",
                   lambda: storage_reach.check_reachable("gs://moe-jax-test/run", timeout_s=3))
        assert server.held, "the probe never connected: the test did not simulate what it claims"
    finally:
        server.close()


def test_run_stages_refuses_an_unreachable_workdir_before_anything(emulator_at):
    emulator_at(f"http://127.0.0.1:{dead_port()}")
    from moe_jax.pipeline.registry import default_config
    fails_fast("--workdir: gs://moe-jax-test/run: could not reach the GCS emulator",
               lambda: stages.run_stages(default_config(), "gs://moe-jax-test/run", "report"), PreflightError)


def test_missing_bucket_is_named(gcs_bucket):
    with pytest.raises(storage_reach.StorageUnreachableError,
                       match="gs://no-such-bucket-7/run: bucket no-such-bucket-7 does not exist .*"
                             "--default-bucket=no-such-bucket-7"):
        storage_reach.check_reachable("gs://no-such-bucket-7/run")


def test_reachable_bucket_passes(gcs_dir):
    storage_reach.check_reachable(gcs_dir)  # an empty prefix of an existing bucket is a fine workdir
    storage_reach.check_reachable("/not/a/url")  # local paths are not probed


@pytest.mark.slow  # the launcher in its own process (a clean credential chain)
def test_no_credentials_names_the_chain_and_what_to_set(tmp_path):
    """No emulator and no credentials (the metadata server pointed at a dead loopback port, an empty
    gcloud config): the launch stops at once, naming the chain it tried and every way to fix it."""
    dead = f"127.0.0.1:{dead_port()}"
    env = {k: v for k, v in os.environ.items()
           if k not in ("STORAGE_EMULATOR_HOST", "FSSPEC_GCS_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS",
                        "TENSORSTORE_GCS_HTTP_URL", "XLA_FLAGS")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, GCE_METADATA_HOST=dead, GCE_METADATA_IP=dead,
               CLOUDSDK_CONFIG=str(tmp_path))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "moe_jax.launch", "--config=configs/demo.py",
                          "--workdir=gs://moe-jax-nowhere/run", "--stages=report"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert out.returncode != 0, out.stdout
    err = out.stderr
    assert "gs://moe-jax-nowhere/run: no usable Google credentials" in err and "GOOGLE_APPLICATION_CREDENTIALS" in err, err
    assert "metadata server" in err and "STORAGE_EMULATOR_HOST=http://127.0.0.1:PORT" in err, err
    assert "gcloud auth application-default login" in err, err
    assert took < 60, f"{took:.0f} s"  # interpreter and jax import included; the probe itself is bounded


def test_a_bad_credentials_file_is_named(tmp_path, monkeypatch):
    """gcsfs's token given as a file (``FSSPEC_GCS_TOKEN``): the probe uses that file, and names it."""
    key = tmp_path / "key.json"
    key.write_text("{not json")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("FSSPEC_GCS_TOKEN", str(key))
    fails_fast(f"gs://moe-jax-test/run: no usable Google credentials \\(tried the credentials file {key} "
               r".*GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json")

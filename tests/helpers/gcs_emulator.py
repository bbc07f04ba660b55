"""A local GCS emulator for tests: ``gcp-storage-emulator`` on 127.0.0.1, in memory, one bucket.

``start()`` runs it on a free port, waits until it answers, and points this process's clients (and
those of subprocesses it starts) at it with ``moe_jax.io.storage.use_gcs_emulator``. It fails loudly,
with the emulator's output, when it cannot start: tests of gs:// paths are never skipped.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from moe_jax.io import storage

BUCKET = "moe-jax-test"
START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable() -> str:
    """The emulator's console script of this interpreter's environment (PATH may not include it)."""
    here = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    found = here if os.path.exists(here) else shutil.which("gcp-storage-emulator")
    if found is None:
        raise RuntimeError("gcp-storage-emulator is not installed: pip install -e '.[test]'")
    return found


class Emulator:
    """A running emulator: ``url`` (http://127.0.0.1:port) and ``bucket_url`` (gs://bucket)."""

    def __init__(self, proc: subprocess.Popen, port: int, log):
        self.proc, self.port, self._log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.bucket_url = f"gs://{BUCKET}"

    def output(self) -> str:
        self._log.flush()
        with open(self._log.name, errors="replace") as f:
            return f.read()[-3000:]

    def stop(self) -> None:
        """Ends the emulator process (its own session: nothing else is signalled) and waits for it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        os.remove(self._log.name)


def start() -> Emulator:
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="gcs-emulator-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [_executable(), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory", f"--default-bucket={BUCKET}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    emu = Emulator(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            out = emu.output()
            emu.stop()
            raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(f"{emu.url}/storage/v1/b/{BUCKET}", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            out = emu.output()
            emu.stop()
            raise RuntimeError(f"gcp-storage-emulator did not serve {BUCKET} on port {port} within "
                               f"{START_TIMEOUT_S} s:\n{out}")
        time.sleep(0.1)
    storage.use_gcs_emulator(emu.url)
    return emu

"""``python -m moe_jax.launch`` runs started by tests: own process group (a kill reaches any child),
stdout and stderr into temp files (a pipe nobody reads while the test polls storage fills up and
stalls the run), waited for, or SIGKILLed from outside when a condition holds."""

import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers.simulated_devices import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT = 420


def start(args, env_extra=None):
    """``python -m moe_jax.launch *args`` on CPU from the repository root."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, XLA_FLAGS=xla_flags(), **(env_extra or {}))
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    proc = subprocess.Popen([sys.executable, "-m", "moe_jax.launch", *map(str, args)], cwd=ROOT, env=env,
                            stdout=logs[0], stderr=logs[1], text=True, start_new_session=True)
    proc.logs = logs
    return proc


def output(proc):
    """``(stdout, stderr)`` of an ended ``start``."""
    texts = []
    for f in proc.logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return texts


def ended(proc):
    """``CompletedProcess`` of a ``start``, once it ends."""
    proc.wait(timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, *output(proc))


def finish(proc):
    done = ended(proc)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def kill_when(proc, ready, what, poll=0.005):
    """SIGKILLs ``proc``'s process group as soon as ``ready()`` is true (polled every ``poll`` s)."""
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before {what}:\n{''.join(output(proc))[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    output(proc)
    assert proc.returncode == -signal.SIGKILL


def convert_cli(hf_dir, out, dtype="float32"):
    r = subprocess.run([sys.executable, "-m", "moe_jax.convert", f"--hf_dir={hf_dir}", f"--out={out}",
                        f"--dtype={dtype}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return out

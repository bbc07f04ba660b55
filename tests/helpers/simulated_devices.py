"""Runs a Python command on N simulated CPU devices in a subprocess (XLA_FLAGS must be set before jax
is imported, so multi-device halves of tests run outside the pytest process)."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The test session compiles with XLA's backend (LLVM) optimisation level 0: about a third less compile time
# for the tiny models, the same HLO (so the same FLOP counts and memory analysis), results equal up to
# rounding. tests/conftest.py sets it for the session; every subprocess a test starts gets it from here.
SESSION_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int | None = None) -> str:
    """The session's ``XLA_FLAGS``, with ``devices`` simulated CPU devices when given."""
    return SESSION_XLA_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices else "")


def run_on_devices(args: list[str], devices: int, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python *args`` with ``devices`` simulated CPU devices; fails the test with its stderr on error."""
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

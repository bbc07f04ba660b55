import os
import shutil
import tempfile
import uuid

import pytest

from tests.helpers.simulated_devices import SESSION_XLA_FLAGS

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One JAX compilation cache for the whole test session: the controller makes it before the xdist
# workers start, and the workers and every subprocess a test launches inherit it through the
# environment, so a tiny model compiled once is not compiled again in another process. Every program
# is cached (no minimum compile time or size). Compile counters still count cache hits as compiles.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller's environment, inherited as it is
    flags = os.environ.get("XLA_FLAGS", "")
    if SESSION_XLA_FLAGS not in flags:  # fast compiles (tests/helpers/simulated_devices.py)
        os.environ["XLA_FLAGS"] = f"{flags} {SESSION_XLA_FLAGS}".strip()
    if os.environ.get(_CACHE_ENV):
        return  # a cache chosen by the caller
    config._moe_jax_jax_cache = tempfile.mkdtemp(prefix="moe_jax_tests_jax_cache_")
    os.environ[_CACHE_ENV] = config._moe_jax_jax_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
    made = getattr(config, "_moe_jax_jax_cache", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
        os.environ.pop(_CACHE_ENV, None)


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first (a stable sort: each worker collects the same order): started early, the
    long ones overlap the many short ones instead of running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def gcs_bucket():
    """``gs://<bucket>`` on a local GCS emulator started for this session (clients of this process and
    of its subprocesses point at it while it runs); fails, never skips, if it cannot start."""
    from tests.helpers import gcs_emulator

    from moe_jax.io import storage

    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", *storage.EMULATOR_ENV)}
    emu = gcs_emulator.start()
    try:
        yield emu.bucket_url
    finally:
        emu.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def gcs_dir(gcs_bucket, request):
    """A fresh ``gs://`` prefix for one test."""
    return f"{gcs_bucket}/{request.node.name.replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:8]}"


# MOE_JAX_TEST_CPU_LOG=FILE appends one JSON line per test: its CPU seconds (this process and the
# subprocesses it waited for, setup + call + teardown). Unlike wall time, CPU time hardly depends on
# what else the machine runs, so it shows where the suite's time goes even on a busy machine.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get("MOE_JAX_TEST_CPU_LOG")
    if not path:
        yield
        return
    import json
    import resource

    def cpu():
        return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    before = cpu()
    yield
    with open(path, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "cpu_s": round(cpu() - before, 2)}) + "\n")

import os
import sys
import uuid

import pytest

# Test helpers (hf_reference.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def gcs_bucket():
    """``gs://<bucket>`` on a local GCS emulator started for this session (clients of this process and
    of its subprocesses point at it while it runs); fails, never skips, if it cannot start."""
    import gcs_emulator

    from moe_jax import storage

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

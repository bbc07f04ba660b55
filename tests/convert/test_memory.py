"""Peak host memory of a conversion: the output plus about one layer (measured, VmHWM in a subprocess)."""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from moe_jax.models.config import ModelConfig
from moe_jax.models.params import param_shapes
from moe_jax.convert.tiny import tiny_hf_config, write_random_hf_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MB = 2**20

# ~240 MB of float32 parameters in 8 layers of ~30 MB, so the output dominates allocator noise.
BIG = tiny_hf_config("olmoe", hidden_size=512, num_attention_heads=8, num_key_value_heads=8,
                     intermediate_size=256, num_experts=16, num_hidden_layers=8, vocab_size=1024)

SCRIPT = textwrap.dedent("""
    import json, sys
    from moe_jax.convert.checkpoint import convert_checkpoint

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

    small, big, out = sys.argv[1:4]
    convert_checkpoint(small, out + "_warmup", dtype="float32")  # imports, thread pools, first-use caches
    try:  # reset the high-water mark (Linux); else it includes the small warm-up
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    base = status("VmRSS")
    convert_checkpoint(big, out, dtype="float32")
    print(json.dumps({"base": base, "peak": status("VmHWM")}))
""")


def nbytes(tree):
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


@pytest.mark.slow  # a 240 MB conversion measured in its own process (the module's one test)
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_conversion_peak_memory_is_output_plus_about_one_layer(tmp_path):
    cfg = ModelConfig.from_hf(BIG)
    shapes = param_shapes(cfg, np.float32)
    output = nbytes(shapes)
    largest_layer = max(nbytes(run) // (stop - start) for run, (start, stop, _) in zip(shapes["layers"], cfg.layer_runs))
    assert output > 7 * largest_layer
    try:
        small = write_random_hf_checkpoint(tmp_path / "small", tiny_hf_config("olmoe"))
        big = write_random_hf_checkpoint(tmp_path / "big", BIG, num_shards=4)
        env = {**os.environ, "PYTHONPATH": REPO}
        r = subprocess.run([sys.executable, "-c", SCRIPT, small, big, str(tmp_path / "out")],
                           capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        m = json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    extra = m["peak"] - m["base"]
    print(f"output {output / MB:.0f} MB, largest layer {largest_layer / MB:.0f} MB, "
          f"peak above baseline {extra / MB:.0f} MB")
    assert extra > 0.9 * output  # the measurement sees the output being built
    # Output + about one layer (stacked expert buffers + one raw tensor), plus the orbax write
    # buffers (64 MB in flight) and allocator/thread slack; a second copy of the model exceeds it.
    assert extra < output + 2 * largest_layer + (48 + 2 * (os.cpu_count() or 1)) * MB

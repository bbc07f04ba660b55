"""lm-eval's ``moe_jax`` model on a device mesh (``data_parallel`` x ``model_parallel``) scores and
generates exactly as on one device: 4 simulated CPU devices in a subprocess (XLA_FLAGS must be set
before jax is imported)."""

import json
import os

import pytest

from tests.helpers.eval_fixtures import PASSAGES, write_tiny_model
from tests.helpers.simulated_devices import run_on_devices

pytestmark = pytest.mark.slow  # lm-eval's model on 4 simulated devices in a subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, sys
from lm_eval.api.instance import Instance
from moe_jax.eval.harness import MoeJaxLM

model_dir, passages = sys.argv[1], json.loads(sys.argv[2])
ll = [Instance("loglikelihood", {}, (p[:30], " " + p[30:]), i) for i, p in enumerate(passages)]
gen = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 10}), i) for i, p in enumerate(passages)]
out = {}
for name, kw in {"one": {}, "d2m2": {"data_parallel": 2, "model_parallel": 2}, "m4": {"model_parallel": 4}}.items():
    lm = MoeJaxLM(pretrained=model_dir, batch_size=4, **kw)
    if kw:
        leaf = lm.params["layers"][0]["moe"]["gate"]
        assert len(leaf.sharding.device_set) == 4, leaf.sharding
    out[name] = {"ll": lm.loglikelihood(ll, disable_tqdm=True), "gen": lm.generate_until(gen, disable_tqdm=True)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_tiny_model(str(tmp_path_factory.mktemp("mesh_model")))


def test_mesh_equals_one_device(model_dir):
    proc = run_on_devices(["-c", SCRIPT, model_dir, json.dumps(PASSAGES)], 4, timeout=600)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("d2m2", "m4"):
        for (a, ga), (b, gb) in zip(out["one"]["ll"], out[name]["ll"]):
            assert b == pytest.approx(a, rel=1e-5, abs=1e-5) and ga == gb
        assert out[name]["gen"] == out["one"]["gen"]


def test_bad_mesh_options(model_dir):
    from moe_jax.eval.harness import MoeJaxLM
    with pytest.raises(ValueError, match=r"data_parallel=2 x model_parallel=1 needs 2 devices; 1 are available"):
        MoeJaxLM(pretrained=model_dir, batch_size=4, data_parallel=2)
    with pytest.raises(ValueError, match=r"data_parallel must be"):
        MoeJaxLM(pretrained=model_dir, batch_size=4, data_parallel=0)

"""Bad input gets an error that names the culprit (file, line, field, value) and the fix, before
anything is written: the stage list, task files, eval and steering options, the workdir itself."""

import os
import subprocess
import sys

import pytest

from moe_jax import stages
from moe_jax.pipeline import StageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORDER = "convert,collect,eval,analyze,steer,report"


# ------------------------------------------------------------------------------------------ --stages

@pytest.mark.parametrize("spec, why", [
    ("report,report", r"\['report'\] given more than once"),
    ("report,analyze", r"out of order.*here: --stages=analyze,report"),
    ("", "no stages given"),
    ([], "no stages given"),
    ("collect,,report", "an empty stage name"),
    ("collect,repot", r"unknown stage\(s\) \['repot'\]"),
])
def test_bad_stage_lists_are_refused_with_the_valid_order(spec, why):
    with pytest.raises(StageError, match=f"(?s){why}.*stages run in this order: {ORDER}"):
        stages.parse_stages(spec)


def test_stage_lists_in_order_pass():
    assert stages.parse_stages("convert, eval,report") == ["convert", "eval", "report"]
    assert stages.parse_stages(["analyze", "steer"]) == ["analyze", "steer"]


def test_empty_stages_flag_is_refused_not_all_six(tmp_path):
    """``--stages=`` used to fall back to config.stages and run every stage."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-m", "moe_jax.launch", "--config=configs/demo.py",
                          f"--workdir={tmp_path / 'w'}", "--stages="], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "no stages given" in out.stderr and ORDER in out.stderr
    assert not (tmp_path / "w").exists()

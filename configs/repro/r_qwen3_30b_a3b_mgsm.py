"""Study R, Qwen3-30B-A3B on MGSM: math task experts, soft steering (values: _published.R).

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["r_config"]("qwen3_30b_a3b", "mgsm")

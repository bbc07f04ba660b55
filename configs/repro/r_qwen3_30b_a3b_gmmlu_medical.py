"""Study R, Qwen3-30B-A3B on Global-MMLU medical: medical task experts, hard steering.

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["r_config"]("qwen3_30b_a3b", "gmmlu_medical")

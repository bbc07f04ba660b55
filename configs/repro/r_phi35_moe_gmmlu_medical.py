"""Study R, Phi-3.5-MoE on Global-MMLU medical: medical task experts, soft steering.

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["r_config"]("phi35_moe_instruct", "gmmlu_medical")

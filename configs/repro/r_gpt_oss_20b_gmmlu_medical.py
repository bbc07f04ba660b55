"""Study R, GPT-OSS-20B on Global-MMLU medical: medical task experts, soft steering.

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["r_config"]("gpt_oss_20b", "gmmlu_medical")

"""Study U, Qwen3-30B-A3B: proportional steering towards the experts zh shares with en, lambda 0.034.

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["u_shared_config"]("zh_en")

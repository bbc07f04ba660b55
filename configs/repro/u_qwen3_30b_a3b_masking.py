"""Study U, Qwen3-30B-A3B: the exclusive experts masked in the early, middle and late layer ranges.

Values and their sources: _published.py.
"""

import os
import runpy

published = runpy.run_path(os.path.join(os.path.dirname(__file__), "_published.py"))


def get_config():
    return published["u_masking_config"]()

import os
import sys

# Test helpers (hf_reference.py) live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

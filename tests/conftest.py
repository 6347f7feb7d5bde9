import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # Makes `configs` importable as in `python -m dnn_jax.main` from ROOT.


@pytest.fixture
def tiny_config():
  from configs import tiny
  return tiny.get_config()

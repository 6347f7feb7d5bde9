import os
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # Makes `configs` importable as in `python -m dnn_jax.main` from ROOT.
# The exactness tests compare numerics, not reduced-precision rounding: on GPUs float32 matmuls
# and convolutions default to TF32 (an H100 run of models_test differed by 5e-5 relative).
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def tiny_config():
  from configs import tiny
  return tiny.get_config()

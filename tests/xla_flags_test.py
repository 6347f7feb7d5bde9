"""The command line's default XLA flags: added only where measured, never over the user's."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dnn_jax import xla_flags
from tests.conftest import ROOT

FLAG = "xla_cpu_experimental_ynn_fusion_type"
MEASURED = (0, 10)


@pytest.fixture
def fresh(monkeypatch):
  """As if JAX had not created its backends yet."""
  monkeypatch.setattr(xla_flags, "_backends_initialized", lambda: False)


def test_adds_the_measured_flag_after_existing_ones(fresh):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  added = xla_flags.apply_defaults(env, version=MEASURED)
  assert added == [f"--{FLAG}=individual_dot,eltwise,reduce"]
  assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *added]
  assert xla_flags.apply_defaults(env, version=MEASURED) == []  # Idempotent.


@pytest.mark.parametrize("own", [f"--{FLAG}=", f"--{FLAG}=individual_convolution",
                                 f"--foo --{FLAG}"])
def test_never_overrides_the_users_setting(fresh, own):
  env = {"XLA_FLAGS": own}
  assert xla_flags.apply_defaults(env, version=MEASURED) == []
  assert env["XLA_FLAGS"] == own


def test_a_longer_flag_name_is_not_the_users_setting(fresh):
  env = {"XLA_FLAGS": f"--{FLAG}_other=1"}
  assert xla_flags.apply_defaults(env, version=MEASURED)


@pytest.mark.parametrize("env,version", [
    ({"DNN_JAX_XLA_DEFAULTS": "0"}, MEASURED),  # Turned off.
    ({}, (0, 11)),  # Not measured there: XLA aborts on flags it does not know.
    ({}, None),
])
def test_adds_nothing_when_off_or_unmeasured(fresh, monkeypatch, env, version):
  monkeypatch.setattr(xla_flags, "_jaxlib_version", lambda: None)
  assert xla_flags.apply_defaults(env, version=version) == []
  assert "XLA_FLAGS" not in env


def test_adds_nothing_once_backends_exist():
  import jax
  jax.devices()  # Creates the backends in this process.
  env = {}
  assert xla_flags.apply_defaults(env, version=MEASURED) == []
  assert env == {}


def test_this_jaxlib_accepts_its_defaults_and_gradients_match(tmp_path):
  # XLA aborts on an unknown flag: check the installed jaxlib takes its defaults, and that a
  # convolution's gradients under them equal the default backend's.
  code = """
import os, sys, numpy as np
from dnn_jax import xla_flags
added = xla_flags.apply_defaults()
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (4, 8, 8, 6))
w = jax.random.normal(jax.random.key(1), (3, 3, 6, 10))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
np.save(sys.argv[1], np.concatenate([g.ravel() for g in jax.grad(conv, (0, 1))(x, w)]))
print(" ".join(added))
"""
  out = {}
  for name, defaults in (("defaults", "1"), ("plain", "0")):
    path = str(tmp_path / f"{name}.npy")
    env = dict(os.environ, DNN_JAX_XLA_DEFAULTS=defaults, XLA_FLAGS="")
    result = subprocess.run([sys.executable, "-c", code, path], cwd=ROOT, env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out[name] = (result.stdout.strip(), np.load(path))
  expected = xla_flags.CPU_DEFAULTS.get(xla_flags._jaxlib_version(), {})
  assert out["defaults"][0].split() == [f"--{k}={v}" for k, v in expected.items()]
  assert out["plain"][0] == ""
  np.testing.assert_allclose(out["defaults"][1], out["plain"][1], rtol=1e-5, atol=1e-5)

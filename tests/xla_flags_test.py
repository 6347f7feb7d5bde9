"""The command line's default XLA flags: added only where measured, never over the user's."""

import os
import subprocess
import sys

import numpy as np
import pytest

from dnn_jax import xla_flags
from tests.conftest import ROOT

pytestmark = pytest.mark.core  # Version-specific: CI runs it on the newest JAX too.

FLAG = "xla_cpu_experimental_ynn_fusion_type"
MEASURED = (0, 10)


@pytest.fixture
def fresh(monkeypatch):
  """As if JAX had not created its backends yet (and no accelerator plugin were installed)."""
  monkeypatch.setattr(xla_flags, "_backends_initialized", lambda: False)
  monkeypatch.setattr(xla_flags, "_accelerator_plugin_installed", lambda: False)


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


def test_leaves_a_flag_file_and_the_users_spacing_alone(fresh):
  env = {"XLA_FLAGS": "/etc/xla_flags.txt"}  # XLA reads a value not starting with '-' as a file.
  assert xla_flags.apply_defaults(env, version=MEASURED) == []
  assert env["XLA_FLAGS"] == "/etc/xla_flags.txt"
  env = {"XLA_FLAGS": "--a=1  --b='x  y' "}
  added = xla_flags.apply_defaults(env, version=MEASURED)
  assert env["XLA_FLAGS"] == "--a=1  --b='x  y' " .rstrip() + " " + added[0]


def test_not_where_an_accelerator_may_run(fresh):
  env = {"JAX_PLATFORMS": "cuda,cpu"}
  assert xla_flags.apply_defaults(env, version=MEASURED) == [] and "XLA_FLAGS" not in env
  env = {"JAX_PLATFORMS": "cpu"}
  assert xla_flags.apply_defaults(env, version=MEASURED)


def test_accelerator_detection_reads_jax_platforms():
  assert xla_flags._accelerator_possible({"JAX_PLATFORMS": "tpu"})
  assert not xla_flags._accelerator_possible({"JAX_PLATFORMS": "cpu"})


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


def test_this_jaxlib_accepts_its_defaults_which_change_the_program(tmp_path):
  # XLA aborts on an unknown flag: check the installed jaxlib takes its defaults, that they
  # change the compiled CPU program, and that a convolution's gradients stay the same.
  code = """
import sys, numpy as np
from dnn_jax import xla_flags
added = xla_flags.apply_defaults()
import jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (64, 32, 32, 16))  # Big enough for YNNPACK.
w = jax.random.normal(jax.random.key(1), (3, 3, 16, 16))
t = jax.random.normal(jax.random.key(2), (64, 32, 32, 16))
conv = lambda x, w, t: (t * jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))).sum()
grad = jax.jit(jax.grad(conv, (0, 1)))
np.save(sys.argv[1], np.concatenate([g.ravel() for g in grad(x, w, t)]))
with open(sys.argv[2], "w") as f:
  f.write(grad.lower(x, w, t).compile().as_text())
print(" ".join(added))
"""
  out = {}
  for name, defaults in (("defaults", "1"), ("plain", "0")):
    npy, hlo = str(tmp_path / f"{name}.npy"), tmp_path / f"{name}.hlo"
    env = dict(os.environ, DNN_JAX_XLA_DEFAULTS=defaults, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", code, npy, str(hlo)], cwd=ROOT, env=env,
                            text=True, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out[name] = (result.stdout.strip(), np.load(npy), hlo.read_text())
  expected = xla_flags.CPU_DEFAULTS.get(xla_flags._jaxlib_version(), {})
  assert out["defaults"][0].split() == [f"--{k}={v}" for k, v in expected.items()]
  assert out["plain"][0] == ""
  if expected:
    assert out["defaults"][2] != out["plain"][2]  # The flag took effect.
  # Gradients with respect to the input, then the kernel (sums over 65,536 products): equal
  # up to float32 summation order, relative to each gradient's largest entry.
  for part in (slice(0, 64 * 32 * 32 * 16), slice(64 * 32 * 32 * 16, None)):
    a, b = out["defaults"][1][part], out["plain"][1][part]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_masked_kernel_gradients_stay_out_of_ynnpack():
  # XLA:CPU fuses a kernel-gradient convolution with the mask multiply after it, and such a
  # fusion goes to YNNPACK whatever the flag says (3x slower there). CausalConv's masking
  # (models._masked) keeps them apart; a plain multiply shows the check can see the fusion.
  if not xla_flags.CPU_DEFAULTS.get(xla_flags._jaxlib_version()):
    pytest.skip("no default XLA flags for this jaxlib: every convolution may go to YNNPACK")
  code = r"""
import re
from dnn_jax import xla_flags
xla_flags.apply_defaults()
import jax, jax.numpy as jnp
from dnn_jax import models
x = jax.random.normal(jax.random.key(0), (8, 32, 32, 22))  # The paper's first stage.
t = jax.random.normal(jax.random.key(1), (8, 32, 32, 22))
mask = models.group_mask(22, 22, 22)
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"))
def ynn_convolutions(masking):  # Convolutions XLA hands to YNNPACK in the kernel gradient.
  loss = lambda w, x, t: (t * conv(x, masking(w))).sum()
  text = jax.jit(jax.grad(loss)).lower(jnp.ones((3, 3, 22, 22)), x, t).compile().as_text()
  ynn = set(re.findall(r"calls=(%[\w.]+)[^\n]*__ynn_fusion", text))
  return sum(c.count(" convolution(") for c in re.split(r"\n(?=\S)", text)
             if c.split(" ", 1)[0] in ynn)
print(ynn_convolutions(lambda w: models._masked(w, mask)),
      ynn_convolutions(lambda w: w * jnp.asarray(mask, w.dtype)))
"""
  env = dict(os.environ, DNN_JAX_XLA_DEFAULTS="1", XLA_FLAGS="", JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=120)
  assert result.returncode == 0, result.stderr
  with_barrier, plain = map(int, result.stdout.split())
  assert with_barrier == 0
  assert plain >= 1

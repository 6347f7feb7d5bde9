"""XLA flags the command line sets by default, from measurements.

On jaxlib 0.10's and 0.12's CPU backends, convolutions go to XLA's Eigen runtime instead of
YNNPACK: the train step and the grid evaluation are faster, batch-1 latency is not, so only
training and evaluation get the flag (numbers: BENCHMARKS.md, "XLA:CPU convolution flag" and
"Python 3.11, 3.12, 3.13 and JAX 0.10, 0.12"; rerun `benchmarks/cpu_conv_paths.py` and
`benchmarks/interpreters.py` before adding a jaxlib version).

XLA reads XLA_FLAGS once, when JAX first creates its backends, and aborts on a flag it does
not know: the default is applied only before that, only on the jaxlib versions it was measured
on, only where no accelerator is in use, and never over a user's own setting of the same flag
or a flag file.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

# flag name -> value, per jaxlib (major, minor) it was measured on.
CPU_DEFAULTS = {
    (0, 10): {"xla_cpu_experimental_ynn_fusion_type": "individual_dot,eltwise,reduce"},
    (0, 12): {"xla_cpu_experimental_ynn_fusion_type": "individual_dot,eltwise,reduce"},
}


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def _backends_initialized() -> bool:
  try:
    from jax._src import xla_bridge  # Not public; without it, assume too late (apply nothing).
  except ImportError:
    return True
  return getattr(xla_bridge, "backends_are_initialized", lambda: True)()


ACCELERATOR_DISTRIBUTIONS = ("libtpu", "jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")


def _accelerator_plugin_installed() -> bool:
  names = (d.metadata["Name"] or "" for d in importlib.metadata.distributions())
  return any(n.lower().startswith(ACCELERATOR_DISTRIBUTIONS) for n in names)


def _accelerator_possible(environ) -> bool:
  """Whether JAX may run on an accelerator: JAX_PLATFORMS names one, or a plugin is installed
  (libtpu parses XLA_FLAGS itself, with its own XLA version)."""
  platforms = [p.strip() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
  if platforms:
    return any(p != "cpu" for p in platforms)
  return _accelerator_plugin_installed()


def current() -> str:
  """XLA_FLAGS as this process runs with them ("" = XLA's defaults), for run records."""
  return os.environ.get("XLA_FLAGS", "")


def apply_defaults(environ=None, *, version: tuple[int, int] | None = None) -> list[str]:
  """Adds this jaxlib's measured default flags to XLA_FLAGS; returns the flags added.

  Adds nothing when JAX's backends already exist (the flags could no longer take effect),
  for a jaxlib the defaults were not measured on, when JAX_PLATFORMS names an accelerator or
  an accelerator plugin is installed, for a flag XLA_FLAGS already names, or when XLA_FLAGS
  is a flag file.
  Set DNN_JAX_XLA_DEFAULTS=0 to turn the defaults off.
  """
  environ = os.environ if environ is None else environ
  if environ.get("DNN_JAX_XLA_DEFAULTS", "1") == "0":
    return []
  defaults = CPU_DEFAULTS.get(version or _jaxlib_version(), {})
  if not defaults or _accelerator_possible(environ) or _backends_initialized():
    return []
  current = environ.get("XLA_FLAGS", "")
  if current.strip() and not current.strip().startswith("-"):
    return []  # XLA reads a value not starting with '-' as a file of flags: leave it alone.
  added = [f"--{name}={value}" for name, value in defaults.items()
           if not re.search(rf"--{name}(=|\s|$)", current)]
  if added:
    environ["XLA_FLAGS"] = " ".join(([current.rstrip()] if current.strip() else []) + added)
  return added

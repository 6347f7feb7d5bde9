"""XLA flags the command line sets by default, from measurements (BENCHMARKS.md).

JAX 0.10's CPU backend runs convolutions through YNNPACK. On this project's 2-core CPU its
train step spends over half its op time in kernel-gradient convolutions (a window as large
as the feature map) and the activation transposes they need (benchmarks/profile_step.py).
Routing convolutions back to XLA's Eigen runtime (YNNPACK keeps dots, elementwise ops and
reductions) made the train step 1.2x faster at the CPU preset and 1.45-1.5x at the paper
preset, and the all-exit grid evaluation cheaper (BENCHMARKS.md). At batch 1 the full
network's latency was 10-16% higher, so only training and evaluation get the flag.

XLA reads XLA_FLAGS once, when JAX first creates its backends, and aborts on a flag it does
not know: the default is applied only before that, only on the jaxlib versions it was measured
on, and never over a user's own setting of the same flag.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

# flag name -> value, per jaxlib (major, minor) it was measured on.
CPU_DEFAULTS = {
    (0, 10): {"xla_cpu_experimental_ynn_fusion_type": "individual_dot,eltwise,reduce"},
}


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def _backends_initialized() -> bool:
  from jax._src import xla_bridge  # Not public; without it, assume too late (apply nothing).
  return getattr(xla_bridge, "backends_are_initialized", lambda: True)()


def apply_defaults(environ=None, *, version: tuple[int, int] | None = None) -> list[str]:
  """Adds this jaxlib's measured default flags to XLA_FLAGS; returns the flags added.

  Adds nothing when JAX's backends already exist (the flags could no longer take effect),
  for a jaxlib the defaults were not measured on, or for a flag XLA_FLAGS already names.
  Set DNN_JAX_XLA_DEFAULTS=0 to turn the defaults off.
  """
  environ = os.environ if environ is None else environ
  if environ.get("DNN_JAX_XLA_DEFAULTS", "1") == "0":
    return []
  defaults = CPU_DEFAULTS.get(version or _jaxlib_version(), {})
  if not defaults or _backends_initialized():
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f"--{name}={value}" for name, value in defaults.items()
           if not re.search(rf"--{name}(=|\s|$)", current)]
  if added:
    environ["XLA_FLAGS"] = " ".join([*current.split(), *added])
  return added

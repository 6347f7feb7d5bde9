"""One sub-network compiled for an inference runtime: a callable from images to logits.

Runtimes: `jax` (XLA, always there), `onnxruntime` (the ONNX graph of `onnx_graph.py`, batch
dynamic), `iree` (the StableHLO program with its weights inside, compiled for this CPU) and
`litert` (a TFLite file converted through TensorFlow). All but `jax` compile for a fixed batch
size, as deployments do. Used by `--mode=resources` (`config.resources.runtime`), the
deployment benchmark and the export checks.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import jax
import numpy as np

RUNTIMES = ("jax", "onnxruntime", "iree", "litert")
# The Python modules each runtime needs, and the pip extra that installs them.
NEEDS = {"jax": ((), None), "onnxruntime": (("onnx", "onnxruntime"), "onnx"),
         "iree": (("iree.compiler", "iree.runtime"), "iree"),
         "litert": (("tensorflow", "ai_edge_litert"), "tflite")}


class ExtraMissing(ImportError):
  """A runtime is not installed; the message says which extra installs it."""


def importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a parent package is absent
    return False


def missing(runtime: str) -> list[str]:
  """The modules `runtime` needs that are not installed."""
  return [m for m in NEEDS[runtime][0] if not importable(m)]


def require(runtime: str, what: str) -> None:
  """Raises ExtraMissing naming the pip extra when `runtime` is not installed."""
  absent = missing(runtime)
  if absent:
    raise ExtraMissing(f"{what} needs {', '.join(absent)}: "
                       f"pip install 'dnn_jax[{NEEDS[runtime][1]}]'")


def version(dist: str) -> str | None:
  """The installed version of distribution `dist` (e.g. 'onnxruntime'), or None."""
  import importlib.metadata
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


# The training stack whose versions a run records (train summaries, benchmark JSONs).
STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")


def software() -> dict[str, str | None]:
  """Python's version and the installed version of each distribution in STACK."""
  import platform
  return {"python": platform.python_version(), **{d: version(d) for d in STACK}}


def available() -> list[str]:
  return [r for r in RUNTIMES if not missing(r)]


def compile_subnetwork(runtime: str, sub, sub_vars, image_shape, batch: int
                       ) -> Callable[[np.ndarray], np.ndarray]:
  """`sub`, `sub_vars` from `subnetwork.extract`, compiled in `runtime` for `batch` images of
  `image_shape`: a function from float32 images (NHWC, 0-255) to logits (numpy)."""
  require(runtime, f"runtime {runtime!r}")
  spec = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), np.float32)
  if runtime == "jax":
    weights = jax.device_put(sub_vars)  # once, as a deployment holds them
    fn = jax.jit(lambda v, x: sub.apply(v, x)).lower(weights, spec).compile()
    return lambda x: np.asarray(fn(weights, x))
  if runtime == "onnxruntime":
    from dnn_jax import onnx_graph
    return onnx_session(onnx_graph.build(sub, sub_vars, image_shape).SerializeToString())
  if runtime == "iree":
    program = jax.export.export(jax.jit(lambda x: sub.apply(sub_vars, x)))(spec)
    return iree_module(program.mlir_module())
  return litert_interpreter(tflite_bytes(sub, sub_vars, image_shape, batch))


def onnx_session(model: bytes | str):
  """onnxruntime on the CPU: a callable images -> logits."""
  import onnxruntime
  session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
  return lambda x: session.run(["logits"], {"images": np.asarray(x, np.float32)})[0]


def iree_module(mlir: str):
  """StableHLO text compiled by IREE for this CPU (llvm-cpu, host features): a callable."""
  import iree.compiler
  import iree.runtime
  vmfb = iree.compiler.compile_str(mlir, target_backends=["llvm-cpu"], input_type="stablehlo",
                                   extra_args=["--iree-llvmcpu-target-cpu=host"])
  module = iree.runtime.load_vm_flatbuffer(vmfb, driver="local-task")
  return lambda x: np.asarray(module.main(np.asarray(x, np.float32)).to_host())


def tflite_bytes(sub, sub_vars, image_shape, batch: int) -> bytes:
  """A static-batch TFLite flatbuffer (jax2tf, then TensorFlow's converter, built-in ops)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
  import tensorflow as tf
  from jax.experimental import jax2tf
  module = tf.Module()
  module.forward = tf.function(
      jax2tf.convert(lambda x: sub.apply(sub_vars, x), with_gradient=False),
      input_signature=[tf.TensorSpec((batch,) + tuple(image_shape), tf.float32,
                                     name="images")], autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [module.forward.get_concrete_function()], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  return converter.convert()


def litert_interpreter(model: bytes | None = None, path: str | None = None):
  """LiteRT's interpreter on all CPU cores (XNNPACK): a callable."""
  from ai_edge_litert import interpreter as litert
  interp = litert.Interpreter(model_content=model, model_path=path,
                              num_threads=os.cpu_count() or 1)
  interp.allocate_tensors()
  i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

  def run(x):
    interp.set_tensor(i, np.asarray(x, np.float32))
    interp.invoke()
    return interp.get_tensor(o).copy()
  return run

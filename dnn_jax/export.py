"""Export of one sliced sub-network for the runtimes devices use, each file checked.

Formats (`config.export.format`, comma-separated):
  stablehlo  `model.stablehlo` (jax.export, batch-polymorphic; weights as arguments, in
             `weights.npz`) and `model.mlir` (StableHLO text with the weights inside, batch
             dynamic: what IREE compiles). Needs jax and numpy only.
  onnx       `model.onnx` (opset 17, batch dynamic, BatchNorm folded; `onnx_graph.py`).
             Extra: pip install 'dnn_jax[onnx]'.
  tflite     `model_b<N>.tflite`, one static-batch file per `config.export.tflite_batch_sizes`
             (jax2tf, then TensorFlow's converter: TensorFlow is used here and nowhere else).
             Extra: pip install 'dnn_jax[tflite]'.
Images go in NHWC, float32, on the 0-255 scale (normalisation is inside every program); logits
come out. Before anything is written, every file is run in its runtime (JAX, IREE where its
extra is installed, onnxruntime, LiteRT) on a batch of images and compared with the DNNet's own
(depth, width) logits; the largest difference goes to `manifest.json`, and over
`CHECK_TOLERANCE` the export fails with nothing written. The export directory is replaced
whole (a crash leaves the old one or the new one). A gs:// directory is built and checked in a
local temporary folder, then uploaded file by file with `manifest.json` last (an object store
has no directory rename): an export with a manifest is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile

import jax
import numpy as np

from dnn_jax import files
from dnn_jax import models
from dnn_jax import runtimes
from dnn_jax import subnetwork
from dnn_jax.errors import RunError

PROGRAM, MLIR, WEIGHTS, MANIFEST, ONNX = (
    "model.stablehlo", "model.mlir", "weights.npz", "manifest.json", "model.onnx")
FORMATS = ("stablehlo", "onnx", "tflite")
CHECK_TOLERANCE = 1e-4  # max |logit difference| against the DNNet's own logits
CHECK_BATCH = 16  # images per check (random 0-255 pixels, fixed seed); ONNX also at 13
# The runtime each format is checked in (runtimes.py says which extra installs it).
RUNTIME = {"stablehlo": "jax", "onnx": "onnxruntime", "tflite": "litert"}

# How to run each format, for the manifest and README (`images`: float32 NHWC, 0-255).
USAGE = {
    "stablehlo": [
        "exp = jax.export.deserialize(bytearray(open('model.stablehlo', 'rb').read()))",
        "w = np.load('weights.npz'); m = json.load(open('manifest.json'))",
        "logits = exp.call([w[k] for k in m['weights']], images)"],
    "iree": [
        "vmfb = iree.compiler.compile_file('model.mlir', target_backends=['llvm-cpu'], "
        "input_type='stablehlo', extra_args=['--iree-llvmcpu-target-cpu=host'])",
        "module = iree.runtime.load_vm_flatbuffer(vmfb, driver='local-task')",
        "logits = module.main(images).to_host()"],
    "onnx": [
        "session = onnxruntime.InferenceSession('model.onnx')",
        "logits = session.run(['logits'], {'images': images})[0]",
        "# any batch size"],
    "tflite": [
        "interp = ai_edge_litert.interpreter.Interpreter(model_path='model_b1.tflite')",
        "interp.allocate_tensors(); i, o = interp.get_input_details()[0]['index'], "
        "interp.get_output_details()[0]['index']",
        "interp.set_tensor(i, images); interp.invoke(); logits = interp.get_tensor(o)"],
}


def require(fmt: str, what: str) -> None:
  """Raises runtimes.ExtraMissing, naming the pip extra, when `fmt`'s runtime is absent."""
  runtimes.require(RUNTIME[fmt], what)


def parse_formats(text: str) -> tuple[str, ...]:
  """'stablehlo,onnx' -> ('stablehlo', 'onnx'); ValueError naming an unknown format."""
  names = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
  unknown = [f for f in names if f not in FORMATS]
  if unknown or not names:
    raise ValueError(f"unknown format {unknown[0]!r}" if unknown else "no format given")
  return names


def check_images(image_shape, batch: int = CHECK_BATCH, seed: int = 0) -> np.ndarray:
  """Random pixels on the 0-255 scale: the images every exported file is checked on."""
  rng = np.random.default_rng(seed)
  return rng.uniform(0, 255, (batch,) + tuple(image_shape)).astype(np.float32)


def weights_digest(arrays) -> str:
  """sha256 over the sub-network's arrays: tells one model's export from another's."""
  h = hashlib.sha256()
  for a in arrays:
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def export_subnetwork(model: models.DNNet, variables: dict, depth: int, width: int,
                      image_shape, out_dir: str, metadata: dict | None = None,
                      formats=("stablehlo",), tflite_batch_sizes=(1,)) -> dict:
  """Writes the (depth, width) sub-network of the full `model` to `out_dir` in `formats`;
  returns the manifest. Raises runtimes.ExtraMissing before any work when a runtime is
  absent, and RunError when an exported file's logits differ from the DNNet's by more than
  CHECK_TOLERANCE (nothing written then)."""
  formats = tuple(formats)
  for f in formats:
    require(f, f"export format {f!r}")
  sub, sub_vars = subnetwork.extract(model, variables, depth, width)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(sub_vars)
  arrays = [np.asarray(x) for _, x in leaves]
  images = check_images(image_shape)
  # The reference: the (depth, width) cell of the full DNNet, not the extracted network, so
  # the check also covers slicing.
  expected = np.asarray(model.apply(variables, images)[:, depth - 1, width - 1])
  manifest = {
      "subnet": subnetwork.subnet_id(depth, width), "depth": depth, "width": width,
      "input": {"shape": [None] + list(image_shape), "dtype": "float32", "layout": "NHWC",
                "scale": "pixel values 0-255 (normalisation is inside the program)"},
      "output": "logits, shape (batch, num_classes)",
      "weights": [f"w{i:04d}" for i in range(len(arrays))],
      "weight_paths": [jax.tree_util.keystr(p) for p, _ in leaves],
      "num_weights": int(sum(a.size for a in arrays)),
      "weights_sha256": weights_digest(arrays),
      "jax_version": jax.__version__,
      "check": {"images": f"{len(images)} random images (0-255, seed 0)",
                "reference": "the DNNet's logits at this (depth, width)",
                "tolerance": CHECK_TOLERANCE},
      "formats": {},
      **(metadata or {}),
  }
  if files.is_remote(out_dir):  # The runtimes check local files; uploaded afterwards.
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-")
  else:
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=os.path.basename(out_dir) + ".tmp-")
  try:
    writers = {"stablehlo": _write_stablehlo, "onnx": _write_onnx, "tflite": _write_tflite}
    for f in formats:
      entry = writers[f](sub, sub_vars, arrays, treedef, image_shape, tmp, images, expected,
                         manifest, tflite_batch_sizes)
      worst = max(c["max_abs_diff"] for c in entry["checks"].values())
      if worst > CHECK_TOLERANCE:
        raise RunError(f"the exported {f} sub-network's logits differ from the DNNet's by "
                           f"{worst:.2e} (> {CHECK_TOLERANCE:g}): nothing written")
      manifest["formats"][f] = entry
    files.write_json(os.path.join(tmp, MANIFEST), manifest)
    if files.is_remote(out_dir):
      _upload_dir(tmp, out_dir)
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      _replace_dir(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _replace_dir(new: str, out: str) -> None:
  """Puts directory `new` at `out`: the old `out` is moved aside first, removed after."""
  old = None
  if os.path.lexists(out):
    old = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(out)),
                           prefix=os.path.basename(out) + ".old-")
    os.rmdir(old)
    os.replace(out, old)
  os.chmod(new, 0o755)
  os.replace(new, out)
  if old:
    shutil.rmtree(old, ignore_errors=True)


def _upload_dir(new: str, out: str) -> None:
  """Puts the files of local directory `new` at URL `out`: the old manifest removed first,
  the new one written last, then the old export's other files removed."""
  old = files.listdir(out) if files.isdir(out) else []
  if MANIFEST in old:
    files.remove(os.path.join(out, MANIFEST))
  names = sorted(os.listdir(new), key=lambda name: name == MANIFEST)
  for name in names:
    files.write_atomic(os.path.join(out, name), files.read_bytes(os.path.join(new, name)))
  for name in set(old) - set(names):
    path = os.path.join(out, name)
    if files.isdir(path):
      files.rmtree(path)
    else:
      files.remove(path)


def _diff(logits, expected) -> float:
  return float(np.max(np.abs(np.asarray(logits, np.float32) - expected)))


def _write_stablehlo(sub, sub_vars, arrays, treedef, image_shape, out, images, expected,
                     manifest, _):
  def forward(weights, x):
    return sub.apply(jax.tree_util.tree_unflatten(treedef, weights), x)

  (batch,) = jax.export.symbolic_shape("batch")
  x_spec = jax.ShapeDtypeStruct((batch,) + tuple(image_shape), np.float32)
  exported = jax.export.export(jax.jit(forward))(
      [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays], x_spec)
  files.write_atomic(os.path.join(out, PROGRAM), exported.serialize())
  np.savez(os.path.join(out, WEIGHTS), **dict(zip(manifest["weights"], arrays)))
  # The weights inside: one self-contained program for compilers such as IREE.
  closed = jax.export.export(jax.jit(lambda x: sub.apply(sub_vars, x)))(x_spec)
  files.write_atomic(os.path.join(out, MLIR), closed.mlir_module())
  checks = {"jax": {"max_abs_diff": _diff(load_and_run(out, images, manifest), expected),
                    "version": jax.__version__}}
  entry = {"files": [PROGRAM, WEIGHTS, MLIR], "usage": USAGE["stablehlo"], "checks": checks,
           "iree_usage": USAGE["iree"]}
  if not runtimes.missing("iree"):
    checks["iree"] = {"max_abs_diff": _diff(run_iree(os.path.join(out, MLIR), images),
                                            expected),
                      "version": runtimes.version("iree-base-runtime")}
  else:
    entry["iree_check"] = "not run: pip install 'dnn_jax[iree]'"
  return entry


def _write_onnx(sub, sub_vars, arrays, treedef, image_shape, out, images, expected, manifest,
                _):
  import onnx
  from dnn_jax import onnx_graph
  graph = onnx_graph.build(sub, sub_vars, image_shape)
  files.write_atomic(os.path.join(out, ONNX), graph.SerializeToString())
  odd = images[:len(images) - 3]  # another batch size than the first: the batch is dynamic
  diff = max(_diff(run_onnx(os.path.join(out, ONNX), images), expected),
             _diff(run_onnx(os.path.join(out, ONNX), odd), expected[:len(odd)]))
  return {"files": [ONNX], "opset": onnx_graph.OPSET, "usage": USAGE["onnx"],
          "checks": {"onnxruntime": {"max_abs_diff": diff,
                                     "version": runtimes.version("onnxruntime")}},
          "onnx_version": onnx.__version__}


def _write_tflite(sub, sub_vars, arrays, treedef, image_shape, out, images, expected,
                  manifest, batch_sizes):
  names, diffs = [], []
  for b in batch_sizes:
    name = f"model_b{int(b)}.tflite"
    files.write_atomic(os.path.join(out, name),
                       runtimes.tflite_bytes(sub, sub_vars, image_shape, b))
    reps = -(-len(images) // b) * b  # whole batches covering the check images
    x = np.resize(images, (reps,) + images.shape[1:])
    y = np.resize(expected, (reps,) + expected.shape[1:])
    got = np.concatenate([run_tflite(os.path.join(out, name), x[i:i + b])
                          for i in range(0, reps, b)])
    names.append(name)
    diffs.append(_diff(got, y))
  return {"files": names, "batch_sizes": [int(b) for b in batch_sizes],
          "usage": USAGE["tflite"],
          "checks": {"litert": {"max_abs_diff": max(diffs),
                                "version": runtimes.version("ai-edge-litert")}},
          "tensorflow_version": (runtimes.version("tensorflow")
                                 or runtimes.version("tensorflow-cpu"))}


def load_and_run(export_dir: str, images: np.ndarray, manifest: dict | None = None
                 ) -> np.ndarray:
  """Runs an exported `model.stablehlo` with jax and numpy only."""
  if manifest is None:
    with open(os.path.join(export_dir, MANIFEST)) as f:
      manifest = json.load(f)
  with open(os.path.join(export_dir, PROGRAM), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(export_dir, WEIGHTS), allow_pickle=False) as w:
    weights = [w[k] for k in manifest["weights"]]
  return np.asarray(exported.call(weights, np.asarray(images, np.float32)))


def run_iree(mlir_path: str, images: np.ndarray) -> np.ndarray:
  """Compiles a `model.mlir` for this CPU with IREE and runs it."""
  with open(mlir_path) as f:
    return runtimes.iree_module(f.read())(images)


def run_onnx(path: str, images: np.ndarray) -> np.ndarray:
  return runtimes.onnx_session(path)(images)


def run_tflite(path: str, images: np.ndarray) -> np.ndarray:
  return runtimes.litert_interpreter(path=path)(images)


def run(config, workdir: str) -> dict:
  """--mode=export: writes DIR/export/<id>/ (or config.export.dir) from the latest
  checkpoint."""
  from dnn_jax import checkpointing, evaluate, resources
  from dnn_jax import workdir as layout
  from dnn_jax.errors import UserError
  from dnn_jax.metric_writers import log
  e = config.export
  formats = parse_formats(e.format)
  for f in formats:  # Before any work: a missing runtime is one line.
    try:
      require(f, f"config.export.format={f}")
    except runtimes.ExtraMissing as err:
      raise UserError(str(err)) from None
  if e.subnet:
    try:
      depth, width = subnetwork.parse_subnet_id(e.subnet)
    except ValueError as err:
      raise UserError(f"config.export.subnet: {err}") from err
  else:
    depth, width = e.depth, e.width
    if not (depth and width):
      raise UserError("config.export: set subnet (e.g. D14W12) or depth and width")
  saved = checkpointing.load_saved(workdir)
  image_shape = saved.input_shape(config.data)
  setup, variables, step, _, class_names = evaluate.load_checkpoint(
      config, workdir, image_shape[-1], saved=saved)
  model = setup.model
  if not (1 <= depth <= model.num_exits and 1 <= width <= model.num_groups):
    field = "config.export.subnet" if e.subnet else "config.export.depth/width"
    raise UserError(f"{field}: {subnetwork.subnet_id(depth, width)} is outside the grid of "
                    f"the checkpoint's {model.num_exits} depths x {model.num_groups} widths")
  out = (files.check_path(e.dir, "config.export.dir") if e.dir
         else layout.export_dir(workdir, subnetwork.subnet_id(depth, width)))
  variables = jax.device_get(variables)
  _check_target(out, variables, model, depth, width)
  grid = resources.analytic_grid(model, image_shape, len(class_names))
  meta = {"class_names": class_names, "checkpoint_step": int(step),
          **{k: int(v[depth - 1, width - 1]) for k, v in grid.items()}}
  grid_path = layout.eval_grid(workdir)
  if files.exists(grid_path):
    acc = layout.read_eval_grid(workdir)
    if acc.get("checkpoint_step") == int(step):  # Not a grid of an older checkpoint.
      try:
        meta.update(accuracy=acc["accuracy"][depth - 1][width - 1], accuracy_split=acc["split"])
      except (KeyError, IndexError, TypeError):
        raise UserError(f"{grid_path}: not an accuracy grid of this checkpoint's "
                        f"{model.num_exits} x {model.num_groups} sub-networks (rerun "
                        "--mode=eval)") from None
    else:
      log(f"Note: {grid_path} is of step {acc.get('checkpoint_step')}, not the exported "
          f"step {step}: no accuracy in the manifest (run --mode=eval)")
  manifest = None
  if jax.process_index() == 0:
    try:
      manifest = export_subnetwork(model, variables, depth, width, image_shape, out, meta,
                                   formats, _batch_sizes(e.tflite_batch_sizes))
    except OSError as err:
      raise RunError(f"{out}: cannot write the export ({err.strerror or err})") from None
    for f, entry in manifest["formats"].items():
      worst = ", ".join(f"{k} {c['max_abs_diff']:.1e}" for k, c in entry["checks"].items())
      log(f"  {f}: {', '.join(entry['files'])} (max |logit diff| {worst})")
  log(f"Exported {subnetwork.subnet_id(depth, width)} ({meta['macs']:,} MACs, "
      f"{meta['params']:,} parameters) to {out}")
  return manifest


def _batch_sizes(text) -> tuple[int, ...]:
  return tuple(int(b) for b in str(text).split(",") if b.strip())


def _check_target(out: str, variables, model, depth: int, width: int) -> None:
  """Refuses an export target that is a file, or a directory that holds another model's
  export (the same model's is replaced: e.g. to add a format)."""
  from dnn_jax.errors import UserError
  if files.lexists(out) and not files.isdir(out):
    raise UserError(f"{out}: the export target exists and is not a directory")
  if not files.isdir(out) or not files.listdir(out):
    return
  path = os.path.join(out, MANIFEST)
  try:
    with files.open_read(path) as f:
      theirs = json.load(f)["weights_sha256"]
  except (OSError, ValueError, KeyError, TypeError):
    raise UserError(f"{out}: exists and is not an export of this library; remove it or set "
                    "config.export.dir") from None
  _, sub_vars = subnetwork.extract(model, variables, depth, width)
  ours = weights_digest(np.asarray(x) for x in jax.tree_util.tree_leaves(sub_vars))
  if theirs != ours:
    raise UserError(f"{out}: holds the export of another model; remove it or set "
                    "config.export.dir")

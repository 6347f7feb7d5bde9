"""Export of one sliced sub-network as serialized StableHLO (jax.export) plus its weights.

The export directory holds `model.stablehlo` (batch-polymorphic; images on the 0-255 scale,
float32 NHWC in, logits out), `weights.npz` and `manifest.json`. Running it needs only jax
and numpy; see `load_and_run` (which imports nothing from dnn_jax).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from dnn_jax import files
from dnn_jax import models
from dnn_jax import subnetwork

PROGRAM, WEIGHTS, MANIFEST = "model.stablehlo", "weights.npz", "manifest.json"


def export_subnetwork(model: models.DNNet, variables: dict, depth: int, width: int,
                      image_shape, out_dir: str, metadata: dict | None = None) -> dict:
  """Writes the (depth, width) sub-network to `out_dir`; returns the manifest."""
  sub, sub_vars = subnetwork.extract(model, variables, depth, width)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(sub_vars)
  names = [jax.tree_util.keystr(p) for p, _ in leaves]
  arrays = [np.asarray(x) for _, x in leaves]

  def forward(weights, images):
    return sub.apply(jax.tree_util.tree_unflatten(treedef, weights), images)

  (batch,) = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(forward))(
      [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays],
      jax.ShapeDtypeStruct((batch,) + tuple(image_shape), np.float32))
  manifest = {
      "subnet": subnetwork.subnet_id(depth, width), "depth": depth, "width": width,
      "input": {"shape": [None] + list(image_shape), "dtype": "float32",
                "scale": "pixel values 0-255 (normalisation is inside the program)"},
      "output": "logits, shape (batch, num_classes)",
      "weights": [f"w{i:04d}" for i in range(len(arrays))],
      "weight_paths": names,
      "num_weights": int(sum(a.size for a in arrays)),
      "jax_version": jax.__version__,
      "usage": ("exp = jax.export.deserialize(open('model.stablehlo','rb').read()); "
                "w = np.load('weights.npz'); "
                "logits = exp.call([w[k] for k in manifest['weights']], images)"),
      **(metadata or {}),
  }
  os.makedirs(out_dir, exist_ok=True)
  files.write_atomic(os.path.join(out_dir, PROGRAM), exported.serialize())
  tmp = os.path.join(out_dir, WEIGHTS + ".tmp.npz")
  np.savez(tmp, **dict(zip(manifest["weights"], arrays)))
  os.replace(tmp, os.path.join(out_dir, WEIGHTS))
  files.write_json(os.path.join(out_dir, MANIFEST), manifest)
  return manifest


def load_and_run(export_dir: str, images: np.ndarray) -> np.ndarray:
  """Runs an exported sub-network with jax and numpy only."""
  with open(os.path.join(export_dir, MANIFEST)) as f:
    manifest = json.load(f)
  with open(os.path.join(export_dir, PROGRAM), "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  with np.load(os.path.join(export_dir, WEIGHTS), allow_pickle=False) as w:
    weights = [w[k] for k in manifest["weights"]]
  return np.asarray(exported.call(weights, np.asarray(images, np.float32)))


def run(config, workdir: str) -> dict:
  """--mode=export: writes DIR/export/<id>/ from the latest checkpoint."""
  from dnn_jax import checkpointing, evaluate, resources
  from dnn_jax import workdir as layout
  from dnn_jax.errors import UserError
  from dnn_jax.metric_writers import log
  e = config.export
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
  grid = resources.analytic_grid(model, image_shape, len(class_names))
  meta = {"class_names": class_names, "checkpoint_step": int(step),
          **{k: int(v[depth - 1, width - 1]) for k, v in grid.items()}}
  grid_path = layout.eval_grid(workdir)
  if os.path.exists(grid_path):
    acc = layout.read_json(grid_path)
    if acc.get("checkpoint_step") == int(step):  # Not a grid of an older checkpoint.
      meta.update(accuracy=acc["accuracy"][depth - 1][width - 1], accuracy_split=acc["split"])
    else:
      log(f"Note: {grid_path} is of step {acc.get('checkpoint_step')}, not the exported "
          f"step {step}: no accuracy in the manifest (run --mode=eval)")
  out = layout.export_dir(workdir, subnetwork.subnet_id(depth, width))
  manifest = export_subnetwork(model, jax.device_get(variables), depth, width, image_shape, out,
                               meta) if jax.process_index() == 0 else None
  log(f"Exported {subnetwork.subnet_id(depth, width)} ({meta['macs']:,} MACs, "
      f"{meta['params']:,} parameters) to {out}")
  return manifest

"""Resource grids of every (depth, width) sub-network (paper Fig. 3).

Analytic quantities (MACs, parameters, largest feature map) come from the layer shapes and
causal masks alone; measured ones (XLA's peak activation memory, latency) compile each
sliced sub-network on the current backend. None of them needs a trained checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dnn_jax import files
from dnn_jax import models
from dnn_jax import runtimes
from dnn_jax import subnetwork
from dnn_jax import workdir as layout

ANALYTIC = ("macs", "macs_conv", "macs_head", "params", "largest_feature_map",
            "largest_feature_map_bytes")
MEASURED = ("peak_activation_bytes", "latency_ms_batch1", "latency_ms_batch")


@dataclasses.dataclass(frozen=True)
class ConvLayer:
  path: tuple[str, ...]  # module path: a top-level name (models.py), then e.g. "conv1"
  depth: int  # the first exit that needs this layer
  taps: int  # kernel height x width
  out_hw: int  # output height x width
  unmasked_by_width: np.ndarray  # [c - 1] -> (C_in, C_out) pairs kept at width c
  out_channels_by_width: np.ndarray  # [c - 1] -> output channels at width c


def conv_layers(model: models.DNNet, image_shape) -> list[ConvLayer]:
  """Every conv of the full model with what width slicing keeps of it."""
  x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)

  def forward(v, inp):
    return model.apply(v, inp, capture_intermediates=lambda m, _: isinstance(m, models.CausalConv),
                       mutable=["intermediates"])[1]

  captured = jax.eval_shape(forward, variables, x)["intermediates"]
  g = model.num_groups
  layers = []
  for path, out in jax.tree_util.tree_flatten_with_path(captured)[0]:
    names = tuple(getattr(p, "key", str(p)) for p in path if hasattr(p, "key"))[:-1]
    kernel = variables["params"]
    for n in names:
      kernel = kernel[n]
    kh, kw, cin, cout = kernel["kernel"].shape
    mask = models.conv_kernel_mask(names[0], kernel["kernel"].shape, g, model.causal)
    widths = np.arange(1, g + 1)
    cin_c = np.full(g, cin) if names[0] == models.STEM else cin * widths // g
    cout_c = cout * widths // g
    unmasked = np.array([mask[:i, :o].sum() for i, o in zip(cin_c, cout_c)], np.int64)
    layers.append(ConvLayer(names, models.first_exit(names[0]), kh * kw,
                            out.shape[1] * out.shape[2], unmasked, cout_c))
  return layers


def analytic_grid(model: models.DNNet, image_shape, num_classes: int,
                  bytes_per_element: int = 4) -> dict[str, np.ndarray]:
  """MACs (every tap counted, padding included), parameters and largest feature map."""
  depths, g = model.num_exits, model.num_groups
  layers = conv_layers(model, image_shape)
  conv_per_depth = np.zeros((depths, g), np.int64)
  fmap_per_depth = np.zeros((depths, g), np.int64)
  weights_per_depth = np.zeros((depths, g), np.int64)
  for layer in layers:
    conv_per_depth[layer.depth - 1] += layer.taps * layer.unmasked_by_width * layer.out_hw
    weights_per_depth[layer.depth - 1] += layer.taps * layer.unmasked_by_width
    # BN after every conv: scale and bias per output channel.
    weights_per_depth[layer.depth - 1] += 2 * layer.out_channels_by_width
    fmap_per_depth[layer.depth - 1] = np.maximum(fmap_per_depth[layer.depth - 1],
                                                 layer.out_hw * layer.out_channels_by_width)
  # The head of exit d at width c: c groups' per-group linear maps and biases.
  widths = np.arange(1, g + 1)
  head_features = np.outer(models.exit_channels_per_group(model.channels_per_group,
                                                          model.blocks_per_stage), widths)
  macs_head = head_features * num_classes
  macs_conv = np.cumsum(conv_per_depth, axis=0)
  return {
      "macs": macs_conv + macs_head,
      "macs_conv": macs_conv,
      "macs_head": macs_head,
      "params": np.cumsum(weights_per_depth, axis=0) + macs_head + widths * num_classes,
      "largest_feature_map": np.maximum.accumulate(fmap_per_depth, axis=0),
      "largest_feature_map_bytes": np.maximum.accumulate(fmap_per_depth, axis=0)
                                   * bytes_per_element,
  }


def median_seconds(fn, args=(), warmup: int = 2, repeats: int = 5) -> float:
  """Median wall seconds of fn(*args) over `repeats` calls after `warmup` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def measured_grid(model: models.DNNet, variables: dict, image_shape, *, batch_size: int,
                  warmup: int = 2, repeats: int = 5, latency: bool = True,
                  progress=None, runtime: str = "jax") -> dict[str, np.ndarray]:
  """XLA peak temp memory (batch 1) and median latency (batch 1 and `batch_size`) per cell,
  the latency in `runtime` (runtimes.RUNTIMES; each cell compiled for it)."""
  depths, g = model.num_exits, model.num_groups
  out = {k: np.full((depths, g), np.nan) for k in MEASURED}
  apply = lambda m: jax.jit(lambda v, x: m.apply(v, x))
  start = time.time()
  for d in range(1, depths + 1):
    for c in range(1, g + 1):
      sub, sub_vars = subnetwork.extract(model, variables, d, c)
      fn = apply(sub)
      x1 = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
      compiled = fn.lower(sub_vars, x1).compile()
      out["peak_activation_bytes"][d - 1, c - 1] = compiled.memory_analysis().temp_size_in_bytes
      if latency and runtime == "jax":
        out["latency_ms_batch1"][d - 1, c - 1] = 1e3 * median_seconds(
            compiled, (sub_vars, x1), warmup, repeats)
        xb = jnp.zeros((batch_size,) + tuple(image_shape), jnp.float32)
        out["latency_ms_batch"][d - 1, c - 1] = 1e3 * median_seconds(
            fn.lower(sub_vars, xb).compile(), (sub_vars, xb), warmup, repeats)
      elif latency:
        for key, b in (("latency_ms_batch1", 1), ("latency_ms_batch", batch_size)):
          x = np.zeros((b,) + tuple(image_shape), np.float32)
          out[key][d - 1, c - 1] = 1e3 * median_seconds(
              runtimes.compile_subnetwork(runtime, sub, sub_vars, image_shape, b), (x,),
              warmup, repeats)
    if progress:
      done = d * g
      eta = (time.time() - start) / done * (depths * g - done)
      progress(f"resources: {done}/{depths * g} sub-networks measured, ETA {eta:.0f} s")
  return out


def compute(config, workdir: str, progress=None) -> dict:
  """The resource grid record of DIR's trained network (of the config's when DIR has no
  checkpoint): analytic quantities, and with resources.measure the measured ones."""
  from dnn_jax import checkpointing, input_pipeline
  saved = checkpointing.load_saved(workdir, required=False)
  if saved is not None:
    # A trained workdir: the network it holds, whatever the given config's model says.
    image_shape, class_names = saved.input_shape(config.data), saved.class_names
    config = saved.overlay(config)
  else:
    image_shape, class_names = input_pipeline.describe(config.data)
  model = models.create_model(config.model, len(class_names), input_mean=config.data.mean,
                              input_std=config.data.std)
  grid = analytic_grid(model, image_shape, len(class_names),
                       np.dtype(config.model.dtype).itemsize)
  record = {"depths": list(range(1, model.num_exits + 1)),
            "widths": list(range(1, model.num_groups + 1)),
            "image_shape": list(image_shape), "num_classes": len(class_names),
            **{k: v.tolist() for k, v in grid.items()}}
  if config.resources.measure and config.resources.latency:
    try:  # Before any work: a missing runtime is one line.
      runtimes.require(config.resources.runtime, f"config.resources.runtime="
                       f"{config.resources.runtime}")
    except runtimes.ExtraMissing as e:
      from dnn_jax.errors import UserError
      raise UserError(str(e)) from None
  if config.resources.measure:
    # Cost does not depend on the weights' values: initialised weights serve.
    variables = model.init(jax.random.key(config.seed), jnp.zeros((1,) + image_shape))
    measured = measured_grid(model, variables, image_shape,
                             batch_size=config.resources.batch_size,
                             warmup=config.resources.warmup, repeats=config.resources.repeats,
                             latency=config.resources.latency, progress=progress,
                             runtime=config.resources.runtime)
    record.update({k: [[None if np.isnan(x) else float(x) for x in row] for row in v]
                   for k, v in measured.items()})
    device = jax.devices()[0]
    record.update(latency_batch_size=config.resources.batch_size,
                  latency_runtime=config.resources.runtime if config.resources.latency else None,
                  backend=jax.default_backend(), device_kind=device.device_kind)
  return record


def write(workdir: str, record: dict) -> None:
  """DIR/resources/grid.json and one heatmap per quantity (process 0), and a summary line."""
  from dnn_jax import plots
  from dnn_jax.metric_writers import log
  out = layout.resources_dir(workdir)
  macs, params = np.array(record["macs"]), np.array(record["params"])
  if jax.process_index() == 0:
    files.makedirs(out)
    batch = record.get("latency_batch_size")
    runtime = record.get("latency_runtime") or "jax"
    titles = {"macs": ("MACs (M)", 1e-6, "{:.1f}"), "params": ("parameters (K)", 1e-3, "{:.0f}"),
              "largest_feature_map": ("largest feature map (K elements)", 1e-3, "{:.0f}"),
              "peak_activation_bytes": ("XLA peak activation memory, batch 1 (KiB)",
                                        1 / 1024, "{:.0f}"),
              "latency_ms_batch1": (f"{runtime} latency, batch 1 (ms)", 1.0, "{:.2f}"),
              "latency_ms_batch": (f"{runtime} latency, batch {batch} (ms)", 1.0, "{:.1f}")}
    for key, (title, scale, fmt) in titles.items():
      if key in record and record[key] is not None:
        values = np.array(record[key], np.float64)
        if not np.isnan(values).all():
          plots.grid_heatmap(values, os.path.join(out, f"{key}.png"), title, scale=scale,
                             fmt=fmt, annotate=len(record["widths"]) <= 12)
    files.write_json(layout.resources_grid(workdir), record)
  log(f"Resources of {len(record['depths'])} x {len(record['widths'])} sub-networks written "
      f"to {out}; full network: {int(macs[-1, -1]):,} MACs, {int(params[-1, -1]):,} parameters")


def run(config, workdir: str) -> dict:
  """--mode=resources: writes DIR/resources/grid.json and one heatmap per quantity."""
  from dnn_jax.metric_writers import log
  record = compute(config, workdir, progress=log)
  write(workdir, record)
  return record

"""Accuracy grid of every (depth, width) sub-network from the latest checkpoint."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import optax

from dnn_jax import checkpointing
from dnn_jax import config_validation
from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import plots
from dnn_jax import train
from dnn_jax.errors import DataError


def _network_fields(model_config) -> dict:
  """The model config minus what only changes how it runs (the conv form)."""
  fields = json.loads(model_config.to_json())
  fields.pop("conv_form", None)
  return fields


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str, num_channels: int,
                    step: int | None = None, saved: checkpointing.Saved | None = None):
  """Restores (setup, variables, step, saved_config, class_names) from DIR/checkpoints.

  The model comes from the config saved with the checkpoint, so evaluating with a config
  whose `model` fields differ still rebuilds the network that was trained. `saved`: the
  checkpoint's metadata when the caller has read it already.
  """
  saved = saved or checkpointing.load_saved(workdir, step)
  if _network_fields(config.model) != _network_fields(saved.config.model):
    train.log("Note: using the model config saved with the checkpoint, not the given one.")
  run_config = config.copy_and_resolve_references()
  run_config.model = saved.config.model
  # The input normalisation is part of the trained model.
  run_config.data.mean, run_config.data.std = saved.config.data.mean, saved.config.data.std
  setup = train.make_setup(run_config, len(saved.class_names), num_channels)
  tx = train.create_optimizer(saved.config.train, optax.constant_schedule(0.0))  # Structure.
  # Parameter shapes do not depend on the image size: any spatial size gives the target.
  _, _, abstract = train.abstract_state(setup, tx, (8, 8, num_channels), config.seed)
  mngr = checkpointing.manager(workdir)
  try:
    state = checkpointing.restore(mngr, abstract, saved.step)
  finally:
    mngr.close()
  return setup, train.variables(state), saved.step, saved.config, list(saved.class_names)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Writes DIR/eval/grid.json and DIR/eval/accuracy.png; returns the grid record."""
  config_validation.validate(config)
  saved = checkpointing.load_saved(workdir)
  dataset = input_pipeline.load_dataset(config.data, workdir,
                                        eval_only_classes=saved.class_names)
  channels = dataset.eval.images.shape[-1]
  setup, variables, step, _, class_names = load_checkpoint(config, workdir, channels,
                                                           saved=saved)
  if tuple(class_names) != dataset.class_names:
    raise DataError(f"the checkpoint's classes {class_names} differ from the data's "
                    f"{list(dataset.class_names)}")
  grid = setup.accuracy_grid(variables, dataset.eval, config.eval.batch_size)
  depths, widths = grid.shape
  record = {"depths": list(range(1, depths + 1)), "widths": list(range(1, widths + 1)),
            "accuracy": grid.round(6).tolist(), "split": dataset.eval_split,
            "num_examples": len(dataset.eval), "checkpoint_step": int(step)}
  if jax.process_index() == 0:
    out = os.path.join(workdir, "eval")
    os.makedirs(out, exist_ok=True)
    plots.grid_heatmap(grid, os.path.join(out, "accuracy.png"),
                       f"{dataset.eval_split} accuracy (%) per sub-network, step {step}",
                       scale=100.0, fmt="{:.0f}" if widths > 12 else "{:.1f}",
                       cbar_label="accuracy (%)")
    files.write_json(os.path.join(out, "grid.json"), record)
  train.log(f"Evaluated step {step} on {len(dataset.eval):,} {dataset.eval_split} examples: "
            f"full exit {grid[-1, -1]:.4f}, smallest exit {grid[0, 0]:.4f}, "
            f"grid mean {grid.mean():.4f}")
  return record

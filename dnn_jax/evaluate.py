"""Accuracy grid of every (depth, width) sub-network of a trained model."""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from dnn_jax import checkpointing
from dnn_jax import config_validation
from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import plots
from dnn_jax import state as state_lib
from dnn_jax import workdir as layout
from dnn_jax.errors import DataError
from dnn_jax.metric_writers import log


def load_checkpoint(config: ml_collections.ConfigDict, workdir: str, num_channels: int,
                    step: int | None = None, saved: checkpointing.Saved | None = None):
  """Restores (setup, variables, step, saved_config, class_names) from DIR/checkpoints.

  The model comes from the config saved with the checkpoint, so evaluating with a config
  whose `model` fields differ still rebuilds the network that was trained. Only the model's
  variables are read, not the optimizer state. `saved`: the checkpoint's metadata when the
  caller has read it already.
  """
  saved = saved or checkpointing.load_saved(workdir, step)
  if saved.model_differs(config):
    log("Note: using the model config saved with the checkpoint, not the given one.")
  setup = state_lib.make_setup(saved.overlay(config), len(saved.class_names), num_channels)
  variables, saved = checkpointing.restore_variables_latest_good(
      workdir, saved, state_lib.abstract_variables(setup, num_channels), log)
  return setup, variables, saved.step, saved.config, list(saved.class_names)


def grid_record(setup: state_lib.Setup, variables, split: input_pipeline.Split,
                split_name: str, batch_size: int, step: int) -> dict:
  """The accuracy of every sub-network on `split`, as the record eval/grid.json holds."""
  grid = setup.accuracy_grid(variables, split, batch_size)
  depths, widths = grid.shape
  return {"depths": list(range(1, depths + 1)), "widths": list(range(1, widths + 1)),
          "accuracy": grid.round(6).tolist(), "split": split_name,
          "num_examples": len(split), "checkpoint_step": int(step)}


def write_grid(workdir: str, record: dict) -> None:
  """DIR/eval/grid.json and its heatmap (process 0), and one line on the terminal."""
  grid = np.asarray(record["accuracy"])
  split, step = record["split"], record["checkpoint_step"]
  if jax.process_index() == 0:
    files.makedirs(layout.eval_dir(workdir))
    plots.grid_heatmap(grid, os.path.join(layout.eval_dir(workdir), "accuracy.png"),
                       f"{split} accuracy (%) per sub-network, step {step}",
                       scale=100.0, fmt="{:.0f}" if grid.shape[1] > 12 else "{:.1f}",
                       cbar_label="accuracy (%)")
    files.write_json(layout.eval_grid(workdir), record)
  log(f"Evaluated step {step} on {record['num_examples']:,} {split} examples: "
      f"full exit {grid[-1, -1]:.4f}, smallest exit {grid[0, 0]:.4f}, "
      f"grid mean {grid.mean():.4f}")


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """--mode=eval: writes DIR/eval/grid.json and DIR/eval/accuracy.png of the latest
  checkpoint; returns the grid record."""
  config_validation.validate(config)
  saved = checkpointing.load_saved(workdir)
  dataset = input_pipeline.load_dataset(config.data, workdir,
                                        eval_only_classes=saved.class_names)
  saved.check_image_shape(dataset.eval.images.shape[1:], f"the {dataset.eval_split} split")
  channels = dataset.eval.images.shape[-1]
  setup, variables, step, _, class_names = load_checkpoint(config, workdir, channels,
                                                           saved=saved)
  if tuple(class_names) != dataset.class_names:
    raise DataError(f"the checkpoint's classes {class_names} differ from the data's "
                    f"{list(dataset.class_names)}")
  record = grid_record(setup, variables, dataset.eval, dataset.eval_split,
                       config.eval.batch_size, step)
  write_grid(workdir, record)
  return record

"""The layout of a workdir, and the reading of the grids other modes leave in it.

  DIR/checkpoints/<step>/       Orbax checkpoints (checkpointing.py)
  DIR/train_summary.json        the finished run: steps, wall time, params_sha256
  DIR/metrics.jsonl, tensorboard/  training metrics (metric_writers.py)
  DIR/corrupt_checkpoints/      unreadable checkpoints moved aside, never deleted
  DIR/eval/grid.json            accuracy of every sub-network (--mode=eval)
  DIR/resources/grid.json       MACs, parameters, memory, latency (--mode=resources)
  DIR/select.json, DIR/select/  --mode=select: the choice, and its Fig. 5 view
  DIR/trace/                    --mode=trace
  DIR/export/<id>/              one exported sub-network (--mode=export)
"""

from __future__ import annotations

import json
import os

import numpy as np

from dnn_jax.errors import UserError

CHECKPOINTS = "checkpoints"
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"


def checkpoints(workdir: str) -> str:
  return os.path.join(workdir, CHECKPOINTS)


def corrupt_checkpoints(workdir: str) -> str:
  return os.path.join(workdir, CORRUPT_CHECKPOINTS)


def train_summary(workdir: str) -> str:
  return os.path.join(workdir, "train_summary.json")


def eval_dir(workdir: str) -> str:
  return os.path.join(workdir, "eval")


def eval_grid(workdir: str) -> str:
  return os.path.join(eval_dir(workdir), "grid.json")


def resources_dir(workdir: str) -> str:
  return os.path.join(workdir, "resources")


def resources_grid(workdir: str) -> str:
  return os.path.join(resources_dir(workdir), "grid.json")


def select_record(workdir: str) -> str:
  return os.path.join(workdir, "select.json")


def select_dir(workdir: str) -> str:
  return os.path.join(workdir, "select")


def trace_dir(workdir: str) -> str:
  return os.path.join(workdir, "trace")


def export_dir(workdir: str, subnet: str) -> str:
  return os.path.join(workdir, "export", subnet)


def read_json(path: str, missing: str = "") -> dict:
  """The JSON object in `path`; a missing or unreadable file is a UserError naming it
  (`missing`: what to do about a missing one)."""
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist" + (f": {missing}" if missing else ""))
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})") from e
  if not isinstance(record, dict):
    raise UserError(f"{path}: expected a JSON object, found {type(record).__name__}")
  return record


def read_eval_grid(workdir: str) -> dict:
  """The accuracy grid record of `workdir` (eval/grid.json)."""
  return read_json(eval_grid(workdir), f"train and evaluate {workdir} first (--mode=eval)")


def read_resources_grid(workdir: str) -> dict | None:
  """The resource grid record of `workdir`, or None before --mode=resources ran."""
  path = resources_grid(workdir)
  return read_json(path) if os.path.exists(path) else None


def grid_array(record: dict, key: str, shape: tuple[int, int], path: str) -> np.ndarray:
  """record[key] as a float depths x widths array, checked against the model's `shape`."""
  try:
    grid = np.asarray(record[key], np.float64)
  except (ValueError, KeyError, TypeError) as e:
    raise UserError(f"{path}: cannot read '{key}' as a grid ({type(e).__name__}: {e})") from e
  if grid.shape != tuple(shape):
    raise UserError(f"{path}: '{key}' has shape {grid.shape}, expected {tuple(shape)} "
                    "(depths x widths of the model)")
  return grid

"""Command line: `python -m dnn_jax.main --config=configs/digits.py --workdir=DIR`."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dnn_jax.errors import RunError, TrainingInterrupted, UserError

MODES = ("train", "eval", "resources", "select", "trace", "export")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
_MODE = flags.DEFINE_enum(
    "mode", "train", MODES,
    "train: train (resuming from DIR), then evaluate; eval: evaluate the latest checkpoint; "
    "resources: MACs/params/memory/latency of every sub-network; select: best sub-network "
    "under config.budget; trace: choices over a budget time series; export: one sub-network "
    "as StableHLO.")


def run(config, workdir: str, mode: str) -> None:
  from dnn_jax import config_validation, evaluate, export, resources, select, train
  config_validation.validate(config)  # Before anything is compiled.
  if mode in ("train", "eval"):
    if mode == "train":
      train.train_and_evaluate(config, workdir)
    evaluate.evaluate(config, workdir)
  elif mode == "resources":
    resources.run(config, workdir)
  elif mode == "select":
    select.run(config, workdir)
  elif mode == "trace":
    select.run_trace_mode(config, workdir)
  else:
    export.run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  try:
    run(_CONFIG.value, os.path.expanduser(_WORKDIR.value), _MODE.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except RunError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except TrainingInterrupted as e:
    print(str(e), file=sys.stderr)
    sys.exit(128 + e.signum)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)

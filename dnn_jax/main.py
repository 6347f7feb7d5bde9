"""Command line: `python -m dnn_jax.main --config=configs/digits.py --workdir=DIR`."""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dnn_jax import xla_flags
from dnn_jax.errors import RunError, TrainingInterrupted, UserError

MODES = ("train", "eval", "resources", "select", "trace", "export", "anytime")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
_MODE = flags.DEFINE_enum(
    "mode", "train", MODES,
    "train: train (resuming from DIR), then evaluate; eval: evaluate the latest checkpoint; "
    "resources: MACs/params/memory/latency of every sub-network; select: best sub-network "
    "under config.budget; trace: choices over a budget time series; export: one sub-network "
    "for deployment (config.export.format); anytime: per-image anytime inference curves.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "detect", ("detect", "off", "auto", "explicit"),
    "Multi-host: auto = jax.distributed.initialize() from the cluster environment (Cloud TPU "
    "VM, SLURM, ...); explicit = from --coordinator_address/--num_processes/--process_id; "
    "detect (default) = auto when the environment describes a multi-process job, else off.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def multi_process_environment(env=None) -> bool:
  """Whether the environment describes a job of several processes JAX can join by itself."""
  env = os.environ if env is None else env
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return True  # A multi-host Cloud TPU slice.
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    if env.get(key, "1").isdigit() and int(env.get(key, "1")) > 1:
      return True
  return False


def initialize_distributed(mode: str) -> None:
  """Joins the multi-host job before JAX touches any device."""
  import jax
  if mode == "detect":
    mode = "auto" if multi_process_environment() else "off"
  if mode == "off":
    return
  if mode == "explicit":
    if not (_COORDINATOR.value and _NUM_PROCESSES.value and _PROCESS_ID.value is not None):
      raise UserError("--distributed=explicit needs --coordinator_address, --num_processes "
                      "and --process_id")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  else:
    jax.distributed.initialize()


def run(config, workdir: str, mode: str):
  """Runs one --mode; returns its result record (the JSON it writes)."""
  from dnn_jax import config_validation, evaluate, export, resources, select, train
  if "://" in workdir:
    raise UserError(f"--workdir {workdir}: URLs are not supported; give a local path (mount a "
                    "bucket with gcsfuse, as launch/tpu_setup.sh does)")
  # Train and eval validate the config themselves (their entry points are called from Python
  # too). The other modes read the model from a checkpoint (resources: from the config when
  # there is none) and need no data set. Either way: before anything is compiled.
  if mode == "train":
    return train.train_and_evaluate(config, workdir)["eval"]
  if mode == "eval":
    return evaluate.evaluate(config, workdir)
  if mode == "anytime":  # Reads the data, like eval.
    from dnn_jax import anytime
    config_validation.validate(config)
    return anytime.run(config, workdir)
  config_validation.validate(config, check_paths=False)
  if mode == "resources":
    return resources.run(config, workdir)
  if mode == "select":
    return select.run(config, workdir)
  if mode == "trace":
    return select.run_trace_mode(config, workdir)
  return export.run(config, workdir)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _MODE.value in ("train", "eval"):
    xla_flags.apply_defaults()  # Before JAX creates its backends (distributed init does).
  try:
    initialize_distributed(_DISTRIBUTED.value)
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

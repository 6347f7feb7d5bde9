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
  DIR/logs/<mode>.log           library logs (Orbax, asyncio) kept out of the terminal
  DIR/training.lock             held by the training that writes DIR (process 0)

DIR may be a gs://BUCKET/PATH URL (files.py reads and writes it through etils.epath, Orbax
through tensorstore). Two things then stay on the local disk: the library logs (logs_dir: an
object cannot be appended to, and the log would record its own uploads), and the lock (an
flock needs a local file: training_lock).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import tempfile

import numpy as np

from dnn_jax import files
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


def logs_dir(workdir: str) -> str:
  """DIR/logs; for a gs:// DIR a local folder, <tmp>/dnn_jax_logs/gs/BUCKET/PATH (appending to
  a log object would mean rewriting it at every line)."""
  if files.is_remote(workdir):
    return os.path.join(tempfile.gettempdir(), "dnn_jax_logs", workdir.replace("://", "/", 1))
  return os.path.join(workdir, "logs")


@contextlib.contextmanager
def training_lock(workdir: str, take: bool = True):
  """Holds DIR/training.lock (an flock, released by the kernel however the process ends, even
  SIGKILL) while one training writes DIR: a second one is refused instead of cutting the first
  one's metrics and racing its checkpoints. Where the file system has no locks (some network
  mounts) training goes on unlocked, and so it does in a gs:// DIR: a bucket has no flock, and
  a lock object would outlive a SIGKILLed or preempted run and refuse its resume."""
  if not take or files.is_remote(workdir):
    yield
    return
  path = os.path.join(workdir, "training.lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  locked = True
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EACCES):
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
      os.close(fd)
      raise UserError(f"--workdir {workdir} is in use by another training ({holder}); wait "
                      "for it to end or train in another workdir") from e
    locked = False  # No locks on this file system.
  try:
    if locked:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                    f"{datetime.datetime.now().isoformat(timespec='seconds')}\n".encode(), 0)
    yield
  finally:
    os.close(fd)


def read_json(path: str, missing: str = "", unreadable: str = "") -> dict:
  """The JSON object in `path`; a missing or unreadable file is a UserError naming it
  (`missing`, `unreadable`: what to do about either)."""
  if not files.exists(path):
    raise UserError(f"{path} does not exist" + (f": {missing}" if missing else ""))
  try:
    with files.open_read(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read it as JSON ({type(e).__name__}: {e})"
                    + (f"; {unreadable}" if unreadable else "")) from e
  if not isinstance(record, dict):
    raise UserError(f"{path}: expected a JSON object, found {type(record).__name__}"
                    + (f"; {unreadable}" if unreadable else ""))
  return record


def read_eval_grid(workdir: str) -> dict:
  """The accuracy grid record of `workdir` (eval/grid.json)."""
  return read_json(eval_grid(workdir), f"train and evaluate {workdir} first (--mode=eval)",
                   "--mode=eval writes it again")


def read_resources_grid(workdir: str) -> dict | None:
  """The resource grid record of `workdir`, or None before --mode=resources ran."""
  path = resources_grid(workdir)
  return read_json(path) if files.exists(path) else None


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

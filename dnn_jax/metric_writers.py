"""Progress lines on the terminal, and metrics as JSON lines and TensorBoard event files
(tensorboardX: no TensorFlow); process 0 only."""

from __future__ import annotations

import json
import os

import jax

from dnn_jax import files


def log(message: str) -> None:
  """A progress line on stdout, from process 0 only."""
  if jax.process_index() == 0:
    print(message, flush=True)


def duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"


class MetricWriter:
  """Appends `{"step": s, **scalars}` to DIR/metrics.jsonl and DIR/tensorboard/; process 0 only.

  A run resumed at `start_step` first drops what an interrupted run logged after that step
  (and a torn last line), so the log reads as the one of an uninterrupted run.
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if os.path.exists(path):  # From step 0: a run killed before its first checkpoint.
        _truncate_after(path, start_step)
      self._path = path
      self._jsonl = open(path, "a")  # pylint: disable=consider-using-with
      from tensorboardX import SummaryWriter
      # Events at steps > start_step are dropped (the restored step's own record stays).
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    try:
      self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
      self._jsonl.flush()
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
    except OSError as e:  # A full disk: name the file.
      raise files.cannot_write(self._path, e, f"the metrics of step {step}") from e

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps the complete records of steps <= `step`; rewrites the file atomically."""
  kept = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # Torn by a kill mid-write.
      if isinstance(record, dict) and record.get("step", step + 1) <= step:
        kept.append(json.dumps(record) + "\n")
  files.write_atomic(path, "".join(kept))

"""Metrics as JSON lines and TensorBoard event files (tensorboardX: no TensorFlow)."""

from __future__ import annotations

import json
import os

import jax


class MetricWriter:
  """Appends `{"step": s, **scalars}` to DIR/metrics.jsonl and DIR/tensorboard/; process 0 only."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, int(step))

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()

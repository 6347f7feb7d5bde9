"""Progress lines on the terminal, and metrics as JSON lines and TensorBoard event files
(tensorboardX: no TensorFlow); process 0 only."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

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

  In a gs:// DIR objects cannot be appended to, and Cloud Storage takes about one write per
  second to the same object: the records are kept in memory (TensorBoard's in a local event
  file) and uploaded whole by `sync`, at most every SYNC_SECONDS while logging, before every
  checkpoint (a resume then finds every record up to its step) and at `close`.
  """

  SYNC_SECONDS = 30.0

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._tb = self._jsonl = self._lines = self._tb_local = None
    if self.enabled:
      files.makedirs(workdir)
      path = os.path.join(workdir, "metrics.jsonl")
      self._path, self._tb_dir = path, os.path.join(workdir, "tensorboard")
      if files.is_remote(path):
        self._lines = _kept(path, start_step) if files.exists(path) else []
        self._synced, self._synced_at = -1, 0.0
        self._tb_local = tempfile.mkdtemp(prefix="dnn_jax_tensorboard.")
      else:
        if os.path.exists(path):  # From step 0: a run killed before its first checkpoint.
          _truncate_after(path, start_step)
        self._jsonl = open(path, "a")  # pylint: disable=consider-using-with
      from tensorboardX import SummaryWriter
      # Events at steps > start_step are dropped (the restored step's own record stays).
      # A gs:// event file is uploaded whole: a suffix of its own keeps a resume started in
      # the same second (the file name's time) from replacing the killed run's file.
      suffix = "." + self._tb_local.rsplit(".", 1)[1] if self._tb_local else ""
      self._tb = SummaryWriter(self._tb_local or self._tb_dir, purge_step=start_step + 1,
                               filename_suffix=suffix)
      self.sync()

  def write_scalars(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    line = json.dumps({"step": int(step), **scalars}) + "\n"
    try:
      if self._lines is not None:
        self._lines.append(line)
      else:
        self._jsonl.write(line)
        self._jsonl.flush()
      for k, v in scalars.items():
        self._tb.add_scalar(k, v, int(step))
    except OSError as e:  # A full disk: name the file.
      raise files.cannot_write(self._path, e, f"the metrics of step {step}") from e
    if self._lines is not None and time.monotonic() - self._synced_at >= self.SYNC_SECONDS:
      self.sync()

  def sync(self) -> None:
    """Uploads what a gs:// DIR has not received yet (nothing to do locally: every line is
    flushed as it is written)."""
    if not (self.enabled and self._lines is not None) or self._synced == len(self._lines):
      return
    self._tb.flush()
    uploads = [(self._path, "".join(self._lines).encode())]
    uploads += [(os.path.join(self._tb_dir, name),
                 files.read_bytes(os.path.join(self._tb_local, name)))
                for name in sorted(os.listdir(self._tb_local))]
    for path, data in uploads:
      try:
        files.put(path, data)
      except OSError as e:
        raise files.cannot_write(path, e, "the metrics") from e
    self._synced, self._synced_at = len(self._lines), time.monotonic()

  def close(self) -> None:
    if self.enabled:
      if self._jsonl is not None:
        self._jsonl.close()
      self._tb.close()
      if self._tb_local is not None:
        self._synced = -1  # The event file's last bytes came with close.
        self.sync()
        shutil.rmtree(self._tb_local, ignore_errors=True)


def _kept(path: str, step: int) -> list[str]:
  """The complete records of steps <= `step` in `path`, as lines."""
  kept = []
  with files.open_read(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue  # Torn by a kill mid-write.
      if isinstance(record, dict) and record.get("step", step + 1) <= step:
        kept.append(json.dumps(record) + "\n")
  return kept


def _truncate_after(path: str, step: int) -> None:
  """Keeps the complete records of steps <= `step`; rewrites the file atomically."""
  files.write_atomic(path, "".join(_kept(path, step)))

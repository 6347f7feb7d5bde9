"""SIGTERM, SIGINT and SIGHUP outside the training loop (train._StopSignals handles them in it,
saving a checkpoint first).

Once the library is imported and JAX started (main._start_up; before that a signal ends the
process at once), a signal outside the loop raises TrainingInterrupted: every file is written
whole (atomically), so nothing is lost and the same command resumes. C++ code that calls back
into Python can still swallow a handler's exception, so the signal is also recorded, and the
training loop stops on it (`received`).
"""

from __future__ import annotations

import signal

from dnn_jax.errors import TrainingInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_received: list[int] = []


def _interrupted(signum: int) -> TrainingInterrupted:
  return TrainingInterrupted(
      f"stopped by {signal.Signals(signum).name} before the run finished; checkpoints and "
      "results in the workdir are intact; rerun the same command to resume", int(signum))


def _raise(signum, frame):
  del frame
  _received.append(int(signum))
  raise _interrupted(signum)


def install() -> None:
  """From here on, a signal outside the training loop raises TrainingInterrupted."""
  for sig in SIGNALS:
    signal.signal(sig, _raise)


def received() -> int:
  """The first signal received since install(), or 0."""
  return _received[0] if _received else 0

"""SIGTERM, SIGINT and SIGHUP outside the training loop (train._StopSignals handles them in it,
saving a checkpoint first).

Outside the loop a signal raises TrainingInterrupted at once: every file is written whole
(atomically), so nothing is lost and the same command resumes. A handler's exception can be
lost, though, when the signal lands inside a C extension's initialisation (importing JAX takes
seconds); the signal is therefore also recorded, and `check()` (after start-up) and the training
loop act on it.
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


def check() -> None:
  """Raises TrainingInterrupted if a signal arrived whose exception may have been lost."""
  if _received:
    raise _interrupted(_received[0])

"""Atomic file writes: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile


def write_atomic(path: str, data: str | bytes | bytearray) -> None:
  """Writes `data` (text or bytes) to `path`: a private temporary file in the same folder,
  flushed to disk, then renamed over `path`."""
  folder = os.path.dirname(path) or "."
  try:
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
  except OSError as e:  # Name the file the caller wanted, not the temporary one.
    raise cannot_write(path, e) from e
  try:
    with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private (0600); results are ordinary files.
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError):
      raise cannot_write(path, e) from e
    raise


def cannot_write(path: str, e: OSError, what: str = "") -> OSError:
  """`e` (a full disk, a read-only folder) as an OSError that names `path` (and `what` was
  being written there), for the one line main prints."""
  return OSError(e.errno, f"cannot write {what + ' to ' if what else ''}{path}: {e.strerror}",
                 path)


def describe_os_error(e: OSError) -> str:
  """One line for an OSError: its message, and the file it concerns unless already named."""
  message = e.strerror or str(e)
  if e.filename and str(e.filename) not in message:
    message = f"{e.filename}: {message}"
  return message


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON, atomically."""
  write_atomic(path, json.dumps(obj, indent=1) + "\n")

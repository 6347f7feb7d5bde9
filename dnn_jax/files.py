"""Atomic file writes: a crash leaves the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os


def write_atomic(path: str, data: str | bytes | bytearray) -> None:
  """Writes `data` (text or bytes) to `path` through a temporary file and a rename."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w" if isinstance(data, str) else "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, obj) -> None:
  """Writes `obj` as indented JSON, atomically."""
  write_atomic(path, json.dumps(obj, indent=1) + "\n")

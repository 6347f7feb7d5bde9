"""Files of a workdir, local or in Cloud Storage (gs://BUCKET/PATH).

Local files are written atomically: a crash leaves the old file or the new one, never half of
either (a temporary file in the same folder, flushed, then renamed over the target). gs://
paths go through etils.epath (gcsfs): one object write is atomic by itself, so they are written
directly; object stores have no folders, so `makedirs` does nothing there (gcsfs would create a
mistyped bucket). Every helper takes and returns paths as strings and leaves local paths to the
os functions the library always used.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import json
import os
import re
import shutil
import tempfile

from dnn_jax.errors import UserError

_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def is_remote(path) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path."""
  return "://" in str(path)


def check_path(path: str, what: str = "--workdir") -> str:
  """`path` as the library uses it: a local path unchanged, a gs:// URL without trailing
  slashes. A UserError naming `what` for another scheme, a missing or malformed bucket, an
  empty path component, or gcsfs not installed."""
  if not is_remote(path):
    return path
  scheme, rest = path.split("://", 1)
  if scheme != "gs":
    raise UserError(f"{what} {path}: only gs:// (Cloud Storage) URLs are supported; give a "
                    "gs://BUCKET/PATH URL or a local path")
  bucket, _, key = rest.rstrip("/").partition("/")
  if not bucket:
    raise UserError(f"{what} {path}: no bucket; give gs://BUCKET/PATH")
  if not _BUCKET_NAME.fullmatch(bucket):
    raise UserError(f"{what} {path}: {bucket!r} is not a Cloud Storage bucket name")
  if key and "" in key.split("/"):
    raise UserError(f"{what} {path}: empty path component ('//')")
  if importlib.util.find_spec("gcsfs") is None:
    raise UserError(f"{what} {path}: gs:// paths need gcsfs: pip install 'dnn_jax[gcs]'")
  return f"gs://{bucket}/{key}" if key else f"gs://{bucket}"


def _remote(path: str):
  import fsspec.config  # Only for URLs: local runs never import gcsfs.
  # Objects change behind gcsfs's back (tensorstore writes the checkpoints, other processes
  # and hosts the rest): no listings cached, every query asks the bucket. Set before the first
  # gs:// filesystem is made, which is this module's (Orbax's come after).
  fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)
  from etils import epath
  return epath.Path(path)


@contextlib.contextmanager
def _remote_errors(path: str, writing: bool = False):
  """Turns what gcsfs and google-auth raise into OSErrors that name `path` and say why in a
  few words (main prints them as one line)."""
  try:
    yield
  except FileNotFoundError as e:
    if writing:
      raise OSError(errno.ENOENT, "not found: does the bucket exist?", path) from e
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path) from e
  except OSError as e:
    if e.strerror and e.filename:
      raise
    raise OSError(e.errno or errno.EIO, e.strerror or _reason(e), path) from e
  except Exception as e:  # pylint: disable=broad-except
    raise OSError(errno.EIO, _reason(e), path) from e


def _reason(e: BaseException) -> str:
  text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def absolute(path: str) -> str:
  """An absolute local path; a URL unchanged."""
  return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  with _remote_errors(path):
    return _remote(path).exists()


def lexists(path: str) -> bool:
  """Like exists; a local dangling symlink exists."""
  return exists(path) if is_remote(path) else os.path.lexists(path)


def isdir(path: str) -> bool:
  """A local folder; for a URL, a prefix that holds objects."""
  if not is_remote(path):
    return os.path.isdir(path)
  with _remote_errors(path):
    return _remote(path).is_dir()


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  with _remote_errors(path):
    return _remote(path).is_file()


def listdir(path: str) -> list[str]:
  """The names in a folder (os.listdir's order locally; sorted for a URL)."""
  if not is_remote(path):
    return os.listdir(path)
  with _remote_errors(path):
    return sorted(p.name for p in _remote(path).iterdir())


def makedirs(path: str) -> None:
  """os.makedirs(exist_ok=True); nothing for a URL (objects need no folders)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
  if not is_remote(path):
    os.remove(path)
    return
  with _remote_errors(path):
    _remote(path).unlink()


def rmtree(path: str) -> None:
  """Removes a folder and everything in it (for a URL: every object under the prefix)."""
  if not is_remote(path):
    shutil.rmtree(path)
    return
  with _remote_errors(path):
    _remote(path).rmtree()


def move(src: str, dst: str) -> None:
  """shutil.move locally. For a URL (no renames on object stores): every object under `src`
  copied to `dst`, then `src` removed."""
  if not is_remote(src):
    shutil.move(src, dst)
    return
  with _remote_errors(src):
    _copy_tree(_remote(src), _remote(dst))
    _remote(src).rmtree()


def _copy_tree(src, dst) -> None:
  for child in src.iterdir():
    if child.is_dir():
      _copy_tree(child, dst / child.name)
    else:
      child.copy(dst / child.name, overwrite=True)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  with _remote_errors(path):
    return _remote(path).read_bytes()


def open_read(path: str, mode: str = "r", **kwargs):
  """open(path, mode, **kwargs) for reading; a URL's object is read whole and served from
  memory (text: UTF-8 unless `encoding` says otherwise; `newline` as open's)."""
  if not is_remote(path):
    return open(path, mode, **kwargs)  # pylint: disable=consider-using-with
  if any(c in mode for c in "wax+"):
    raise ValueError(f"open_read: mode {mode!r} writes")
  data = io.BytesIO(read_bytes(path))
  if "b" in mode:
    return data
  return io.TextIOWrapper(data, encoding=kwargs.get("encoding") or "utf-8",
                          errors=kwargs.get("errors"), newline=kwargs.get("newline"))


def put(path: str, data: str | bytes | bytearray) -> None:
  """Writes `data` to `path` in one go, not atomically for a local path (write_atomic is):
  probes, and gs:// objects, whose single write is atomic."""
  if not is_remote(path):
    with open(path, "w" if isinstance(data, str) else "wb") as f:
      f.write(data)
    return
  with _remote_errors(path, writing=True):
    _remote(path).write_bytes(data.encode() if isinstance(data, str) else bytes(data))


def write_atomic(path: str, data: str | bytes | bytearray) -> None:
  """Writes `data` (text or bytes) to `path`: a private temporary file in the same folder,
  flushed to disk, then renamed over `path`. A gs:// object is written directly (an object
  write is atomic)."""
  if is_remote(path):
    try:
      put(path, data)
    except OSError as e:
      raise cannot_write(path, e) from e
    return
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

"""Atomic writes of results and plots: a failure leaves the old file and no temporary."""

import os
import re

import numpy as np
import pytest

from dnn_jax import files, plots


def test_write_atomic_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "summary.json"
  files.write_json(str(path), {"accuracy": 0.5})
  monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "disk full")))
  with pytest.raises(OSError, match="disk full"):
    files.write_json(str(path), {"accuracy": 0.9})
  assert path.read_text() == '{\n "accuracy": 0.5\n}\n'
  assert os.listdir(tmp_path) == ["summary.json"]


def test_plot_save_writes_a_png_and_a_failed_render_keeps_the_old_one(tmp_path, monkeypatch):
  path = tmp_path / "accuracy.png"
  plots.grid_heatmap(np.arange(6.0).reshape(2, 3), str(path), "grid")
  old = path.read_bytes()
  assert old.startswith(b"\x89PNG\r\n\x1a\n")
  assert oct(path.stat().st_mode & 0o777) == "0o644"

  from matplotlib.figure import Figure

  def broken_savefig(self, target, **kwargs):  # Some bytes, then the renderer fails.
    target.write(b"\x89PNG partial")
    raise RuntimeError("renderer failed")

  monkeypatch.setattr(Figure, "savefig", broken_savefig)
  with pytest.raises(RuntimeError, match="renderer failed"):
    plots.grid_heatmap(np.ones((2, 3)), str(path), "grid")
  assert path.read_bytes() == old
  assert os.listdir(tmp_path) == ["accuracy.png"]


def test_check_path_keeps_local_paths_and_normalises_gs_urls():
  assert files.check_path("~/runs/x") == "~/runs/x" and not files.is_remote("/tmp/x")
  assert files.check_path("gs://my-bucket/runs/x/") == "gs://my-bucket/runs/x"
  assert files.check_path("gs://my-bucket") == "gs://my-bucket"
  assert files.is_remote("gs://my-bucket/x")
  assert files.absolute("gs://b/x") == "gs://b/x" and files.absolute("x") == os.path.abspath("x")


@pytest.mark.parametrize("url,message", [
    ("gs://", "no bucket; give gs://BUCKET/PATH"),
    ("gs:///run", "no bucket"),
    ("s3://bucket/run", "only gs:// (Cloud Storage) URLs are supported"),
    ("gs://Bucket/run", "'Bucket' is not a Cloud Storage bucket name"),
    ("gs://bucket/a//b", "empty path component"),
])
def test_check_path_names_what_is_wrong_with_a_url(url, message):
  from dnn_jax.errors import UserError
  with pytest.raises(UserError, match=f"^--workdir {re.escape(url)}: .*{re.escape(message)}"):
    files.check_path(url)


def test_gs_urls_without_gcsfs_name_the_extra(monkeypatch):
  import importlib.util
  from dnn_jax.errors import UserError
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "gcsfs" else real(n))
  with pytest.raises(UserError, match=r"^config.export.dir gs://b-1/x: gs:// paths need gcsfs: "
                                      r"pip install 'dnn_jax\[gcs\]'$"):
    files.check_path("gs://b-1/x", "config.export.dir")


def test_a_gs_workdir_logs_and_locks_locally():
  import tempfile
  from dnn_jax import workdir as layout
  assert layout.logs_dir("gs://b-1/runs/x") == os.path.join(
      tempfile.gettempdir(), "dnn_jax_logs", "gs", "b-1", "runs", "x")
  assert layout.logs_dir("/w") == "/w/logs"
  with layout.training_lock("gs://b-1/runs/x"):  # No flock on a bucket: not taken.
    pass

"""Atomic writes of results and plots: a failure leaves the old file and no temporary."""

import os

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

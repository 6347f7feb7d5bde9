"""Preemption and faults: signals, SIGKILL at arbitrary moments, corrupt checkpoints, NaNs."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from dnn_jax import train
from dnn_jax.metric_writers import MetricWriter
from tests.conftest import ROOT
from tests.helpers import rewrite_with_other_values, truncate_data_files

ARGS = ["--config=configs/tiny.py", "--config.train.num_steps=120",
        "--config.train.log_every_steps=2", "--config.checkpoint.every_steps=10",
        "--config.checkpoint.max_to_keep=3"]


def _start(workdir, *extra):
  return subprocess.Popen([sys.executable, "-m", "dnn_jax.main", f"--workdir={workdir}",
                           *ARGS, *extra], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _logged_step(workdir) -> int:
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = f.read().splitlines()
    return json.loads(lines[-1])["step"] if lines else 0
  except (FileNotFoundError, json.JSONDecodeError, IndexError):
    return 0


def _wait_for_step(proc, workdir, step, timeout=120):
  t = time.time()
  while _logged_step(workdir) < step:
    assert proc.poll() is None, proc.communicate()
    assert time.time() - t < timeout
    time.sleep(0.02)


def _sha(workdir):
  with open(os.path.join(workdir, "train_summary.json")) as f:
    return json.load(f)["params_sha256"]


@pytest.fixture(scope="module")
def reference_sha(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  proc = _start(workdir)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  return _sha(workdir)


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.core),
                                 signal.SIGINT, signal.SIGHUP])
def test_signal_saves_a_checkpoint_and_the_same_command_resumes(tmp_path, reference_sha, sig):
  workdir = str(tmp_path)
  proc = _start(workdir)
  _wait_for_step(proc, workdir, 24)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, err
  assert f"stopped by {signal.Signals(sig).name} at step" in err and "Traceback" not in err
  stopped_at = int(err.split(" at step ")[1].split(";")[0])
  assert str(stopped_at) in os.listdir(os.path.join(workdir, "checkpoints"))
  proc = _start(workdir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert f"Resumed from {workdir}/checkpoints at step {stopped_at}" in out
  assert _sha(workdir) == reference_sha


def test_sigkill_at_arbitrary_moments_then_resume_gives_the_same_run(tmp_path, reference_sha):
  workdir = str(tmp_path)
  for kill_at in (7, 31, 58, 95):  # Between, just after and during checkpoint saves.
    proc = _start(workdir)
    _wait_for_step(proc, workdir, kill_at)
    proc.kill()
    proc.communicate()
  proc = _start(workdir)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err
  assert _sha(workdir) == reference_sha
  # The metric log reads as an uninterrupted run's: what a killed run logged after its last
  # checkpoint was dropped on resume, not logged twice.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == list(range(2, 121, 2)), steps


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_config):
  workdir = str(tmp_path)
  first = train.train_and_evaluate(tiny_config, workdir)  # Checkpoints 5..20 (keeps 10).
  truncate_data_files(os.path.join(workdir, "checkpoints", "20"))
  again = train.train_and_evaluate(tiny_config, workdir)
  assert again["resumed_from_step"] == 15
  assert again["params_sha256"] == first["params_sha256"]
  assert os.listdir(os.path.join(workdir, "corrupt_checkpoints"))  # Moved aside, not deleted.


def test_bytes_changed_inside_a_checkpoint_are_caught_and_the_run_ends_as_uninterrupted(
    tmp_path, tiny_config):
  workdir = str(tmp_path)
  first = train.train_and_evaluate(tiny_config, workdir)  # Checkpoints 5..20.
  import shutil
  shutil.rmtree(os.path.join(workdir, "checkpoints", "20"))
  rewrite_with_other_values(os.path.join(workdir, "checkpoints", "15"))
  again = train.train_and_evaluate(tiny_config, workdir)
  assert again["resumed_from_step"] == 10
  assert again["params_sha256"] == first["params_sha256"]
  assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 1


def test_eval_and_export_fall_back_past_unreadable_and_garbled_checkpoints(tmp_path,
                                                                           tiny_config):
  from dnn_jax import evaluate, main
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config, workdir)  # Checkpoints 5..20.
  truncate_data_files(os.path.join(workdir, "checkpoints", "20"))
  record = evaluate.evaluate(tiny_config, workdir)
  assert record["checkpoint_step"] == 15
  with open(os.path.join(workdir, "checkpoints", "15", "config", "metadata"), "w") as f:
    f.write("{x")  # garbled metadata
  config = tiny_config.copy_and_resolve_references()
  config.export.subnet = "D2W1"
  manifest = main.run(config, workdir, "export")
  assert manifest["checkpoint_step"] == 10
  assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 2


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir, "--config.train.num_steps=20")
  proc.communicate(timeout=300)
  for step in os.listdir(os.path.join(workdir, "checkpoints")):
    truncate_data_files(os.path.join(workdir, "checkpoints", step))
  proc = _start(workdir, "--config.train.num_steps=20")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "no readable checkpoint in" in err, err
  # Orbax's and asyncio's tracebacks, where their timing produced any, went to the log
  # (main_test provokes them to show where they go).
  assert len(err.splitlines()) == 1, err
  assert len(os.listdir(os.path.join(workdir, "corrupt_checkpoints"))) == 2  # steps 10, 20
  proc = _start(workdir, "--config.train.num_steps=20")  # The same command again: still no.
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "no readable checkpoint, only unreadable ones in" in err, err


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  proc = _start(workdir, "--config.train.learning_rate=1e9", "--config.train.num_steps=40")
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: non-finite loss at step "), err
  assert not os.path.exists(os.path.join(workdir, "train_summary.json"))


def test_unwritable_workdir_is_a_clear_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  proc = _start(str(blocker / "run"))
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 2 and "is not writable" in err and "Traceback" not in err, err


def test_disk_full_during_a_save_is_a_clear_error_and_latest_stays_good(tmp_path, tiny_config,
                                                                       monkeypatch):
  import errno
  from dnn_jax import checkpointing
  from dnn_jax.errors import RunError
  real_save, calls = checkpointing.save, []

  def failing_save(*args):
    calls.append(1)
    if len(calls) == 3:  # The third save (step 15) finds the disk full, as Orbax says it.
      raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed '
                       "to write 14391 bytes to file 11: No space left on device "
                       "[os_error_code='28']")
    real_save(*args)

  def failing_close(self):  # The full disk fails the metric writers' last flush too.
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(checkpointing, "save", failing_save)
  monkeypatch.setattr(MetricWriter, "close", failing_close)
  with pytest.raises(RunError, match="could not write the checkpoint of step 15 .*[(]No space "
                                     "left on device[)]; the previous one, step 10, is intact"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  monkeypatch.undo()
  assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()) == [5, 10]
  assert train.train_and_evaluate(tiny_config, str(tmp_path))["resumed_from_step"] == 10


def test_resuming_with_a_different_network_is_a_config_error_not_corruption(tmp_path,
                                                                            tiny_config):
  from dnn_jax.errors import UserError
  workdir = str(tmp_path)
  tiny_config.train.num_steps = 10
  train.train_and_evaluate(tiny_config, workdir)
  steps = sorted(os.listdir(tmp_path / "checkpoints"))
  changed = tiny_config.copy_and_resolve_references()
  changed.model.num_groups *= 2
  with pytest.raises(UserError, match=r"checkpoint step 10 .* different network: "
                                      r"model.num_groups=2 \(saved\) vs 4 \(given\)"):
    train.train_and_evaluate(changed, workdir)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == steps  # Nothing moved aside.
  assert not os.path.exists(tmp_path / "corrupt_checkpoints")
  changed = tiny_config.copy_and_resolve_references()
  changed.model.head_reduction = "mean"  # Same parameter shapes, another network: refused.
  with pytest.raises(UserError, match=r"model.head_reduction='sum' \(saved\) vs 'mean'"):
    train.train_and_evaluate(changed, workdir)
  changed = tiny_config.copy_and_resolve_references()
  changed.model.conv_form = "blocks:2"  # Runs the same network: resumes.
  changed.train.num_steps = 15
  assert train.train_and_evaluate(changed, workdir)["resumed_from_step"] == 10


def test_resuming_with_other_class_names_of_the_same_count_is_refused(tiny_config):
  from dnn_jax import checkpointing
  saved = checkpointing.Saved(tiny_config, ("cat", "dog", "emu"), (8, 8, 1), 10)
  diffs = checkpointing.network_differences(saved, tiny_config, ("ant", "bee", "cow"), 1)
  assert diffs == ["classes cat, dog, emu (saved) vs ant, bee, cow (given data)"]
  assert checkpointing.network_differences(saved, tiny_config, ("cat", "dog", "emu"), 1) == []


def test_evaluating_images_of_another_shape_stops_before_anything_is_written(tmp_path,
                                                                             tiny_config,
                                                                             monkeypatch):
  import dataclasses
  from dnn_jax import evaluate, input_pipeline
  from dnn_jax.errors import DataError
  workdir = str(tmp_path)
  tiny_config.train.num_steps = 5
  train.train_and_evaluate(tiny_config, workdir)
  grid = (tmp_path / "eval" / "grid.json").read_text()
  real = input_pipeline.load_dataset

  def smaller(*args, **kwargs):  # the same data at 4 x 4 pixels
    ds = real(*args, **kwargs)
    crop = lambda s: input_pipeline.Split(s.images[:, :4, :4], s.labels)
    return dataclasses.replace(ds, train=crop(ds.train), eval=crop(ds.eval))
  monkeypatch.setattr(input_pipeline, "load_dataset", smaller)
  with pytest.raises(DataError, match=r"images of shape \(4, 4, 1\), but the checkpoint's "
                                      r"model was trained on \(8, 8, 1\)"):
    evaluate.evaluate(tiny_config, workdir)
  assert (tmp_path / "eval" / "grid.json").read_text() == grid


def _mount_tmpfs(path, size):
  os.makedirs(path)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")


def test_a_really_full_disk_is_one_line_and_the_last_checkpoint_stays_good(tmp_path):
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "400k")  # Room for the checkpoints of steps 5 and 10, not 15.
  try:
    workdir = disk / "run"
    proc = _start(workdir, "--config.train.num_steps=20", "--config.checkpoint.every_steps=5")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    # Room for steps 5 and 10, not 15; the library's log lines on the same disk (how many is
    # up to Orbax's and asyncio's timing) can fill it one checkpoint sooner.
    lines = err.strip().splitlines()
    match = len(lines) == 1 and re.fullmatch(
        rf"error: could not write the checkpoint of step (10|15) to {re.escape(str(workdir))}"
        r"/checkpoints \(No space left on device\); the previous one, step (5|10), is intact",
        lines[0])
    assert match and int(match[2]) == int(match[1]) - 5, err
    assert not [f for f in os.listdir(disk / "run") if f.startswith(".write_probe")]
    result = subprocess.run([sys.executable, "-m", "dnn_jax.main", f"--workdir={workdir}",
                             *ARGS, "--mode=eval"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "No space left on device" in result.stderr and "eval/" in result.stderr
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_a_second_training_in_the_same_workdir_is_refused(tmp_path, tiny_config):
  from dnn_jax import workdir as layout
  from dnn_jax.errors import UserError
  with layout.training_lock(str(tmp_path)):
    with pytest.raises(UserError, match=f"--workdir {tmp_path} is in use by another training "
                                        rf"\(pid {os.getpid()} on "):
      train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")  # The first one's files untouched.
  tiny_config.train.num_steps = 5
  assert train.train_and_evaluate(tiny_config, str(tmp_path))["final_step"] == 5


def test_a_failed_write_probe_leaves_no_file(tmp_path, monkeypatch):
  import builtins
  import errno
  from dnn_jax.errors import UserError
  real_open = builtins.open

  class FullFile:
    def __init__(self, path, mode):
      self._f = real_open(path, mode)

    def __enter__(self):
      return self

    def write(self, _):
      raise OSError(errno.ENOSPC, "No space left on device")

    def __exit__(self, *exc):
      self._f.close()

  from dnn_jax import files
  monkeypatch.setattr(files, "open", FullFile, raising=False)  # The probe is a files.put.
  with pytest.raises(UserError, match="is not writable [(]No space left on device[)]"):
    train._check_writable(str(tmp_path))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("sig,when", [(signal.SIGINT, "importing"),
                                      (signal.SIGTERM, "compiling")])
def test_a_signal_during_start_up_is_one_line(tmp_path, sig, when):
  proc = _start(tmp_path)
  if when == "importing":
    time.sleep(0.5)
  else:  # The model is built; the first step is being compiled.
    assert proc.stdout.readline().startswith("DNNet: ")
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"stopped by {signal.Signals(sig).name}"), err

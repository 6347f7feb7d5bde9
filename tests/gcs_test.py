"""gs:// workdirs against a local Cloud Storage emulator (no cloud, no credentials).

The emulator (gcp-storage-emulator, run by tests/gcs_emulator.py with the object generations
tensorstore needs) is found through STORAGE_EMULATOR_HOST (gcsfs, google-cloud-storage) and
TENSORSTORE_GCS_HTTP_URL (Orbax's tensorstore), as a real bucket would be through credentials:
the library has no code path of its own for it. Skipped without the `test` extra's
gcp-storage-emulator and the `gcs` extra's gcsfs.
"""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from dnn_jax import export
from dnn_jax import files
from dnn_jax.metric_writers import MetricWriter
from tests.conftest import ROOT

_MISSING = [m for m in ("gcp_storage_emulator", "gcsfs") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"{', '.join(_MISSING)} not installed: pip install -e '.[test,gcs]'")

ARGS = ["--config=configs/digits.py", "--config.train.num_steps=60",
        "--config.train.log_every_steps=10", "--config.checkpoint.every_steps=20"]
# Tensorstore's C++ logs this on stderr wherever no gcloud credentials file exists (also on a
# TPU VM, which then uses the metadata server); it cannot reach the Python log.
_CREDENTIALS_LINE = "google_auth_provider.cc"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """gs://bucket on an emulator at a free 127.0.0.1 port; the environment points there."""
  port = _free_port()
  log = tmp_path_factory.mktemp("emulator") / "emulator.log"
  with open(log, "w") as out:
    proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "tests", "gcs_emulator.py"), "start",
         "--host", "127.0.0.1", "--port", str(port), "--in-memory", "--default-bucket",
         "bucket"], stdout=out, stderr=subprocess.STDOUT)
  url = f"http://127.0.0.1:{port}"
  deadline = time.time() + 60
  while True:
    try:
      urllib.request.urlopen(url + "/", timeout=2).close()
      break
    except OSError:
      assert proc.poll() is None and time.time() < deadline, log.read_text()
      time.sleep(0.2)
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
  os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
  yield "gs://bucket"
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.terminate()
  proc.wait(timeout=30)


def test_helpers_read_write_list_move_and_remove_objects(bucket):
  root = f"{bucket}/helpers"
  files.write_json(f"{root}/a/record.json", {"x": 1})
  files.write_atomic(f"{root}/a/b/bytes.bin", b"\x00\x01")
  files.makedirs(f"{root}/never")  # Nothing to create on an object store.
  assert not files.exists(f"{root}/never")
  assert files.listdir(root) == ["a"] and files.listdir(f"{root}/a") == ["b", "record.json"]
  assert files.isdir(f"{root}/a") and files.isfile(f"{root}/a/record.json")
  assert not files.isdir(f"{root}/a/record.json")
  with files.open_read(f"{root}/a/record.json") as f:
    assert json.load(f) == {"x": 1}
  assert files.read_bytes(f"{root}/a/b/bytes.bin") == b"\x00\x01"
  files.move(f"{root}/a", f"{root}/moved/a-1")  # As checkpoints are moved aside.
  assert not files.exists(f"{root}/a")
  assert files.read_bytes(f"{root}/moved/a-1/b/bytes.bin") == b"\x00\x01"
  files.rmtree(f"{root}/moved")
  assert not files.exists(f"{root}/moved")
  with pytest.raises(FileNotFoundError):
    files.read_bytes(f"{root}/missing.json")


def test_a_missing_bucket_is_one_line_naming_the_object(bucket):
  del bucket
  with pytest.raises(OSError) as e:
    files.write_json("gs://no-such-bucket/run/x.json", {})
  assert files.describe_os_error(e.value) == (
      "cannot write gs://no-such-bucket/run/x.json: not found: does the bucket exist?")


def _records(path):
  with files.open_read(path) as f:
    return [json.loads(line) for line in f]


def test_metric_writer_uploads_on_sync_and_drops_steps_after_a_resume(bucket):
  workdir = f"{bucket}/metrics"
  writer = MetricWriter(workdir)
  for step in (1, 2, 3):
    writer.write_scalars(step, {"loss": 1.0 / step})
  assert _records(f"{workdir}/metrics.jsonl") == []  # Uploaded every SYNC_SECONDS ...
  writer.sync()  # ... and before every checkpoint.
  assert [r["step"] for r in _records(f"{workdir}/metrics.jsonl")] == [1, 2, 3]
  writer.close()
  writer = MetricWriter(workdir, start_step=2)  # Resumed at 2: step 3 goes.
  writer.write_scalars(3, {"loss": 0.25})
  writer.close()
  assert _records(f"{workdir}/metrics.jsonl") == [
      {"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}, {"step": 3, "loss": 0.25}]
  events = files.listdir(f"{workdir}/tensorboard")  # One event file per run, as locally.
  assert len(events) == 2 and all(n.startswith("events.out.tfevents.") for n in events)


def test_export_upload_replaces_the_old_files_and_writes_the_manifest_last(bucket, tmp_path):
  out = f"{bucket}/export/D1W1"
  for i, names in enumerate([("model.stablehlo", "old.onnx"), ("model.stablehlo",)]):
    new = tmp_path / str(i)
    new.mkdir()
    for name in names + (export.MANIFEST,):
      (new / name).write_text(f"{name} {i}")
    export._upload_dir(str(new), out)
  assert files.listdir(out) == ["manifest.json", "model.stablehlo"]
  assert files.read_bytes(f"{out}/manifest.json") == b"manifest.json 1"


def _main(*args, env):
  return subprocess.run([sys.executable, "-m", "dnn_jax.main", *args], cwd=ROOT, env=env,
                        text=True, capture_output=True, timeout=600)


def _own_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if _CREDENTIALS_LINE not in line]


def test_train_killed_resumed_then_eval_export_select_in_a_bucket(bucket, tmp_path):
  """Trains into gs://bucket/run, SIGKILLed after its first checkpoint, resumed from the
  bucket: the same parameters as an uninterrupted local run. Then eval, export and select
  write into the bucket, and an unreadable checkpoint is moved aside there. Library logs go
  to a local folder, not the terminal."""
  env = dict(os.environ, TMPDIR=str(tmp_path), JAX_PLATFORMS="cpu")
  local = _main(f"--workdir={tmp_path / 'local'}", *ARGS, env=env)
  assert local.returncode == 0, local.stderr
  with open(tmp_path / "local" / "train_summary.json") as f:
    reference = json.load(f)["params_sha256"]

  run = f"{bucket}/run"
  with open(tmp_path / "killed.err", "w") as err:
    proc = subprocess.Popen([sys.executable, "-m", "dnn_jax.main", f"--workdir={run}", *ARGS],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
  for line in proc.stdout:  # Step 30 is trained after checkpoint 20 was written whole.
    if line.startswith("step 30/"):
      break
  else:
    pytest.fail(f"the run ended before step 30: {(tmp_path / 'killed.err').read_text()}")
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert "20" in files.listdir(f"{run}/checkpoints")

  resumed = _main(f"--workdir={run}", *ARGS, env=env)
  assert resumed.returncode == 0, resumed.stderr
  assert f"Resumed from {run}/checkpoints at step 20" in resumed.stdout
  assert _own_lines(resumed.stderr) == [], resumed.stderr
  summary = json.loads(files.read_bytes(f"{run}/train_summary.json"))
  assert summary["params_sha256"] == reference and summary["resumed_from_step"] == 20
  # The metrics read as an uninterrupted run's.
  assert [r["step"] for r in _records(f"{run}/metrics.jsonl")] == list(range(10, 61, 10))
  assert files.listdir(f"{run}/tensorboard")
  # gcsfs's notes on every path went to the local log, not the terminal.
  log = tmp_path / "dnn_jax_logs" / "gs" / "bucket" / "run" / "train.log"
  assert "Could not determine bucket type" not in resumed.stderr + resumed.stdout
  assert log.exists()

  evaluated = _main(f"--workdir={run}", *ARGS, "--mode=eval", env=env)
  assert evaluated.returncode == 0 and _own_lines(evaluated.stderr) == [], evaluated.stderr
  grid = json.loads(files.read_bytes(f"{run}/eval/grid.json"))
  assert grid["checkpoint_step"] == 60 and np.shape(grid["accuracy"]) == (4, 4)
  assert files.read_bytes(f"{run}/eval/accuracy.png").startswith(b"\x89PNG")

  exported = _main(f"--workdir={run}", *ARGS, "--mode=export", "--config.export.subnet=D3W2",
                   env=env)
  assert exported.returncode == 0 and _own_lines(exported.stderr) == [], exported.stderr
  out = f"{run}/export/D3W2"
  assert {"manifest.json", "model.stablehlo", "weights.npz", "model.mlir"} <= set(
      files.listdir(out))
  manifest = json.loads(files.read_bytes(f"{out}/manifest.json"))
  assert manifest["checkpoint_step"] == 60 and manifest["accuracy"] == grid["accuracy"][2][1]
  copy = tmp_path / "D3W2"  # The uploaded program runs, with JAX only.
  copy.mkdir()
  for name in ("manifest.json", "model.stablehlo", "weights.npz"):
    (copy / name).write_bytes(files.read_bytes(f"{out}/{name}"))
  assert export.load_and_run(str(copy), np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 10)

  selected = _main(f"--workdir={run}", *ARGS, "--mode=select", "--config.budget.macs=1e9",
                   env=env)
  assert selected.returncode == 0 and _own_lines(selected.stderr) == [], selected.stderr
  choice = json.loads(files.read_bytes(f"{run}/select.json"))
  assert choice["feasible_count"] == 16
  assert set(files.listdir(f"{run}/select")) == {"feasible.md", "feasible.png"}

  # An unreadable latest checkpoint is moved aside inside the bucket; eval uses the previous.
  _truncate_data_objects(f"{run}/checkpoints/60")
  evaluated = _main(f"--workdir={run}", *ARGS, "--mode=eval", env=env)
  assert evaluated.returncode == 0 and _own_lines(evaluated.stderr) == [], evaluated.stderr
  assert json.loads(files.read_bytes(f"{run}/eval/grid.json"))["checkpoint_step"] == 40
  assert "60" not in files.listdir(f"{run}/checkpoints")
  (aside,) = files.listdir(f"{run}/corrupt_checkpoints")
  assert aside.startswith("60-") and "state" in files.listdir(f"{run}/corrupt_checkpoints/{aside}")


def _truncate_data_objects(prefix):
  """tests/helpers.truncate_data_files for objects: every data object cut to a third."""
  for name in files.listdir(prefix):
    path = f"{prefix}/{name}"
    if files.isdir(path):
      _truncate_data_objects(path)
    elif "metadata" not in name and not name.startswith("_"):
      data = files.read_bytes(path)
      files.put(path, data[:max(len(data) // 3, 1)])


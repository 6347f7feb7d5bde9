"""Command line: bad configs fail early with one line and exit code 2; configs validate."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from dnn_jax import config_validation, xla_flags
from dnn_jax.errors import ConfigError
from tests.conftest import ROOT

CONFIGS = ["digits", "cifar10", "cifar10_cpu", "svhn", "tiny"]


@pytest.mark.core
@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_are_valid(name, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config()
  if config.data.source == "image_folder":  # Its data lives outside the repository.
    os.makedirs(tmp_path / "train")
    config.data.root = str(tmp_path)
  config_validation.validate(config, device_count=1)


BAD = [  # (overrides, the field the error must name)
    ({"model.stage_channels": (16, 32), "model.num_groups": 3}, "model.stage_channels"),
    ({"data.source": "mnist"}, "data.source"),
    ({"data.source": "tfds", "data.name": "imagenet"}, "data.name"),
    ({"train.batch_size": 30}, "train.batch_size"),  # 4 devices below
    ({"data.source": "image_folder", "data.root": "/nonexistent/folder"}, "data.root"),
    ({"train.batch_size": 0}, "train.batch_size"),
    ({"model.channels_per_group": (2, 0)}, "model.channels_per_group"),
    ({"model.num_groups": -2}, "model.num_groups"),
    ({"loss.lambda_scheme": "explicit", "loss.lambda_grid": ((1.0, 1.0),)}, "loss.lambda_grid"),
    ({"loss.lambda_scheme": "explicit", "loss.lambda_grid": ((1, 1), (1, -1), (0, 0))},
     "loss.lambda_grid"),
    ({"loss.shallow_share": 1.0}, "loss.shallow_share"),
    ({"train.learning_rate": -0.1}, "train.learning_rate"),
    ({"eval.batch_size": 6}, "eval.batch_size"),
    ({"data.eval_split": "train"}, "data.eval_split"),
    ({"model.blocks_per_stage": (1, 1, 1)}, "model.blocks_per_stage"),
]


@pytest.mark.parametrize("overrides,field", BAD)
def test_invalid_fields_are_named(tiny_config, overrides, field):
  for key, value in overrides.items():
    section, name = key.split(".")
    tiny_config[section][name] = value
  with pytest.raises(ConfigError, match=f"^config.{field}: "):
    config_validation.validate(tiny_config, device_count=4)


def _main(*args, **env):
  return subprocess.run([sys.executable, "-m", "dnn_jax.main", *args], cwd=ROOT, text=True,
                        capture_output=True, env=dict(os.environ, **env), timeout=300)


@pytest.mark.parametrize("override,field", [
    ("--config.model.stage_channels=(16,31)", "config.model.stage_channels"),
    ("--config.loss.lambda_scheme=explicit", "config.loss.lambda_grid"),
    ("--config.data.source=image_folder", "config.data.root"),
])
def test_cli_bad_config_is_one_line_and_exit_code_2(tmp_path, override, field):
  extra = ["--config.model.blocks_per_stage=(1,1)"] if "stage_channels" in override else []
  result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", override, *extra)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # Nothing written.


def test_cli_bad_url_workdir_is_a_clear_error(tmp_path):
  """gs://BUCKET/PATH workdirs work (tests/gcs_test.py); other URLs are one line, exit 2."""
  for workdir, message in [("s3://bucket/run", "only gs:// (Cloud Storage) URLs"),
                           ("gs:///run", "no bucket"),
                           ("gs://Bucket_/run", "is not a Cloud Storage bucket name"),
                           ("gs://bucket/a//b", "empty path component")]:
    result = _main("--config=configs/tiny.py", f"--workdir={workdir}", TMPDIR=str(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (workdir, result.stderr)
    assert lines[0].startswith(f"error: --workdir {workdir}: ") and message in lines[0], lines
  assert not os.path.exists(os.path.join(ROOT, "gs:")) and not os.listdir(tmp_path)


def test_cli_eval_without_a_checkpoint_fails_cleanly(tmp_path):
  result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=eval")
  assert result.returncode == 2 and "no checkpoint in" in result.stderr
  assert "Traceback" not in result.stderr


def test_library_tracebacks_go_to_the_workdir_log_not_the_terminal(tmp_path):
  """What Orbax's background threads and asyncio's closed loops raise, and the warnings of
  its abandoned coroutines, reach the log file (whether a given run raises any is up to their
  timing, so this provokes each kind)."""
  snippet = f"""
import gc, threading
from absl import flags, logging
from dnn_jax import main
flags.FLAGS(["main"]); logging.use_absl_handler()  # What absl.app.run does before main.main.
main._log_to_workdir({str(tmp_path)!r}, "train")
def fail():
  raise RuntimeError("thread failed")
t = threading.Thread(target=fail, name="saver"); t.start(); t.join()
class Bad:
  def __del__(self):
    raise RuntimeError("unraisable failed")
Bad(); gc.collect()
async def metadata():
  pass
metadata(); gc.collect()  # RuntimeWarning: coroutine 'metadata' was never awaited.
logging.flush()
"""
  result = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
  assert result.returncode == 0 and result.stderr == "", result.stderr
  log = (tmp_path / "logs" / "train.log").read_text()
  assert "exception in thread saver" in log and "thread failed" in log, log
  assert "unraisable exception" in log and "unraisable failed" in log, log
  assert "coroutine 'metadata' was never awaited" in log, log
  assert log.count("Traceback") == 2, log


@pytest.mark.core
def test_cli_trains_then_evaluates(tmp_path):
  own = "--xla_force_host_platform_device_count=1"
  result = _main("--config=configs/tiny.py", f"--workdir={tmp_path}",
                 "--config.train.num_steps=6", DNN_JAX_XLA_DEFAULTS="1", XLA_FLAGS=own,
                 JAX_PLATFORMS="cpu")
  assert result.returncode == 0, result.stderr
  assert "step 6/6" in result.stdout and "Evaluated step 6" in result.stdout
  assert os.path.exists(tmp_path / "eval" / "grid.json")
  with open(tmp_path / "train_summary.json") as f:
    recorded = json.load(f)["xla_flags"]
  # The measured CPU defaults for this jaxlib (if any) were set, after the caller's own flags.
  expected = xla_flags.CPU_DEFAULTS.get(xla_flags._jaxlib_version(), {})
  assert recorded.startswith(own), recorded
  for name, value in expected.items():
    assert f"--{name}={value}" in recorded.split(), recorded


@pytest.mark.core
def test_config_file_and_flag_errors_are_one_line_and_exit_code_2(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "noget.py").write_text("X = 1\n")
  (tmp_path / "folder").mkdir()
  workdir = f"--workdir={tmp_path}/run"
  cases = [  # (arguments, the line's start)
      ([f"--config={tmp_path}/missing.py", workdir],
       f"--config={tmp_path}/missing.py: cannot load it ([Errno 2] No such file"),
      ([f"--config={tmp_path}/folder", workdir], "cannot load it ([Errno 21] Is a directory"),
      ([f"--config={tmp_path}/syntax.py", workdir], f"{tmp_path}/syntax.py, line 1:"),
      ([f"--config={tmp_path}/noget.py", workdir], "noget.py defines no get_config()"),
      (["--config=configs/tiny.py", "--config.model.nonexistent=1", workdir],
       "--config.model.nonexistent: the config has no field 'nonexistent'"),
      (["--config=configs/tiny.py", "--config.train.num_steps=abc", workdir],
       "--config.train.num_steps=abc: invalid literal for int()"),
      (["--config=configs/baseline.py:tiny,bogus", workdir], "kind 'bogus' is not one of"),
      (["--config=configs/baseline.py:nobase,plain", workdir], "base 'nobase' is not one of"),
      (["--config=configs/baseline.py:tiny,plain,x", workdir], "WIDTH 'x' is not a number"),
      (["--config=configs/tiny.py", "--mode=bogus", workdir], "--mode=bogus: value should be"),
      (["--config=configs/tiny.py"], "--workdir is required"),
      (["--config=configs/tiny.py", workdir, "--nosuchflag"], "Unknown command line flag"),
      (["--config=configs/tiny.py", workdir, "extra"], "unexpected arguments extra"),
  ]
  for args, start in cases:
    result = _main(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
    assert lines[0].startswith("error: ") and start in lines[0], (args, lines[0])
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("field,value", [("train.warmup_epochs", float("nan")),
                                         ("train.learning_rate", float("inf")),
                                         ("data.std", (float("nan"),))])
def test_non_finite_numbers_are_named_as_such(tiny_config, field, value):
  section, name = field.split(".")
  tiny_config[section][name] = value
  with pytest.raises(ConfigError, match=f"^config.{field}: .* is not a finite number$"):
    config_validation.validate(tiny_config, device_count=1)

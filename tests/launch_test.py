"""Launch scripts: syntax, shellcheck, and the commands they issue (with a stand-in gcloud)."""

import glob
import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.sh")) +
                 glob.glob(os.path.join(ROOT, "experiments", "*.sh")) +
                 [os.path.join(ROOT, ".ci", "run")])


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck():
  result = subprocess.run(["shellcheck", "-x", "-e", "SC1091", *SCRIPTS], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def _fake_gcloud(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "gcloud.log"
  fake = bin_dir / "gcloud"
  fake.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {log}\n')
  fake.chmod(0o755)
  return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"), log


def test_tpu_scripts_issue_the_expected_commands(tmp_path):
  env, log = _fake_gcloud(tmp_path)
  env.update(BUCKET="my-bucket", TPU_NAME="t1", ZONE="z1", ACCELERATOR="v4-32", RUN="r1")
  for script, args in (("tpu_create.sh", []), ("tpu_run.sh", ["--config.train.num_epochs=2"]),
                       ("tpu_delete.sh", [])):
    subprocess.run([os.path.join(ROOT, "launch", script), *args], env=env, check=True)
  create, run, delete = log.read_text().splitlines()
  assert create.startswith("compute tpus tpu-vm create t1 --zone=z1 --accelerator-type=v4-32")
  assert "--worker=all" in run and "--distributed=auto" in run
  assert "--workdir=/gcs/r1" in run and "--config.train.num_epochs=2" in run
  assert "tensorflow_datasets" in run
  assert delete.startswith("compute tpus tpu-vm delete t1 --zone=z1 --quiet")


def test_tpu_run_without_extra_arguments_passes_none(tmp_path):
  env, log = _fake_gcloud(tmp_path)
  env.update(BUCKET="my-bucket", TPU_NAME="t1", ZONE="z1", RUN="r1")
  subprocess.run([os.path.join(ROOT, "launch", "tpu_run.sh")], env=env, check=True)
  run = log.read_text().strip()
  assert run.endswith("--distributed=auto"), run  # Not followed by '' (an empty argument).


def test_tpu_scripts_need_a_bucket(tmp_path):
  env, _ = _fake_gcloud(tmp_path)
  env.pop("BUCKET", None)
  result = subprocess.run([os.path.join(ROOT, "launch", "tpu_run.sh")], env=env,
                          capture_output=True, text=True)
  assert result.returncode == 2 and "set BUCKET" in result.stderr

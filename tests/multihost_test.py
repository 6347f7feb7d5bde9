"""Two local CPU processes (coordinator on 127.0.0.1) train the same model as one process."""

import os
import socket
import subprocess
import sys

import numpy as np

from tests.conftest import ROOT

_DUMP = """
import sys
import jax, numpy as np
from configs import tiny
from dnn_jax import evaluate
c = tiny.get_config()
_, v, _, _, _ = evaluate.load_checkpoint(c, sys.argv[1], 1)
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(v))[0]
np.savez(sys.argv[2], **{jax.tree_util.keystr(p): x for p, x in flat})
"""

ARGS = ["--config=configs/tiny.py", "--config.train.num_steps=12",
        "--config.checkpoint.every_steps=5"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS="--xla_force_host_platform_device_count=1")


def test_two_processes_train_the_same_model_as_one(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  subprocess.run([sys.executable, "-m", "dnn_jax.main", f"--workdir={one}", *ARGS], cwd=ROOT,
                 env=_env(), check=True, capture_output=True, timeout=300)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dnn_jax.main", f"--workdir={two}", *ARGS,
       "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err
  # Only process 0 prints, logs and writes results.
  assert "Training done" in outs[0][0] and "Evaluated" in outs[0][0]
  assert "step" not in outs[1][0] and "Training done" not in outs[1][0]
  assert os.path.exists(os.path.join(two, "eval", "grid.json"))
  dumps = {}
  for name, workdir in (("one", one), ("two", two)):
    path = str(tmp_path / f"{name}.npz")
    subprocess.run([sys.executable, "-c", _DUMP, workdir, path], cwd=ROOT, env=_env(),
                   check=True, capture_output=True, timeout=300)
    with np.load(path) as z:
      dumps[name] = dict(z)
  assert dumps["one"].keys() == dumps["two"].keys()
  for k in dumps["one"]:
    np.testing.assert_allclose(dumps["one"][k], dumps["two"][k], atol=2e-5, rtol=1e-4, err_msg=k)


def test_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
  import signal
  import time
  workdir = str(tmp_path)
  port = _free_port()
  args = ["--config=configs/tiny.py", "--config.train.num_steps=400",
          "--config.train.log_every_steps=4", "--config.checkpoint.every_steps=1000"]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "dnn_jax.main", f"--workdir={workdir}", *args,
       "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=_env(),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  metrics = os.path.join(workdir, "metrics.jsonl")
  t = time.time()
  while not (os.path.exists(metrics) and os.path.getsize(metrics) > 200):
    assert time.time() - t < 240 and all(p.poll() is None for p in procs)
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # Only the second process is told.
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, outs
  steps = {err.split(" at step ")[1].split(";")[0] for _, err in outs}
  assert len(steps) == 1 and steps.pop() in os.listdir(os.path.join(workdir, "checkpoints"))


def test_multi_process_environments_are_detected():
  from dnn_jax import main
  assert not main.multi_process_environment({})
  assert not main.multi_process_environment({"TPU_WORKER_HOSTNAMES": "localhost"})
  assert main.multi_process_environment({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"})
  assert main.multi_process_environment({"SLURM_NTASKS": "4"})
  assert not main.multi_process_environment({"SLURM_NTASKS": "1"})
  assert main.multi_process_environment({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"})

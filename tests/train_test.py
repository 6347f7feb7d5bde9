"""The real training loop on shrunk configs: learning, checkpoints, resume, devices."""

import json
import os
import platform
import shutil
import subprocess
import sys

import jax
import jaxlib
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from dnn_jax import evaluate
from dnn_jax import losses
from dnn_jax import optimizer
from dnn_jax import state as state_lib
from dnn_jax import train
from dnn_jax.errors import UserError
from tests.conftest import ROOT


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _restore_params(workdir, step):
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def _captured_grads(config, loss_overrides):
  """The gradients one train step hands the optimizer, under `loss_overrides`."""
  from dnn_jax import input_pipeline, models
  ds = input_pipeline.load_dataset(config.data)
  setup = state_lib.make_setup(config, 10, 1)
  tx = optimizer.create_optimizer(config.train, 0.0)
  st = state_lib.init_state(setup.model, tx, jax.random.key(0), (8, 8, 1))
  images, labels = ds.train.images[:32], ds.train.labels[:32]
  loss_config = config.loss.copy_and_resolve_references()
  loss_config.update(loss_overrides)
  lam = losses.lambda_grid(loss_config, *models.grid_shape(config.model))
  captured = {}
  tx_capture = optax.GradientTransformation(
      lambda p: (), lambda g, s, p=None: (captured.setdefault("g", g), s))
  _, metrics = train.train_step(st.replace(tx=tx_capture, opt_state=()), images, labels,
                                lam_LxG=lam, seed=0, data_config=config.data,
                                loss_config=loss_config, log_group_grad_norms=True)
  return captured["g"], lam, metrics


def test_head_gradient_mean_scales_only_the_heads(tiny_config):
  g_sum, lam, _ = _captured_grads(tiny_config, {"head_gradient": "sum"})
  g_mean, _, _ = _captured_grads(tiny_config, {"head_gradient": "mean"})
  scale = losses.head_gradient_scale(lam)
  np.testing.assert_allclose(g_mean["exit_2"]["kernel"],
                             g_sum["exit_2"]["kernel"] * scale[1][:, None, None], rtol=1e-5)
  np.testing.assert_allclose(g_mean["block_1"]["conv1"]["kernel"],
                             g_sum["block_1"]["conv1"]["kernel"], rtol=1e-6)


def test_trunk_gradient_mean_scales_the_trunk_by_output_group(tiny_config):
  g_sum, lam, metrics = _captured_grads(tiny_config, {"head_gradient": "sum"})
  g_eq, _, _ = _captured_grads(tiny_config, {"head_gradient": "mean", "trunk_gradient": "mean"})
  trunk = losses.trunk_gradient_scale(lam)  # block_1 feeds exits 2..3: row 1.
  np.testing.assert_allclose(g_eq["block_1"]["conv2"]["kernel"],
                             g_sum["block_1"]["conv2"]["kernel"] * np.repeat(trunk[1], 4),
                             rtol=1e-5)
  np.testing.assert_allclose(g_eq["stem_bn"]["bias"],
                             g_sum["stem_bn"]["bias"] * np.repeat(trunk[0], 4), rtol=1e-5)
  # The logged per-group norms are those of the gradient the optimizer gets.
  norms = losses.group_gradient_norms(g_sum, 2)
  for kind in ("trunk", "head"):
    np.testing.assert_allclose([metrics[f"grad_norm_{kind}_g{j}"] for j in (1, 2)],
                               norms[kind], rtol=1e-6)


def test_training_lowers_the_loss_and_writes_its_outputs(tiny_config, tmp_path):
  tiny_config.train.num_steps = 150
  workdir = str(tmp_path)
  summary = train.train_and_evaluate(tiny_config, workdir)
  assert summary["final_step"] == 150
  records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert records[-1]["loss"] < records[0]["loss"] - 0.3
  assert {"loss", "learning_rate", "images_per_second", "full_exit_accuracy"} <= set(records[0])
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "train_summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk["params_sha256"] == summary["params_sha256"]
  assert {"final_step", "wall_seconds", "params_sha256"} <= set(on_disk)
  # The run records what it ran with.
  assert on_disk["software"]["jax"] == jax.__version__
  assert on_disk["software"]["jaxlib"] == jaxlib.__version__
  assert on_disk["software"]["python"] == platform.python_version()
  assert on_disk["host_cpus"] == len(os.sched_getaffinity(0))

  record = evaluate.evaluate(tiny_config, workdir)
  with open(os.path.join(workdir, "eval", "grid.json")) as f:
    grid = json.load(f)
  assert grid == record
  assert grid["depths"] == [1, 2, 3] and grid["widths"] == [1, 2]
  assert grid["num_examples"] == 359 and grid["split"] == "test"
  assert grid["checkpoint_step"] == 150
  acc = np.array(grid["accuracy"])
  assert acc.shape == (3, 2) and acc[-1, -1] > 0.5
  assert os.path.getsize(os.path.join(workdir, "eval", "accuracy.png")) > 1000


@pytest.mark.core
def test_same_seed_same_run_and_resume_equals_uninterrupted(tiny_config, tmp_path):
  full = str(tmp_path / "full")
  a = train.train_and_evaluate(tiny_config, full)
  again = train.train_and_evaluate(tiny_config.copy_and_resolve_references(),
                                   str(tmp_path / "again"))
  assert again["params_sha256"] == a["params_sha256"]

  # Interrupted after step 10: only the checkpoints up to 10 exist; the same command resumes.
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(full, "checkpoints"), os.path.join(resumed, "checkpoints"))
  for step in os.listdir(os.path.join(resumed, "checkpoints")):
    if step.isdigit() and int(step) > 10:
      shutil.rmtree(os.path.join(resumed, "checkpoints", step))
  b = train.train_and_evaluate(tiny_config, resumed)
  assert b["resumed_from_step"] == 10 and b["final_step"] == 20
  assert b["params_sha256"] == a["params_sha256"]

  # A finished run is not trained further by the same command.
  c = train.train_and_evaluate(tiny_config, full)
  assert c["resumed_from_step"] == 20 and c["params_sha256"] == a["params_sha256"]


def test_adaptive_weighting_keeps_running_exit_losses_across_a_resume(tiny_config, tmp_path):
  tiny_config.loss.adaptive_weight, tiny_config.loss.adaptive_decay = 0.5, 0.5
  tiny_config.train.num_steps = 10
  full = str(tmp_path / "full")
  a = train.train_and_evaluate(tiny_config, full)
  ema = ocp.StandardCheckpointer().restore(os.path.join(full, "checkpoints", "10", "state"))
  ema = np.asarray(ema["loss_ema"])
  assert ema.shape == (3, 2) and np.all(ema > 0) and not np.allclose(ema, 1.0)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(os.path.join(full, "checkpoints", "5"),
                  os.path.join(resumed, "checkpoints", "5"))
  b = train.train_and_evaluate(tiny_config, resumed)
  assert b["resumed_from_step"] == 5 and b["params_sha256"] == a["params_sha256"]
  tiny_config.loss.adaptive_weight = 0.0  # The checkpoint's state has the running losses.
  with pytest.raises(UserError, match="loss.adaptive_weight=0.5 \\(saved\\) vs 0.0"):
    train.train_and_evaluate(tiny_config, resumed)


def test_checkpoint_round_trip_restores_every_array(tiny_config, tmp_path):
  workdir = str(tmp_path)
  tiny_config.train.num_steps = 5
  train.train_and_evaluate(tiny_config, workdir)
  _, variables, step, saved, class_names = evaluate.load_checkpoint(tiny_config, workdir, 1)
  assert step == 5 and class_names == [str(i) for i in range(10)]
  assert json.loads(saved.to_json()) == json.loads(tiny_config.to_json())
  on_disk = _restore_params(workdir, 5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(variables["params"]),
                         on_disk)


def test_evaluation_uses_the_saved_model_config(tiny_config, tmp_path):
  workdir = str(tmp_path)
  tiny_config.train.num_steps = 3
  train.train_and_evaluate(tiny_config, workdir)
  other = tiny_config.copy_and_resolve_references()
  other.model.num_groups = 4
  assert np.array(evaluate.evaluate(other, workdir)["accuracy"]).shape == (3, 2)


_DEVICE_SCRIPT = """
import sys
from configs import tiny
from dnn_jax import train
import jax
import numpy as np
assert jax.device_count() == int(sys.argv[2]), jax.devices()
c = tiny.get_config()
c.train.num_steps = 8
c.train.batch_size = 32
train.train_and_evaluate(c, sys.argv[1])
from dnn_jax import evaluate
_, variables, _, _, _ = evaluate.load_checkpoint(c, sys.argv[1], 1)
flat = jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]
np.savez(sys.argv[1] + "/variables.npz", **{jax.tree_util.keystr(p): x for p, x in flat})
"""


def test_one_and_four_devices_train_the_same_model(tmp_path):
  runs = {}
  for n in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
               JAX_PLATFORMS="cpu")
    workdir = str(tmp_path / f"d{n}")
    subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, workdir, str(n)], cwd=ROOT, env=env,
                   check=True, capture_output=True, text=True)
    with np.load(os.path.join(workdir, "variables.npz")) as z:
      runs[n] = dict(z)
  assert runs[1].keys() == runs[4].keys() and len(runs[1]) > 20
  for name in runs[1]:  # Parameters and BN statistics.
    np.testing.assert_allclose(runs[1][name], runs[4][name], atol=2e-5, rtol=1e-4, err_msg=name)


def test_configs_saved_before_a_field_existed_still_load(tiny_config):
  from dnn_jax import checkpointing
  old = json.loads(tiny_config.to_json())
  del old["model"]["conv_form"], old["loss"]["head_gradient"]  # Fields added later.
  restored = checkpointing.with_defaults(old)
  assert restored.model.conv_form == "auto" and restored.loss.head_gradient == "sum"
  assert restored.model.channels_per_group == (4, 8) and restored.train.num_steps == 20


def test_batch_larger_than_the_train_split_is_a_clear_error(tiny_config, tmp_path):
  from dnn_jax.errors import DataError
  tiny_config.train.batch_size = 4096  # digits: 1,438 training examples
  with pytest.raises(DataError, match="config.train.batch_size: 4096 is more than the 1438 training "):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")

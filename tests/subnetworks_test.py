"""Sub-networks as artifacts: exact slicing, resource grids, budgeted selection, export."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnn_jax import config_base
from dnn_jax import export
from dnn_jax import models
from dnn_jax import resources
from dnn_jax import select
from dnn_jax import subnetwork
from dnn_jax import train
from dnn_jax.errors import RunError, UserError
from tests.conftest import ROOT
from tests.helpers import images as _images
from tests.helpers import model_config as _model_config
from tests.helpers import random_variables as _random_variables


def _paper_model():
  return models.create_model(config_base.base_config().model, 10)


def _resnet32_model():
  cfg = _model_config(num_groups=1, cpg=(16, 32, 64), blocks=(5, 5, 5), causal=False,
                      shortcut="pad")
  return models.create_model(cfg, 10)


@pytest.mark.parametrize("shortcut,exit_head", [("projection", "shared"), ("pad", "shared"),
                                                ("pad", "untied")])
def test_extracted_sub_networks_equal_their_exit_on_every_cell(shortcut, exit_head):
  cfg = _model_config(shortcut=shortcut, exit_head=exit_head)
  model = models.create_model(cfg, 5)
  variables = _random_variables(model, (8, 8, 3))
  x = _images((3, 8, 8, 3))
  fused = model.apply(variables, x)
  for d in range(1, model.num_exits + 1):
    for c in range(1, cfg.num_groups + 1):
      sub, sub_vars = subnetwork.extract(model, variables, d, c)
      assert [k for k in sub_vars["params"] if k.startswith("exit_")] == [f"exit_{d}"]
      chex.assert_trees_all_close(sub.apply(sub_vars, x), fused[:, d - 1, c - 1], atol=1e-4)


def test_extracted_paper_preset_sub_networks_equal_their_exit():
  model = _paper_model()
  variables = _random_variables(model, (32, 32, 3))
  x = _images((2, 32, 32, 3))
  fused = model.apply(variables, x)
  for d, c in [(1, 1), (6, 7), (14, 12), (16, 22)]:
    sub, sub_vars = subnetwork.extract(model, variables, d, c)
    assert sub_vars["params"]["stem"]["kernel"].shape == (3, 3, 3, c)
    chex.assert_trees_all_close(sub.apply(sub_vars, x), fused[:, d - 1, c - 1], atol=2e-3,
                                rtol=1e-4)


def test_sub_network_ids():
  assert subnetwork.parse_subnet_id("D14W12") == (14, 12)
  assert subnetwork.subnet_id(3, 4) == "D3W4"
  with pytest.raises(ValueError, match="D<depth>W<width>"):
    subnetwork.parse_subnet_id("14x12")


def test_paper_preset_macs_reproduce_the_design_notes():
  macs = resources.analytic_grid(_paper_model(), (32, 32, 3), 10)["macs_conv"]
  assert macs.shape == (16, 22)
  assert macs[15, 21] == 68_485_120  # D16W22: the cost of a standard ResNet-32
  assert macs[13, 11] == 18_382_848  # D14W12: the paper's pick under 24M
  assert macs[13, 13] == 24_686_592  # D14W14: over 24M
  assert np.all(np.diff(macs, axis=0) > 0) and np.all(np.diff(macs, axis=1) > 0)
  resnet = resources.analytic_grid(_resnet32_model(), (32, 32, 3), 10)["macs_conv"][:, 0]
  assert resnet[4] == 19_316_736 and resnet[5] == 24_035_328 and resnet[15] == 68_861_952


def test_analytic_params_and_feature_maps_match_the_extracted_arrays():
  cfg = _model_config()
  model = models.create_model(cfg, 5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  grid = resources.analytic_grid(model, (8, 8, 3), 5)
  assert grid["macs"][0, 0] == grid["macs_conv"][0, 0] + 2 * 5  # stem: 2 channels per group
  for d in range(1, model.num_exits + 1):
    for c in range(1, cfg.num_groups + 1):
      sub, sub_vars = subnetwork.extract(model, variables, d, c)
      sub_cfg = cfg.copy_and_resolve_references()
      sub_cfg.num_groups = c
      assert grid["params"][d - 1, c - 1] == models.count_params(sub_vars["params"], sub_cfg)
      shapes = [a.shape for a in jax.tree_util.tree_leaves(jax.eval_shape(
          lambda v, inp: sub.apply(v, inp, capture_intermediates=True,
                                   mutable=["intermediates"])[1], sub_vars,
          jnp.zeros((1, 8, 8, 3))))]
      largest = max(int(np.prod(s[1:])) for s in shapes if len(s) == 4)
      assert grid["largest_feature_map"][d - 1, c - 1] == largest


def test_macs_cross_check_with_xla_cost_analysis():
  # One 3x3 conv: XLA counts only taps that land on the image, the analytic count all 9.
  h = w = 8
  conv = models.CausalConv(features=6, kernel_size=3, num_groups=1, causal=False)
  x = jnp.zeros((1, h, w, 4))
  v = conv.init(jax.random.key(0), x)
  flops = jax.jit(conv.apply).lower(v, x).compile().cost_analysis()["flops"]
  valid_taps = (3 * h - 2) * (3 * w - 2)  # Border outputs lose the taps on the padding.
  assert flops == 2 * valid_taps * 4 * 6
  analytic = 9 * h * w * 4 * 6
  assert analytic > flops / 2
  # A whole plain network: XLA's count sits a little under the analytic one (padded taps
  # skipped) plus elementwise work (BN, ReLU, adds, heads) on top.
  model = _resnet32_model()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  xla = jax.jit(model.apply).lower(variables, jnp.zeros((1, 32, 32, 3))).compile()
  xla_macs = xla.cost_analysis()["flops"] / 2
  analytic_full = resources.analytic_grid(model, (32, 32, 3), 10)["macs"][-1, -1]
  assert 0.85 * analytic_full < xla_macs < 1.02 * analytic_full


def test_measured_grid_compiles_every_cell():
  model = models.create_model(_model_config(blocks=(1, 1, 0), cpg=(2, 2, 2)), 5)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  grid = resources.measured_grid(model, variables, (8, 8, 3), batch_size=4, repeats=2)
  for key in resources.MEASURED:
    assert grid[key].shape == (3, 3) and np.all(np.isfinite(grid[key])) and np.all(grid[key] > 0)


def test_select_picks_the_most_accurate_feasible_cell_and_breaks_ties_by_cost():
  acc = np.array([[0.5, 0.6], [0.7, 0.7], [0.8, 0.9]])
  res = {"macs": np.array([[1, 2], [3, 4], [5, 6]], float),
         "params": np.array([[10, 20], [30, 40], [50, 60]], float)}
  assert select.select(acc, res, {"macs": 4.5})["id"] == "D2W1"  # tie 0.7: fewer MACs
  both = select.select(acc, res, {"macs": 10, "params": 45})
  assert both["id"] == "D2W1" and both["feasible_count"] == 4 and both["params"] == 30
  assert select.select(acc, res, {"macs": 0.5}) is None
  assert select.select(acc, res, {"macs": 10}, columns=[1])["id"] == "D3W1"
  front = select.pareto_front(acc, res, ("macs",))
  assert [r["id"] for r in front] == ["D1W1", "D1W2", "D2W1", "D3W1", "D3W2"]
  with pytest.raises(UserError, match="a budget is a positive finite number"):
    select.check_limits({"macs": 0})
  with pytest.raises(UserError, match="run --mode=resources"):
    select.feasible(res, {"latency_ms": 5.0})


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  from configs import tiny
  workdir = str(tmp_path_factory.mktemp("trained"))
  config = tiny.get_config()
  config.train.num_steps = 30
  train.train_and_evaluate(config, workdir)
  from dnn_jax import evaluate
  evaluate.evaluate(config, workdir)
  return config, workdir


@pytest.mark.core
def test_resources_select_trace_and_export_modes(trained_workdir, tmp_path):
  from dnn_jax import main
  config, workdir = trained_workdir
  config = config.copy_and_resolve_references()
  config.resources.repeats = 2
  main.run(config, workdir, "resources")
  with open(os.path.join(workdir, "resources", "grid.json")) as f:
    grid = json.load(f)
  assert np.array(grid["macs"]).shape == (3, 2)
  assert np.array(grid["latency_ms_batch1"]).shape == (3, 2)
  for name in ("macs", "params", "largest_feature_map", "peak_activation_bytes",
               "latency_ms_batch1", "latency_ms_batch"):
    assert os.path.getsize(os.path.join(workdir, "resources", f"{name}.png")) > 1000

  macs = np.array(grid["macs"])
  config.budget.macs = float(macs[1, 1])
  main.run(config, workdir, "select")
  with open(os.path.join(workdir, "select.json")) as f:
    chosen = json.load(f)
  acc = np.array(json.load(open(os.path.join(workdir, "eval", "grid.json")))["accuracy"])
  ok = macs <= config.budget.macs
  assert chosen["accuracy"] == pytest.approx(acc[ok].max(), abs=1e-6)
  assert chosen["feasible_count"] == ok.sum() and chosen["macs"] <= config.budget.macs
  assert os.path.exists(os.path.join(workdir, "select", "feasible.md"))

  trace = tmp_path / "trace.csv"
  trace.write_text("time,macs,params\n0,%d,\n1,%d,%d\n" % (macs.max(), macs[1, 1], 10 ** 6))
  config.budget.trace = str(trace)
  main.run(config, workdir, "trace")
  with open(os.path.join(workdir, "trace", "trace.json")) as f:
    steps = json.load(f)["steps"]
  assert len(steps) == 2 and steps[0]["dnn"]["accuracy"] >= steps[0]["depth_only"]["accuracy"]
  assert steps[1]["dnn"]["utilisation"]["macs"] <= 1.0

  config.export.subnet = "D2W1"
  main.run(config, workdir, "export")
  out = os.path.join(workdir, "export", "D2W1")
  with open(os.path.join(out, "manifest.json")) as f:
    manifest = json.load(f)
  assert manifest["depth"] == 2 and manifest["macs"] == macs[1, 0]
  assert manifest["accuracy"] == pytest.approx(acc[1, 0])


_RUN_EXPORTED = """
import json, sys
import jax, numpy as np
d = sys.argv[1]
manifest = json.load(open(d + "/manifest.json"))
exp = jax.export.deserialize(bytearray(open(d + "/model.stablehlo", "rb").read()))
w = np.load(d + "/weights.npz", allow_pickle=False)
images = np.load(sys.argv[2])
logits = exp.call([w[k] for k in manifest["weights"]], images)
assert not any(m.startswith("dnn_jax") for m in sys.modules), "needs only jax"
np.save(sys.argv[3], np.asarray(logits))
"""


def test_exported_program_runs_with_jax_alone(trained_workdir, tmp_path):
  from dnn_jax import evaluate
  config, workdir = trained_workdir
  setup, variables, _, _, _ = evaluate.load_checkpoint(config, workdir, 1)
  out = str(tmp_path / "D3W2")
  export.export_subnetwork(setup.model, jax.device_get(variables), 3, 2, (8, 8, 1), out)
  images = np.asarray(_images((5, 8, 8, 1)), np.float32)  # Batch 5: shape-polymorphic.
  np.save(tmp_path / "images.npy", images)
  subprocess.run([sys.executable, "-c", _RUN_EXPORTED, out, str(tmp_path / "images.npy"),
                  str(tmp_path / "logits.npy")], check=True, cwd=str(tmp_path))
  sub, sub_vars = subnetwork.extract(setup.model, variables, 3, 2)
  np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), sub.apply(sub_vars, images),
                             atol=1e-4)
  np.testing.assert_allclose(export.load_and_run(out, images),
                             setup.model.apply(variables, images)[:, 2, 1], atol=1e-4)


def _main(*args):
  return subprocess.run([sys.executable, "-m", "dnn_jax.main", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=300)


def test_bad_sub_network_requests_fail_with_one_line(trained_workdir, tmp_path):
  _, workdir = trained_workdir
  cases = [
      (["--mode=export", "--config.export.subnet=D7W1"], "config.export.subnet: D7W1 is outside"),
      (["--mode=export", "--config.export.subnet=big"], "config.export.subnet: sub-network id"),
      (["--mode=select", "--config.budget.macs=-5"], "config.budget.macs: -5.0 must be positive"),
      (["--mode=select", "--config.budget.macs=10"], "no sub-network fits the budget"),
  ]
  for args, message in cases:
    result = _main("--config=configs/tiny.py", f"--workdir={workdir}", *args)
    assert result.returncode == 2, (args, result.stderr)
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr, (args, result.stderr)
  # A grid file of the wrong shape.
  bad = tmp_path / "bad"
  os.makedirs(bad / "eval")
  (bad / "eval" / "grid.json").write_text(json.dumps({"accuracy": [[0.5, 0.5]]}))
  result = _main("--config=configs/tiny.py", f"--workdir={bad}", "--mode=select",
                 "--config.budget.macs=1e9")
  assert result.returncode == 2 and "has shape (1, 2), expected (3, 2)" in result.stderr
  assert not os.path.exists(bad / "select.json")


def test_bad_traces_grids_and_export_targets_are_named(trained_workdir, tmp_path):
  import shutil
  from dnn_jax import main
  config, workdir = trained_workdir
  config = config.copy_and_resolve_references()
  (tmp_path / "words.json").write_text(json.dumps([{"macs": "abc"}]))
  config.budget.trace = str(tmp_path / "words.json")
  with pytest.raises(UserError, match=r"step 0: config.budget.macs='abc': a budget is a "
                                      "positive finite number"):
    main.run(config, workdir, "trace")
  config.budget.trace = str(tmp_path)
  with pytest.raises(UserError, match="config.budget.trace: .* is not a file"):
    main.run(config, workdir, "trace")
  config.budget.trace = ""
  config.export.subnet, config.export.format = "D1W1", "stablehlo"
  config.export.dir = str(tmp_path / "words.json")
  with pytest.raises(UserError, match="the export target exists and is not a directory"):
    main.run(config, workdir, "export")
  garbled = str(tmp_path / "garbled")
  shutil.copytree(workdir, garbled)
  with open(os.path.join(garbled, "eval", "grid.json"), "w") as f:
    f.write('{"accuracy": [[0.5')
  config.export.dir = ""
  with pytest.raises(UserError, match="grid.json: cannot read it as JSON .*--mode=eval "
                                      "writes it again"):
    main.run(config, garbled, "export")


def test_a_full_disk_in_any_mode_is_an_error_naming_the_file_and_keeps_the_old_results(
    trained_workdir, tmp_path, monkeypatch):
  import errno
  import shutil
  from dnn_jax import files, main
  config, workdir = trained_workdir
  config = config.copy_and_resolve_references()
  workdir_copy = str(tmp_path / "run")
  shutil.copytree(workdir, workdir_copy)
  grid = (tmp_path / "run" / "eval" / "grid.json").read_bytes()

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(files.tempfile, "mkstemp", full)
  config.budget.macs, config.export.subnet, config.export.format = 1e9, "D1W1", "stablehlo"
  config.resources.repeats = 1
  for mode, written in (("eval", "eval/"), ("resources", "resources/"), ("select", "select")):
    with pytest.raises(OSError, match=f"cannot write .*{written}[^ ]*: No space left on "
                                      "device"):
      main.run(config, workdir_copy, mode)
  monkeypatch.undo()
  monkeypatch.setattr(export.tempfile, "mkdtemp", full)
  with pytest.raises(RunError, match="cannot write the export"):
    main.run(config, workdir_copy, "export")
  assert (tmp_path / "run" / "eval" / "grid.json").read_bytes() == grid
  assert not [f for _, _, names in os.walk(workdir_copy) for f in names if f.endswith(".tmp")]


@pytest.mark.parametrize("shortcut,exit_head", [("projection", "shared"), ("pad", "shared"),
                                                ("projection", "untied")])
def test_refinement_along_any_path_equals_direct_evaluation(shortcut, exit_head):
  from dnn_jax import refine
  cfg = _model_config(shortcut=shortcut, head_reduction="mean" if shortcut == "pad" else "sum",
                      exit_head=exit_head)
  model = models.create_model(cfg, 5)
  variables = _random_variables(model, (8, 8, 3))
  x = _images((3, 8, 8, 3))
  fused = model.apply(variables, x)
  for path in ([(1, 1), (2, 1), (2, 2), (4, 2), (5, 3)], [(3, 1), (3, 3), (5, 3)], [(5, 3)]):
    r = refine.Refiner(model, variables, x)
    for d, c in path:
      chex.assert_trees_all_close(r.refine(d, c), fused[:, d - 1, c - 1], atol=1e-4)
  with pytest.raises(ValueError, match="can only grow"):
    r.refine(2, 3)

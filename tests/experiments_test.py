"""Baselines and figure commands on tiny runs (the real loop, shrunk)."""

import json
import os

import numpy as np

from dnn_jax import evaluate
from dnn_jax import experiments
from dnn_jax import train
from dnn_jax.config_base import load_config_file
from tests.conftest import ROOT

_BASELINE = load_config_file(os.path.join(ROOT, "configs", "x.py"), "baseline")


def _train(config, workdir, steps=40):
  config.train.num_steps = steps
  train.train_and_evaluate(config, workdir)
  evaluate.evaluate(config, workdir)


def test_baseline_configs():
  plain = _BASELINE("tiny,plain,1")
  assert not plain.model.causal and plain.loss.lambda_scheme == "final"
  assert plain.model.num_groups == 1
  depth_only = _BASELINE("tiny,depth_only")
  assert depth_only.loss.lambda_scheme == "full_width" and depth_only.model.num_groups == 2


def test_figures_from_tiny_runs(tiny_config, tmp_path):
  runs, out = str(tmp_path / "runs"), str(tmp_path / "results")
  _train(tiny_config, os.path.join(runs, "dnn"))
  for width in (1, 2):
    _train(_BASELINE(f"tiny,plain,{width}"), os.path.join(runs, f"plain_w{width}"))
  _train(_BASELINE("tiny,depth_only"), os.path.join(runs, "depth_only"))

  f4 = experiments.fig4(runs, out, fine_tune_epochs=3)
  assert set(f4) >= {"dnn", "full_training", "brute_force_slicing", "fine_tuning"}
  assert all(len(f4[k]) == 2 for k in ("dnn", "full_training", "brute_force_slicing",
                                       "fine_tuning"))
  # Brute-force slicing at full width is the plain network itself.
  assert abs(f4["brute_force_slicing"][-1] - f4["full_training"][-1]) < 1e-6
  assert all(0.0 <= v <= 1.0 for v in f4["fine_tuning"])
  # 2 causal groups cost 3/4 of the plain 2-group network, closer to it than to 1 group (1/4).
  assert f4["same_macs_plain"]["width"] == 2

  f5 = experiments.fig5(runs, out)
  assert f5["dnn"]["best"]["macs"] <= f5["budget_macs"]
  assert all(r["macs"] <= f5["budget_macs"] for r in f5["depth_only"]["feasible"])
  experiments.grid(runs, out)
  for name in ("fig4", "fig5", "grid"):
    with open(os.path.join(out, f"{name}.json")) as f:
      assert json.load(f)
    assert os.path.getsize(os.path.join(out, f"{name}.md")) > 50
  for png in ("fig4.png", "fig5.png", "grid_accuracy.png", "grid_macs.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000
  assert np.isclose(f4["dnn"][-1], json.load(open(os.path.join(runs, "dnn", "eval",
                                                                "grid.json")))["accuracy"][-1][-1])

"""Anytime inference per image: the staircase path, the stopping rule, the fitted curves."""

import json
import os

import numpy as np
import pytest

from dnn_jax import anytime


def test_staircase_takes_the_best_gain_per_mac_and_ends_at_the_full_network():
  acc = np.array([[0.30, 0.50, 0.55],
                  [0.40, 0.60, 0.70],
                  [0.45, 0.62, 0.80]])
  macs = np.array([[1, 2, 4], [2, 4, 8], [3, 6, 12]], float)
  # From D1W1: widen (+0.20 for 1 MAC) beats deepen (+0.10 for 1); from D1W2: deepen
  # (+0.10 / 2) beats widen (+0.05 / 2); from D2W2: widen (+0.10 / 4) beats deepen
  # (+0.02 / 2); then only deeper is left.
  assert anytime.staircase(acc, macs) == [(1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]


def test_area_path_beats_a_myopic_first_step():
  # Widening at depth 1 is cheap and gains a little per MAC; deepening first costs more but
  # reaches far better cells early: the area rule deepens, the greedy rule widens.
  acc = np.array([[0.20, 0.24, 0.26],
                  [0.50, 0.60, 0.65],
                  [0.60, 0.70, 0.80]])
  macs = np.array([[10, 12, 15], [40, 60, 90], [80, 120, 180]], float)
  assert anytime.staircase(acc, macs)[1] == (1, 2)
  path = anytime.best_area_path(acc, macs)
  assert path[1] == (2, 1) and path[-1] == (3, 3) and len(path) == 5
  area = lambda p: sum(acc[a - 1, b - 1] * (np.log(macs[c - 1, d - 1]) - np.log(macs[a - 1, b - 1]))
                       for (a, b), (c, d) in zip(p, p[1:]))
  assert area(path) >= area(anytime.staircase(acc, macs))


def test_each_image_stops_at_its_first_confident_cell():
  conf = np.array([[[0.9, 0.1], [0.1, 0.1]],     # sure at D1W1
                   [[0.2, 0.8], [0.1, 0.1]],     # sure at D1W2
                   [[0.2, 0.2], [0.1, 0.3]]])    # never: the path's end
  correct = np.array([[[1, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 1]]], bool)
  macs = np.array([[1, 2], [3, 4]], float)
  path = [(1, 1), (1, 2), (2, 2)]
  acc, cost, stop = anytime.simulate(conf, correct, path, macs, 0.5)
  assert stop.tolist() == [0, 1, 2]
  assert acc == pytest.approx(2 / 3) and cost == pytest.approx((1 + 2 + 4) / 3)
  acc, cost, stop = anytime.simulate(conf, correct, path, macs, 2.0)  # never early
  assert stop.tolist() == [2, 2, 2] and cost == 4


def test_curves_respect_their_budgets_on_the_fit_split():
  rng = np.random.default_rng(0)
  n, depths, widths = 400, 3, 3
  macs = np.array([[1, 2, 4], [2, 4, 8], [3, 6, 12]], float)
  # Bigger cells are more accurate; confidence tracks correctness.
  p = 0.4 + 0.5 * np.log(macs) / np.log(12)
  correct = rng.random((n, depths, widths)) < p
  conf = np.clip(0.5 * correct + 0.5 * rng.random((n, depths, widths)), 0, 1)
  budgets = np.geomspace(1, 12, 6)
  record = anytime.fit_and_evaluate((conf, correct), (conf, correct), macs, budgets)
  for name in anytime.CURVES:
    c = record["curves"][name]
    assert len(c["mean_macs"]) == len(c["accuracy"]) > 0
    assert c["mean_macs"] == sorted(c["mean_macs"]) and max(c["mean_macs"]) <= 12 + 1e-9
  # Fit and evaluation on the same images: the fitted cost of each choice fits its budget,
  # and the two-d policy at the full budget is at least as accurate as the best static cell.
  assert max(record["curves"]["two_d"]["accuracy"]) >= max(
      record["curves"]["static"]["accuracy"]) - 1e-9
  assert record["policies"]["depth_only"]["path"] == ["D1W3", "D2W3", "D3W3"]


def test_anytime_mode_writes_curves_and_times_the_refiner(tmp_path):
  from configs import tiny
  from dnn_jax import main, train
  config = tiny.get_config()
  config.data.eval_split = "validation"
  config.anytime.timing_images = 4
  config.anytime.budgets = 5
  workdir = str(tmp_path / "wd")
  train.train_and_evaluate(config, workdir)
  main.run(config, workdir, "anytime")
  out = os.path.join(workdir, "anytime")
  assert sorted(os.listdir(out)) == ["anytime.json", "anytime.md", "anytime.png"]
  record = json.load(open(os.path.join(out, "anytime.json")))
  assert set(record["curves"]) == {"two_d", "depth_only", "static"}
  assert record["split"] == "validation (second half)"
  assert record["num_examples"] + record["num_fit_examples"] == 144  # 10% of 1,438 digits
  check = record["timing_check"]
  assert len(check["measured_ms"]) == 4 and all(t > 0 for t in check["measured_ms"])
  path = record["policies"]["two_d"]["path"]
  assert path[0] == "D1W1" and path[-1] == "D3W2" and len(path) == 4

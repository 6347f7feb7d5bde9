"""Anytime inference per image (--mode=anytime): grow each image's sub-network until it is sure.

Every image starts at D1W1 and moves along one path through the (depth, width) grid, one
step wider or deeper at a time, until its prediction's confidence (max softmax) reaches a
threshold or the path ends; `refine.Refiner` makes each step cost only its new work, so an
image stopped at cell (d, c) costs about MACs(d, c). The path is fitted on the fit split's
accuracy grid (`config.anytime.path`): `area`, the monotone path with the largest area under
its accuracy-vs-log-MACs staircase, or `greedy`, the best accuracy gain per added MAC at each
step (myopic: on the shipped model it widens the weak depth-1 exit first). One threshold per average-MAC budget is
chosen on the fit split (the most accurate whose average cost fits) and evaluated on the
evaluation split. Baselines, fitted and evaluated the same way: `depth_only` (the full-width
column, MSDNet's budgeted batch classification) and `static` (the most accurate single
sub-network that fits the budget).

Splits: with `data.eval_split=test`, fit on the validation split carved from train (the same
fraction and seed as a validation run; a model trained with eval_split=test has seen those
images, which `fit_split` says) and evaluate on test; with `eval_split=validation`, fit on one
half of validation and evaluate on the other (fixed seed).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import subnetwork

CURVES = ("two_d", "depth_only", "static")


def exit_predictions(setup, variables, split: input_pipeline.Split, batch_size: int):
  """(confidence N x L x G, correct N x L x G) of every exit on every image of `split`."""

  def step(v, images, labels):
    probs = jax.nn.softmax(setup.model.apply(v, images, train=False), axis=-1)
    return probs.max(-1), jnp.argmax(probs, -1) == labels[:, None, None]

  fn = jax.jit(step, in_shardings=(setup.replicated, setup.batch_sharding,
                                   setup.batch_sharding),
               out_shardings=setup.replicated)
  conf, correct = [], []
  for images, labels, mask in input_pipeline.eval_batches(split, batch_size,
                                                          setup.batch_sharding):
    c, k = jax.device_get(fn(variables, images, labels))
    keep = np.asarray(jax.device_get(mask))
    conf.append(c[keep])
    correct.append(k[keep])
  return np.concatenate(conf), np.concatenate(correct)


def staircase(accuracy_LxG: np.ndarray, macs_LxG: np.ndarray) -> list[tuple[int, int]]:
  """The greedy path from D1W1 to the full network: at each cell, the wider or deeper
  neighbour with the larger accuracy gain per added MAC (ties: fewer MACs). 1-based cells."""
  depths, widths = accuracy_LxG.shape
  d, c = 1, 1
  path = [(d, c)]
  while (d, c) != (depths, widths):
    options = [(d + 1, c)] if d < depths else []
    options += [(d, c + 1)] if c < widths else []

    def gain(cell):
      dd, cc = cell
      extra = macs_LxG[dd - 1, cc - 1] - macs_LxG[d - 1, c - 1]
      return (accuracy_LxG[dd - 1, cc - 1] - accuracy_LxG[d - 1, c - 1]) / max(extra, 1.0)
    d, c = max(options, key=lambda cell: (gain(cell), -macs_LxG[cell[0] - 1, cell[1] - 1]))
    path.append((d, c))
  return path


def best_area_path(accuracy_LxG: np.ndarray, macs_LxG: np.ndarray) -> list[tuple[int, int]]:
  """The monotone path from D1W1 to the full network (one step wider or deeper at a time)
  that maximises the area under its accuracy-vs-log-MACs staircase: the accuracy an image
  holds while its budget grows. Dynamic programming over the grid; 1-based cells."""
  depths, widths = accuracy_LxG.shape
  log_m = np.log(np.maximum(macs_LxG, 1.0))
  best = np.full((depths + 1, widths + 1), -np.inf)
  step = {}
  best[depths, widths] = 0.0
  for d in range(depths, 0, -1):
    for c in range(widths, 0, -1):
      if (d, c) == (depths, widths):
        continue
      for nd, nc in ((d + 1, c), (d, c + 1)):
        if nd <= depths and nc <= widths:
          area = accuracy_LxG[d - 1, c - 1] * (log_m[nd - 1, nc - 1] - log_m[d - 1, c - 1])
          if area + best[nd, nc] > best[d, c]:
            best[d, c], step[(d, c)] = area + best[nd, nc], (nd, nc)
  path = [(1, 1)]
  while path[-1] != (depths, widths):
    path.append(step[path[-1]])
  return path


PATHS = {"area": best_area_path, "greedy": staircase}


def simulate(conf, correct, path, macs_LxG, threshold: float):
  """Each image stops at the first path cell whose confidence >= threshold (or the last):
  (accuracy, mean MACs, the step index each image stopped at)."""
  idx_d = np.array([d - 1 for d, _ in path])
  idx_c = np.array([c - 1 for _, c in path])
  conf_NxP, correct_NxP = conf[:, idx_d, idx_c], correct[:, idx_d, idx_c]
  sure = conf_NxP >= threshold
  sure[:, -1] = True
  stop = np.argmax(sure, axis=1)
  rows = np.arange(len(stop))
  cost = macs_LxG[idx_d, idx_c][stop]
  return float(correct_NxP[rows, stop].mean()), float(cost.mean()), stop


def thresholds(conf) -> np.ndarray:
  """Candidate thresholds: quantiles of all confidences, plus 'never early' (above 1)."""
  qs = np.quantile(conf.reshape(-1), np.linspace(0, 1, 201))
  return np.unique(np.concatenate([qs, [1.0 + 1e-6]]))


def fit_and_evaluate(fit, evaluate, macs_LxG, budgets, path: str = "area") -> dict:
  """Curves {two_d, depth_only, static}: {mean_macs, accuracy} on `evaluate` for each budget,
  thresholds and cells chosen on `fit`; `fit`/`evaluate` = (confidence, correct)."""
  acc_fit = fit[1].mean(axis=0)
  depths, widths = acc_fit.shape
  paths = {"two_d": PATHS[path](acc_fit, macs_LxG),
           "depth_only": [(d, widths) for d in range(1, depths + 1)]}
  curves, chosen = {}, {}
  for name, path in paths.items():
    options = [(t,) + simulate(*fit, path, macs_LxG, t)[:2] for t in thresholds(fit[0])]
    points = {}
    for b in budgets:
      ok = [o for o in options if o[2] <= b]
      if not ok:
        continue
      t = max(ok, key=lambda o: (o[1], -o[2]))[0]
      acc, cost, _ = simulate(*evaluate, path, macs_LxG, t)
      points[float(t)] = (cost, acc)
    curves[name] = _curve(points.values())
    chosen[name] = {"path": [subnetwork.subnet_id(*cell) for cell in path],
                    "thresholds": sorted(points)}
  acc_eval = evaluate[1].mean(axis=0)
  static = {}
  for b in budgets:
    ok = macs_LxG <= b
    if ok.any():
      flat = np.where(ok, acc_fit, -1.0)
      d, c = np.unravel_index(np.argmax(flat), flat.shape)
      static[(d, c)] = (float(macs_LxG[d, c]), float(acc_eval[d, c]))
  curves["static"] = _curve(static.values())
  chosen["static"] = {"cells": sorted(subnetwork.subnet_id(d + 1, c + 1) for d, c in static)}
  return {"curves": curves, "policies": chosen}


def _curve(points) -> dict:
  pts = sorted(set(points))
  return {"mean_macs": [p[0] for p in pts], "accuracy": [p[1] for p in pts]}


def timing_check(model, variables, images, path, conf, threshold, macs_LxG) -> dict:
  """Real per-image costs: each image of `images` run alone through `refine.Refiner` along
  `path` to where it stops under `threshold`, timed, beside its simulated MACs."""
  from dnn_jax import refine
  idx = [(d - 1, c - 1) for d, c in path]
  stops = []
  for i in range(len(images)):
    c_path = np.array([conf[i, d, c] for d, c in idx])
    sure = c_path >= threshold
    sure[-1] = True
    stops.append(int(np.argmax(sure)))
  warm = refine.Refiner(model, variables, images[:1])
  for d, c in path:  # compiles every step
    jax.block_until_ready(warm.refine(d, c))
  ms, macs = [], []
  for i, stop in enumerate(stops):
    r = refine.Refiner(model, variables, images[i:i + 1])
    t = time.perf_counter()
    for d, c in path[:stop + 1]:
      out = r.refine(d, c)
    jax.block_until_ready(out)
    ms.append(1e3 * (time.perf_counter() - t))
    macs.append(float(macs_LxG[idx[stop]]))
  ms, macs = np.array(ms), np.array(macs)
  corr = float(np.corrcoef(ms, macs)[0, 1]) if ms.std() > 0 and macs.std() > 0 else None
  return {"images": len(images), "threshold": float(threshold), "stop_steps": stops,
          "simulated_macs": macs.tolist(), "measured_ms": ms.round(3).tolist(),
          "correlation": corr,
          "note": "batch-1 Refiner wall time per image (compile excluded) vs the MACs of the "
                  "cell it stopped at"}


def split_for_fit(dataset, data_config):
  """(fit split, eval split, their names) as the module docstring says."""
  if dataset.eval_split == "validation":
    perm = np.random.default_rng(input_pipeline.SPLIT_SEED + 1).permutation(len(dataset.eval))
    half = len(perm) // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half:])
    pick = lambda idx: input_pipeline.Split(dataset.eval.images[idx], dataset.eval.labels[idx])
    return pick(a), pick(b), "validation (first half)", "validation (second half)"
  _, fit = input_pipeline.carve(dataset.train, data_config.validation_fraction)
  return fit, dataset.eval, "validation carved from train", dataset.eval_split


def run(config, workdir: str) -> dict:
  """--mode=anytime: DIR/anytime/anytime.json, anytime.md and anytime.png."""
  from dnn_jax import checkpointing, evaluate, plots, resources
  from dnn_jax.errors import DataError
  from dnn_jax.metric_writers import log
  saved = checkpointing.load_saved(workdir)
  dataset = input_pipeline.load_dataset(config.data, workdir,
                                        eval_only_classes=saved.class_names)
  saved.check_image_shape(dataset.eval.images.shape[1:], f"the {dataset.eval_split} split")
  channels = dataset.eval.images.shape[-1]
  setup, variables, step, _, class_names = evaluate.load_checkpoint(config, workdir, channels,
                                                                    saved=saved)
  if tuple(class_names) != dataset.class_names:
    raise DataError(f"the checkpoint's classes {class_names} differ from the data's "
                    f"{list(dataset.class_names)}")
  model = setup.model
  fit, ev, fit_name, eval_name = split_for_fit(dataset, config.data)
  macs = resources.analytic_grid(model, dataset.eval.images.shape[1:], len(class_names))["macs"]
  macs = macs.astype(np.float64)
  log(f"anytime: confidences of {model.num_exits * model.num_groups} sub-networks on "
      f"{len(fit)} fit and {len(ev)} evaluation images")
  fit_pred = exit_predictions(setup, variables, fit, config.eval.batch_size)
  eval_pred = exit_predictions(setup, variables, ev, config.eval.batch_size)
  budgets = np.geomspace(macs.min(), macs.max(), config.anytime.budgets)
  record = fit_and_evaluate(fit_pred, eval_pred, macs, budgets, config.anytime.path)
  record.update(path_rule=config.anytime.path, split=eval_name, fit_split=fit_name, num_examples=len(ev),
                num_fit_examples=len(fit), checkpoint_step=int(step),
                budgets=budgets.tolist(), full_macs=float(macs[-1, -1]),
                full_accuracy=float(eval_pred[1][:, -1, -1].mean()),
                cost_model="an image stopped at cell (d, c) costs MACs(d, c): refinement "
                           "reuses the work of the cells before it on the path")
  if config.anytime.timing_images and model.causal:
    path = [subnetwork.parse_subnet_id(s) for s in record["policies"]["two_d"]["path"]]
    ts = record["policies"]["two_d"]["thresholds"]
    n = min(config.anytime.timing_images, len(ev))
    record["timing_check"] = timing_check(
        model, jax.device_get(variables), ev.images[:n].astype(np.float32), path,
        eval_pred[0][:n], ts[len(ts) // 2], macs)
  if jax.process_index() == 0:
    out = os.path.join(workdir, "anytime")
    files.makedirs(out)
    files.write_json(os.path.join(out, "anytime.json"), record)
    files.write_atomic(os.path.join(out, "anytime.md"), table(record))
    _plot(record, os.path.join(out, "anytime.png"), plots)
  two_d, static = record["curves"]["two_d"], record["curves"]["static"]
  log(f"Anytime written to {os.path.join(workdir, 'anytime')}: at the smallest budget "
      f"two-d {100 * two_d['accuracy'][0]:.1f}% at {two_d['mean_macs'][0]:,.0f} MACs, "
      f"static {100 * static['accuracy'][0]:.1f}% at {static['mean_macs'][0]:,.0f}")
  return record


def table(record) -> str:
  lines = [f"# Anytime inference: accuracy vs average MACs per image ({record['split']}, "
           f"{record['num_examples']} images; thresholds fit on {record['fit_split']})", ""]
  for name in CURVES:
    c = record["curves"][name]
    lines += [f"## {name}", "", "| mean MACs | accuracy (%) |", "|---|---|"]
    lines += [f"| {m:,.0f} | {100 * a:.2f} |" for m, a in zip(c["mean_macs"], c["accuracy"])]
    lines.append("")
  lines.append("Path (two_d): " + " -> ".join(record["policies"]["two_d"]["path"]))
  return "\n".join(lines) + "\n"


def _plot(record, path, plots):
  fig = plots.figure(figsize=(6.5, 4.2))
  ax = fig.subplots()
  labels = {"two_d": "anytime, width and depth", "depth_only": "anytime, depth only (full width)",
            "static": "best static sub-network"}
  for name, style in zip(CURVES, ("o-", "s--", "^:")):
    c = record["curves"][name]
    ax.plot(c["mean_macs"], 100 * np.asarray(c["accuracy"]), style, label=labels[name], ms=4)
  ax.set_xscale("log")
  ax.set_xlabel("average MACs per image")
  ax.set_ylabel(f"accuracy (%), {record['split']}")
  ax.grid(alpha=0.3)
  ax.legend()
  plots.save(fig, path)

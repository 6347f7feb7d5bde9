"""Budgeted selection: the most accurate sub-network under limits on several resources at once.

Also the Pareto front, the paper's Fig. 5 view (every feasible sub-network under a budget,
DNNet vs a depth-only choice) and dynamic budgets over time (Fig. 1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import jax
import numpy as np

from dnn_jax import files
from dnn_jax import workdir as layout
from dnn_jax.errors import UserError
from dnn_jax.metric_writers import log
from dnn_jax.subnetwork import subnet_id

# Budget field -> resource grid quantity it limits.
LIMITS = {"macs": "macs", "params": "params", "activation_bytes": "peak_activation_bytes",
          "latency_ms": "latency_ms_batch1"}


def check_limits(limits: dict) -> dict:
  """Drops unset (None) limits; rejects unknown names and non-positive values."""
  out = {}
  for name, value in limits.items():
    if name not in LIMITS:
      raise UserError(f"unknown budget {name!r}; known: {', '.join(LIMITS)}")
    if value is None:
      continue
    if (isinstance(value, bool) or not isinstance(value, (int, float))
        or not np.isfinite(value) or value <= 0):
      raise UserError(f"config.budget.{name}={value!r}: a budget is a positive finite number")
    out[name] = float(value)
  return out


def feasible(resources: dict, limits: dict) -> np.ndarray:
  """Bool depths x widths grid of the sub-networks within every limit."""
  shape = np.shape(resources["macs"])
  ok = np.ones(shape, bool)
  for name, value in limits.items():
    grid = np.asarray(resources.get(LIMITS[name], np.full(shape, np.nan)), np.float64)
    if np.isnan(grid).all():
      raise UserError(f"budget {name} needs the measured grid '{LIMITS[name]}': run "
                      "--mode=resources first (with resources.measure=True"
                      + (" and resources.latency=True)" if name == "latency_ms" else ")"))
    ok &= grid <= value
  return ok


def select(accuracy, resources: dict, limits: dict, *, columns=None) -> dict | None:
  """Most accurate feasible (depth, width); ties go to fewer MACs. None if nothing fits.

  `columns` restricts the candidates to those widths (1-based), e.g. [G] for depth-only.
  """
  acc = np.asarray(accuracy, np.float64)
  ok = feasible(resources, limits)
  if columns is not None:
    keep = np.zeros_like(ok)
    keep[:, np.asarray(columns) - 1] = True
    ok &= keep
  if not ok.any():
    return None
  macs = np.asarray(resources["macs"], np.float64)
  candidates = np.argwhere(ok)
  best = min(candidates, key=lambda dc: (-acc[tuple(dc)], macs[tuple(dc)], dc[0], dc[1]))
  d, c = int(best[0]), int(best[1])
  record = {"depth": d + 1, "width": c + 1, "id": subnet_id(d + 1, c + 1),
            "accuracy": float(acc[d, c]), "feasible_count": int(ok.sum())}
  for name, grid in resources.items():
    value = np.asarray(grid, np.float64)[d, c]
    record[name] = None if np.isnan(value) else float(value)
  return record


def pareto_front(accuracy, resources: dict, keys=("macs",)) -> list[dict]:
  """Sub-networks no other beats in accuracy without costing more in any of `keys`."""
  acc = np.asarray(accuracy, np.float64)
  costs = [np.asarray(resources[k], np.float64) for k in keys]
  front = []
  cells = [tuple(dc) for dc in np.argwhere(np.ones(acc.shape, bool))]
  for cell in cells:
    dominated = False
    for other in cells:
      if other == cell:
        continue
      no_worse = acc[other] >= acc[cell] and all(c[other] <= c[cell] for c in costs)
      better = acc[other] > acc[cell] or any(c[other] < c[cell] for c in costs)
      if no_worse and better:
        dominated = True
        break
    if not dominated:
      front.append({"id": subnet_id(cell[0] + 1, cell[1] + 1), "depth": int(cell[0]) + 1,
                    "width": int(cell[1]) + 1, "accuracy": float(acc[cell]),
                    **{k: float(c[cell]) for k, c in zip(keys, costs)}})
  return sorted(front, key=lambda r: r[keys[0]])


def read_trace(path: str) -> list[dict]:
  """A budget time series: JSON list of {limit: value} objects, or CSV with limit columns."""
  path = files.check_path(path, "config.budget.trace")
  if not files.exists(path):
    raise UserError(f"config.budget.trace: {path} does not exist")
  if not files.isfile(path):
    raise UserError(f"config.budget.trace: {path} is not a file (give a JSON or CSV file)")
  try:
    if path.endswith(".csv"):
      with files.open_read(path, newline="") as f:
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()
                 if k != "time"} for row in csv.DictReader(f)]
    else:
      with files.open_read(path) as f:
        rows = json.load(f)
      rows = [{k: v for k, v in row.items() if k != "time"} for row in rows]
  except (ValueError, TypeError, AttributeError) as e:
    raise UserError(f"config.budget.trace: cannot parse {path}: {e}") from e
  except OSError as e:
    raise UserError(f"config.budget.trace: cannot read {path}: {e.strerror}") from e
  if not rows:
    raise UserError(f"config.budget.trace: {path} holds no budgets")
  for i, row in enumerate(rows):
    try:
      rows[i] = check_limits(row)
    except UserError as e:
      raise UserError(f"config.budget.trace: {path}, step {i}: {e}") from e
  return rows


def _grids(config, workdir: str):
  """(accuracy, resources) grids of a workdir for --mode=select/trace, shape-checked."""
  from dnn_jax import checkpointing, input_pipeline, models, resources
  saved = checkpointing.load_saved(workdir, required=False)
  if saved is not None:  # The trained model's layout wins over the given config's.
    config = saved.overlay(config)
  shape = models.grid_shape(config.model)
  accuracy = layout.grid_array(layout.read_eval_grid(workdir), "accuracy", shape,
                               layout.eval_grid(workdir))
  measured = layout.read_resources_grid(workdir)
  if measured is not None:
    path = layout.resources_grid(workdir)
    res = {k: layout.grid_array(measured, k, shape, path)
           for k in ("macs", "params", "largest_feature_map")}
    for k in ("peak_activation_bytes", "latency_ms_batch1"):
      if measured.get(k) is not None:
        res[k] = layout.grid_array(measured, k, shape, path)
  else:  # Analytic quantities need no measurement.
    if saved is not None:
      image_shape, names = saved.input_shape(config.data), saved.class_names
    else:
      image_shape, names = input_pipeline.describe(config.data)
    model = models.create_model(config.model, len(names))
    res = {k: v for k, v in resources.analytic_grid(model, image_shape, len(names)).items()
           if k in ("macs", "params", "largest_feature_map")}
  return accuracy, res


def _depth_only(config, accuracy, res):
  """(accuracy, resources, label) the depth-only choice is made from: a separately trained
  network's full-width exits (config.budget.compare_workdir), else this DNNet's own grids."""
  if config.budget.compare_workdir:
    other_acc, other_res = _grids(config, files.check_path(config.budget.compare_workdir,
                                                           "config.budget.compare_workdir"))
    return other_acc, other_res, "depth-only network"
  return accuracy, res, "full-width exits of this DNNet"


def _limits(config) -> dict:
  return check_limits({k: config.budget[k] for k in LIMITS})


@dataclasses.dataclass(frozen=True)
class Selection:
  """A --mode=select result: its record (select.json) and the grids it was made from."""
  record: dict
  accuracy: np.ndarray
  resources: dict
  feasible: np.ndarray  # bool depths x widths


def choose(config, workdir: str) -> Selection:
  """The most accurate sub-network of DIR under config.budget, the depth-only choice beside
  it, the Pareto front over MACs and every feasible sub-network."""
  limits = _limits(config)
  if not limits:
    raise UserError("config.budget: set at least one limit, e.g. --config.budget.macs=24e6")
  accuracy, res = _grids(config, workdir)
  choice = select(accuracy, res, limits)
  if choice is None:
    smallest = ", ".join(f"{name} {np.nanmin(np.asarray(res[LIMITS[name]], float)):,.4g}"
                         for name in limits)
    raise UserError(f"no sub-network fits the budget {limits}"
                    + (" (all limits at once)" if len(limits) > 1 else "")
                    + f"; the smallest values in the grid: {smallest}")
  d_acc, d_res, label = _depth_only(config, accuracy, res)
  depth_choice = select(d_acc, d_res, limits, columns=[d_acc.shape[1]])
  ok = feasible(res, limits)
  record = {**choice, "limits": limits, "depth_only": depth_choice, "depth_only_source": label,
            "pareto_front_macs": pareto_front(accuracy, res, ("macs",)),
            "feasible": [{"id": subnet_id(d + 1, c + 1), "accuracy": float(accuracy[d, c]),
                          "macs": float(res["macs"][d, c])} for d, c in np.argwhere(ok)]}
  return Selection(record, accuracy, res, ok)


def write_selection(workdir: str, sel: Selection) -> None:
  """DIR/select.json and the Fig. 5 view (DIR/select/feasible.{png,md}); process 0 only."""
  from dnn_jax import plots
  if jax.process_index() != 0:
    return
  record, accuracy, res, ok = sel.record, sel.accuracy, sel.resources, sel.feasible
  limits, depth_choice = record["limits"], record["depth_only"]
  files.write_json(layout.select_record(workdir), record)
  out = layout.select_dir(workdir)
  files.makedirs(out)
  plots.grid_heatmap(accuracy, os.path.join(out, "feasible.png"),
                     f"accuracy (%) of sub-networks within {limits}", scale=100.0,
                     fmt="{:.1f}" if accuracy.shape[1] <= 12 else "{:.0f}", mask=ok)
  lines = [f"# Feasible sub-networks under {limits}", "",
           f"Best DNNet sub-network: **{record['id']}** at {100 * record['accuracy']:.2f}% "
           f"({record['macs']:,.0f} MACs). Best of the {record['depth_only_source']}: "
           + (f"**{depth_choice['id']}** at {100 * depth_choice['accuracy']:.2f}%."
              if depth_choice else "none fits."), "",
           "| sub-network | accuracy (%) | MACs | params |", "|---|---|---|---|"]
  for d, c in sorted(map(tuple, np.argwhere(ok)), key=lambda dc: -accuracy[dc]):
    lines.append(f"| {subnet_id(d + 1, c + 1)} | {100 * accuracy[d, c]:.2f} | "
                 f"{res['macs'][d, c]:,.0f} | {res['params'][d, c]:,.0f} |")
  files.write_atomic(os.path.join(out, "feasible.md"), "\n".join(lines) + "\n")


def run(config, workdir: str) -> dict:
  """--mode=select: prints the choice under config.budget, writes DIR/select.json and the
  Fig. 5 view (every feasible sub-network, DNNet vs depth-only) as markdown and PNG."""
  sel = choose(config, workdir)
  write_selection(workdir, sel)
  r, depth_choice = sel.record, sel.record["depth_only"]
  log(f"Best under {r['limits']}: {r['id']} (accuracy {100 * r['accuracy']:.2f}%, "
      f"{r['macs']:,.0f} MACs, {r['params']:,.0f} params) among "
      f"{r['feasible_count']} feasible; {r['depth_only_source']}: "
      + (f"{depth_choice['id']} ({100 * depth_choice['accuracy']:.2f}%)" if depth_choice
         else "none fits"))
  return r


def trace(config, workdir: str) -> dict:
  """The chosen sub-network per time step of config.budget.trace, vs the depth-only choice,
  with the mean accuracy and budget use of each."""
  if not config.budget.trace:
    raise UserError("config.budget.trace: give a JSON or CSV budget time series")
  budgets = read_trace(config.budget.trace)
  accuracy, res = _grids(config, workdir)
  d_acc, d_res, _ = _depth_only(config, accuracy, res)
  steps = []
  for t, limits in enumerate(budgets):
    row = {"step": t, "limits": limits}
    for label, acc, r, cols in (("dnn", accuracy, res, None),
                                ("depth_only", d_acc, d_res, [d_acc.shape[1]])):
      choice = select(acc, r, limits, columns=cols)
      if choice is not None:
        choice["utilisation"] = {k: choice[LIMITS[k]] / v for k, v in limits.items()}
      row[label] = choice
    steps.append(row)

  def mean(label, fn):
    vals = [fn(s[label]) for s in steps if s[label] is not None]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None

  summary = {label: {"mean_accuracy": mean(label, lambda c: c["accuracy"]),
                     "steps_without_a_fit": sum(s[label] is None for s in steps),
                     "mean_utilisation": {k: mean(label, lambda c, k=k: c["utilisation"].get(k))
                                          for k in LIMITS if any(k in s["limits"] for s in steps)}}
             for label in ("dnn", "depth_only")}
  return {"steps": steps, "summary": summary}


def write_trace(workdir: str, record: dict) -> None:
  """DIR/trace/trace.{json,png}; process 0 only."""
  if jax.process_index() != 0:
    return
  out = layout.trace_dir(workdir)
  files.makedirs(out)
  files.write_json(os.path.join(out, "trace.json"), record)
  _plot_trace(record["steps"], os.path.join(out, "trace.png"))


def run_trace_mode(config, workdir: str) -> dict:
  """--mode=trace: the chosen sub-network per time step of a budget trace, vs depth-only."""
  record = trace(config, workdir)
  write_trace(workdir, record)
  summary = record["summary"]
  log(f"Trace of {len(record['steps'])} budgets: mean accuracy DNNet "
      f"{_pct(summary['dnn']['mean_accuracy'])} vs depth-only "
      f"{_pct(summary['depth_only']['mean_accuracy'])}; written to {layout.trace_dir(workdir)}")
  return record


def _pct(x):
  return "n/a" if x is None else f"{100 * x:.2f}%"


def _plot_trace(steps, path: str) -> None:
  from dnn_jax import plots
  keys = [k for k in LIMITS if any(k in s["limits"] for s in steps)]
  fig = plots.figure(figsize=(8, 2.4 * (len(keys) + 1)))
  axes = fig.subplots(len(keys) + 1, 1, sharex=True, squeeze=False)[:, 0]
  t = [s["step"] for s in steps]
  get = lambda label, fn: [fn(s[label]) if s[label] else np.nan for s in steps]
  axes[0].step(t, get("dnn", lambda c: 100 * c["accuracy"]), where="post", label="DNNet")
  axes[0].step(t, get("depth_only", lambda c: 100 * c["accuracy"]), where="post",
               label="depth-only")
  axes[0].set_ylabel("accuracy (%)")
  axes[0].legend()
  for ax, k in zip(axes[1:], keys):
    ax.step(t, [s["limits"].get(k, np.nan) for s in steps], where="post", color="k",
            linestyle="--", label="budget")
    ax.step(t, get("dnn", lambda c, k=k: c[LIMITS[k]]), where="post", label="DNNet uses")
    ax.step(t, get("depth_only", lambda c, k=k: c[LIMITS[k]]), where="post",
            label="depth-only uses")
    ax.set_ylabel(k)
    ax.legend(fontsize=7)
  axes[-1].set_xlabel("time step")
  plots.save(fig, path)



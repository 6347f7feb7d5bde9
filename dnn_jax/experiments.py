"""The paper's figures from trained workdirs: one command each, JSON + PNG + markdown.

  python -m dnn_jax.experiments fig4 --runs=RUNS --out=results/cifar10_cpu
  python -m dnn_jax.experiments fig5 --runs=RUNS --out=results/cifar10_cpu [--budget_macs=N]
  python -m dnn_jax.experiments grid --runs=RUNS --out=results/cifar10_cpu

RUNS holds the workdirs `dnn` (the DNNet), `plain_w<k>` (plain networks trained from scratch
with k groups; the widest also feeds brute-force slicing and fine-tuning) and `depth_only`.
Every figure reports the split its accuracies come from (the DNNet's eval split).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import jax
import numpy as np

from dnn_jax import baselines
from dnn_jax import checkpointing
from dnn_jax import evaluate
from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import models
from dnn_jax import plots
from dnn_jax import resources
from dnn_jax import select
from dnn_jax import workdir as layout
from dnn_jax.errors import UserError
from dnn_jax.metric_writers import log
from dnn_jax.subnetwork import subnet_id


def _saved(workdir: str):
  """(saved config, analytic MAC grid) of a workdir's trained network."""
  saved = checkpointing.load_saved(workdir)
  names, image_shape = saved.class_names, saved.input_shape()
  model = models.create_model(saved.config.model, len(names))
  return saved.config, resources.analytic_grid(model, image_shape, len(names))["macs"]


def _write(out: str, name: str, record: dict, table: list[str]) -> None:
  if jax.process_index() != 0:
    return
  files.makedirs(out)
  files.write_json(os.path.join(out, f"{name}.json"), record)
  files.write_atomic(os.path.join(out, f"{name}.md"), "\n".join(table) + "\n")


FIG4_LABELS = {"dnn": "DNNet (one network)", "full_training": "full training (one net per width)",
               "brute_force_slicing": "brute-force slicing", "fine_tuning": "fine-tuning"}


def fig4_record(runs: str, fine_tune_epochs: int = 30) -> dict:
  """Accuracy vs width at full depth: DNNet, full training, brute-force slicing, fine-tuning."""
  dnn = layout.read_eval_grid(os.path.join(runs, "dnn"))
  widths = len(dnn["widths"])
  record = {"split": dnn["split"], "num_examples": dnn["num_examples"],
            "widths": dnn["widths"], "dnn": list(dnn["accuracy"][-1])}
  full = {}
  for name in sorted(files.listdir(runs)):
    m = re.fullmatch(r"plain_w(\d+)", name)
    if m and files.exists(layout.eval_grid(os.path.join(runs, name))):
      full[int(m.group(1))] = layout.read_eval_grid(os.path.join(runs, name))["accuracy"][-1][-1]
  record["full_training"] = [full.get(w) for w in range(1, widths + 1)]
  # The plain network whose MACs are closest to the DNNet's full exit: "same cost".
  record["dnn_full_macs"] = int(_saved(os.path.join(runs, "dnn"))[1][-1, -1])
  same = []
  for w, acc in full.items():
    macs = int(_saved(os.path.join(runs, f"plain_w{w}"))[1][-1, -1])
    same.append((abs(macs - record["dnn_full_macs"]), w, acc, macs))
  if same:
    _, w, acc, macs = min(same)
    # "Same cost" only within 10% of the DNNet's MACs; otherwise the closest is named as such.
    close = abs(macs - record["dnn_full_macs"]) <= 0.1 * record["dnn_full_macs"]
    key = "same_macs_plain" if close else "closest_macs_plain"
    record[key] = {"width": w, "accuracy": acc, "macs": macs}
  widest = os.path.join(runs, f"plain_w{widths}")
  if files.isdir(layout.checkpoints(widest)):
    saved, _ = _saved(widest)
    dataset = input_pipeline.load_dataset(saved.data, widest)
    setup, variables, _, _, _ = evaluate.load_checkpoint(saved, widest,
                                                         dataset.train.images.shape[-1])
    variables = jax.device_get(variables)
    bs = saved.eval.batch_size
    record["brute_force_slicing"] = baselines.brute_force_accuracy(
        setup.model, variables, dataset.eval, bs, setup.batch_sharding).tolist()
    record["fine_tuning"] = baselines.fine_tune_accuracy(
        setup.model, variables, dataset.train, dataset.eval, bs, setup.batch_sharding,
        epochs=fine_tune_epochs, progress=log).tolist()
  return record


def write_fig4(out: str, record: dict) -> None:
  """fig4.{json,md,png} in `out` (process 0)."""
  if jax.process_index() != 0:
    return
  fig = plots.figure(figsize=(6.5, 4.8))
  ax = fig.subplots()
  for key, label in FIG4_LABELS.items():
    if key in record:
      ys = [np.nan if v is None else 100 * v for v in record[key]]
      ax.plot(record["widths"], ys, marker="o", label=label)
  ax.set_xlabel("width (channel groups), full depth")
  ax.set_ylabel(f"{record['split']} accuracy (%)")
  ax.grid(alpha=0.3)
  # Below the axes: inside, it would cover the slicing curves at the wide end.
  ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
  files.makedirs(out)
  plots.save(fig, os.path.join(out, "fig4.png"))
  keys = [k for k in FIG4_LABELS if k in record]
  table = [f"# Fig. 4: accuracy (%) vs width at full depth ({record['split']} split, "
           f"{record['num_examples']} images)", "",
           "| width | " + " | ".join(FIG4_LABELS[k] for k in keys) + " |",
           "|---" * (len(keys) + 1) + "|"]
  for i, w in enumerate(record["widths"]):
    cells = ["" if record[k][i] is None else f"{100 * record[k][i]:.2f}" for k in keys]
    table.append(f"| {w} | " + " | ".join(cells) + " |")
  for key, what in (("same_macs_plain", "the plain network of about the same cost"),
                    ("closest_macs_plain", "no plain network of about the same cost is trained "
                     "yet; the closest")):
    if key in record:
      s = record[key]
      table += ["", f"DNNet full exit: {100 * record['dnn'][-1]:.2f}% at "
                f"{record['dnn_full_macs']:,} MACs; {what} (width {s['width']}, "
                f"{s['macs']:,} MACs): {100 * s['accuracy']:.2f}%."]
  _write(out, "fig4", record, table)


def fig4(runs: str, out: str, fine_tune_epochs: int = 30) -> dict:
  record = fig4_record(runs, fine_tune_epochs)
  write_fig4(out, record)
  return record


def fig5_record(runs: str, budget_macs: float | None = None) -> dict:
  """Every feasible sub-network under a MAC budget: DNNet vs the depth-only network."""
  dnn_dir, depth_dir = os.path.join(runs, "dnn"), os.path.join(runs, "depth_only")
  _, dnn_macs = _saved(dnn_dir)
  dnn_grid = layout.read_eval_grid(dnn_dir)
  dnn_acc = np.array(dnn_grid["accuracy"])
  budget = budget_macs or float(dnn_macs[-1, -1]) / 3
  record = {"budget_macs": budget, "split": dnn_grid["split"],
            "dnn_accuracy": dnn_acc.tolist(), "dnn_macs": dnn_macs.tolist()}
  best = select.select(dnn_acc, {"macs": dnn_macs.astype(float)}, {"macs": budget})
  record["dnn"] = {"best": best, "feasible": [
      {"id": subnet_id(d + 1, c + 1), "accuracy": float(dnn_acc[d, c]),
       "macs": int(dnn_macs[d, c])} for d, c in np.argwhere(dnn_macs <= budget)]}
  if files.exists(layout.eval_grid(depth_dir)):
    depth_acc = np.array(layout.read_eval_grid(depth_dir)["accuracy"])[:, -1]
    depth_macs = _saved(depth_dir)[1][:, -1]
    # A depth-only exit is named by its depth alone.
    feasible = [{"id": f"D{d + 1}", "accuracy": float(a), "macs": int(m)}
                for d, (a, m) in enumerate(zip(depth_acc, depth_macs)) if m <= budget]
    record["depth_only"] = {"best": max(feasible, key=lambda r: r["accuracy"], default=None),
                            "feasible": feasible,
                            "accuracy": depth_acc.tolist(), "macs": depth_macs.tolist()}
  return record


def write_fig5(out: str, record: dict) -> None:
  """fig5.{json,md,png} in `out` (process 0)."""
  if jax.process_index() != 0:
    return
  budget = record["budget_macs"]
  dnn_acc, dnn_macs = np.array(record["dnn_accuracy"]), np.array(record["dnn_macs"])
  fig = plots.figure(figsize=(12, 4.5))
  axes = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, max(dnn_acc.shape[1], 2)]})
  depth = record.get("depth_only")
  if depth is not None:
    col_acc, col_macs = np.array(depth["accuracy"])[:, None], np.array(depth["macs"])[:, None]
    plots.draw_grid(axes[0], col_acc, "depth-only", scale=100.0, mask=col_macs <= budget,
                    vmin=0, vmax=100, column_labels=[""])
    axes[0].set_xlabel("")
  else:
    axes[0].set_title("depth-only")
  plots.draw_grid(axes[1], dnn_acc, f"DNNet: accuracy (%) of sub-networks within "
                  f"{budget:,.0f} MACs", scale=100.0, mask=dnn_macs <= budget, vmin=0, vmax=100)
  files.makedirs(out)
  plots.save(fig, os.path.join(out, "fig5.png"))
  table = [f"# Fig. 5: sub-networks within {budget:,.0f} MACs ({record['split']} accuracy)", ""]
  best = record["dnn"]["best"]
  if best:
    table.append(f"Best DNNet sub-network: **{best['id']}**, {100 * best['accuracy']:.2f}% "
                 f"({best['macs']:,.0f} MACs).")
  if depth and depth.get("best"):
    b = depth["best"]
    table.append(f"Best depth-only exit: **{b['id']}**, {100 * b['accuracy']:.2f}% "
                 f"({b['macs']:,} MACs).")
  table += ["", "| network | sub-network | accuracy (%) | MACs |", "|---|---|---|---|"]
  for label, key in (("DNNet", "dnn"), ("depth-only", "depth_only")):
    for r in sorted(record.get(key, {}).get("feasible", []), key=lambda r: -r["accuracy"]):
      table.append(f"| {label} | {r['id']} | {100 * r['accuracy']:.2f} | {r['macs']:,} |")
  _write(out, "fig5", record, table)


def fig5(runs: str, out: str, budget_macs: float | None = None) -> dict:
  record = fig5_record(runs, budget_macs)
  write_fig5(out, record)
  return record


def grid_record(runs: str) -> dict:
  """The DNNet's accuracy grid next to its MAC grid."""
  dnn_dir = os.path.join(runs, "dnn")
  acc = layout.read_eval_grid(dnn_dir)
  _, macs = _saved(dnn_dir)
  return {"split": acc["split"], "num_examples": acc["num_examples"],
          "accuracy": acc["accuracy"], "macs": macs.tolist()}


def write_grid(out: str, record: dict) -> None:
  """grid.{json,md} and grid_{accuracy,macs}.png in `out` (process 0)."""
  if jax.process_index() != 0:
    return
  acc, macs = np.array(record["accuracy"]), np.array(record["macs"])
  files.makedirs(out)
  plots.grid_heatmap(acc, os.path.join(out, "grid_accuracy.png"),
                     f"DNNet {record['split']} accuracy (%)", scale=100.0)
  plots.grid_heatmap(macs, os.path.join(out, "grid_macs.png"), "MACs (M) per sub-network",
                     scale=1e-6, fmt="{:.2f}")
  d, w = acc.shape
  table = [f"# DNNet accuracy (%) / MACs (M) per sub-network ({record['split']} split)", "",
           "| depth \\ width | " + " | ".join(str(c + 1) for c in range(w)) + " |",
           "|---" * (w + 1) + "|"]
  for i in range(d):
    table.append(f"| {i + 1} | " + " | ".join(
        f"{100 * acc[i, c]:.1f} / {macs[i, c] / 1e6:.2f}" for c in range(w)) + " |")
  _write(out, "grid", record, table)


def grid(runs: str, out: str) -> dict:
  record = grid_record(runs)
  write_grid(out, record)
  return record


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("figure", choices=("fig4", "fig5", "grid"))
  ap.add_argument("--runs", required=True, help="folder of the trained workdirs")
  ap.add_argument("--out", required=True, help="results folder")
  ap.add_argument("--budget_macs", type=float, default=None,
                  help="fig5: MAC budget (default: a third of the full DNNet's MACs)")
  ap.add_argument("--fine_tune_epochs", type=int, default=30)
  args = ap.parse_args(argv)
  try:
    args.runs, args.out = files.check_path(args.runs, "--runs"), files.check_path(args.out, "--out")
    if args.figure == "fig4":
      fig4(args.runs, args.out, args.fine_tune_epochs)
    elif args.figure == "fig5":
      fig5(args.runs, args.out, args.budget_macs)
    else:
      grid(args.runs, args.out)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()

"""Tabulates finished training runs (every RUNS/<name> with eval/grid.json) into OUT.{json,md}.

  python experiments/summarize_runs.py runs/recipe_sweep results/cifar10_cpu/recipe_sweep
  python experiments/summarize_runs.py runs/cifar10_cpu results/cifar10_cpu/long_runs
"""

import json
import os
import sys

import numpy as np

from dnn_jax import files


def main(runs: str, out: str) -> None:
  rows = []
  for name in sorted(os.listdir(runs)):
    grid_path = os.path.join(runs, name, "eval", "grid.json")
    summary_path = os.path.join(runs, name, "train_summary.json")
    if not (os.path.exists(grid_path) and os.path.exists(summary_path)):
      continue
    with open(grid_path) as f:
      grid = json.load(f)
    with open(summary_path) as f:
      summary = json.load(f)
    images_per_s = []
    metrics_path = os.path.join(runs, name, "metrics.jsonl")
    if os.path.exists(metrics_path):
      with open(metrics_path) as f:
        for line in f:
          try:
            images_per_s.append(json.loads(line)["images_per_second"])
          except (json.JSONDecodeError, KeyError):
            continue  # An evaluation record, or a line torn by a kill.
    acc = np.array(grid["accuracy"])
    rows.append({"run": name, "full_exit": float(acc[-1, -1]), "grid_mean": float(acc.mean()),
                 "full_depth_by_width": acc[-1].round(4).tolist(),
                 "full_width_by_depth": acc[:, -1].round(4).tolist(),
                 "final_step": summary["final_step"], "params_sha256": summary["params_sha256"],
                 # Resumed runs: wall time of the last leg only; images/s over all logged steps.
                 "wall_seconds_last_leg": summary["wall_seconds"],
                 "resumed_from_step": summary["resumed_from_step"],
                 # XLA_FLAGS of the last leg ("" = JAX's defaults; absent: recorded before
                 # train summaries had the field).
                 "xla_flags": summary.get("xla_flags"),
                 "median_images_per_s": (float(np.median(images_per_s)) if images_per_s
                                         else float("nan")),
                 "split": grid["split"], "num_examples": grid["num_examples"]})
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  files.write_json(out + ".json", rows)
  lines = ["| run | full exit (%) | mean of all exits (%) | full depth, widths 1..G (%) | "
           "median img/s |", "|---|---|---|---|---|"]
  for r in sorted(rows, key=lambda r: -r["full_exit"]):
    widths = " / ".join(f"{100 * v:.0f}" for v in r["full_depth_by_width"])
    lines.append(f"| {r['run']} | {100 * r['full_exit']:.1f} | {100 * r['grid_mean']:.1f} | "
                 f"{widths} | {r['median_images_per_s']:.0f} |")
  files.write_atomic(out + ".md", "\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  if len(sys.argv) != 3 or not os.path.isdir(sys.argv[1]):
    sys.exit("usage: summarize_runs.py RUNS_DIR OUT_PREFIX (RUNS_DIR: a directory of workdirs)")
  main(sys.argv[1], sys.argv[2])

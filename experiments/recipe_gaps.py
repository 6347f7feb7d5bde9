"""The recipe study's table and plot: every DNNet recipe of RUNS against the networks trained
alone at one width (RUNS/plain_w<k>), at full depth, one schedule length.

Where RUNS also holds a slice's own channel-causal network trained alone (RUNS/causal_w<k>: the
first k groups of the DNNet's architecture, trained on its one exit), each gap is split in two:
what the causal masks cost (plain_w<k> - causal_w<k>) and what the joint training costs
(causal_w<k> - the slice). causal_w1 is plain_w1 itself (one group: nothing is masked).

  python experiments/recipe_gaps.py RUNS OUT_PREFIX
  # e.g. runs/recipe5 results/cifar10_cpu/recipe_study_5ep -> OUT_PREFIX.{json,md,png}

Each recipe's loss and optimizer fields are read from the config saved with its checkpoint,
and with them which exits had weight in its loss: a gap is shown only for a full-depth exit
that was trained, a grid mean only for a run that trained all its exits (diagnostics such as
`lambda_scheme=final` or `full_depth` train some exits only).
"""

import json
import os
import re
import sys

import numpy as np

from dnn_jax import checkpointing
from dnn_jax import files
from dnn_jax import losses
from dnn_jax import plots
from dnn_jax import workdir as layout

RECIPE_FIELDS = {"loss": ("lambda_scheme", "head_gradient", "trunk_gradient", "distill_weight",
                          "distill_teacher", "boosted", "adaptive_weight"),
                 "train": ("optimizer", "learning_rate", "weight_decay", "num_epochs"),
                 "model": ("exit_head",)}


def _run(workdir: str, before: dict | None = None) -> dict:
  """One run's record. A run carried without its checkpoint (a results-only snapshot) takes
  its seed and recipe from `before`, its record in the previous table."""
  grid = layout.read_eval_grid(workdir)
  summary = layout.read_json(layout.train_summary(workdir))
  saved = checkpointing.load_saved(workdir, required=before is None)
  acc = np.array(grid["accuracy"])
  if saved is None:
    from_config = {k: before[k] for k in ("seed", "causal", "recipe")}
    from_config["full_depth_trained"] = before.get("full_depth_trained", [True] * acc.shape[1])
    from_config["all_exits_trained"] = before.get("all_exits_trained", True)
  else:
    saved = saved.config
    from_config = {"seed": saved.seed, "causal": saved.model.causal,
                   "recipe": {f"{part}.{k}": saved[part][k]
                              for part, keys in RECIPE_FIELDS.items() for k in keys}}
    if saved.loss.lambda_scheme == "row_share":  # (Configs saved before it lack the field.)
      from_config["recipe"]["loss.shallow_share"] = saved.loss.shallow_share
    trained = losses.lambda_grid(saved.loss, *acc.shape) > 0
    from_config["full_depth_trained"] = trained[-1].tolist()
    from_config["all_exits_trained"] = bool(trained.all())
  return {"full_depth_by_width": acc[-1].round(4).tolist(),
          "full_width_by_depth": acc[:, -1].round(4).tolist(),
          "grid_mean": round(float(acc.mean()), 4), "full_exit": float(acc[-1, -1]),
          **from_config,
          "final_step": summary["final_step"], "wall_seconds_last_leg": summary["wall_seconds"],
          "resumed_from_step": summary["resumed_from_step"],
          "params_sha256": summary["params_sha256"], "xla_flags": summary.get("xla_flags"),
          "split": grid["split"], "num_examples": grid["num_examples"]}


def main(runs: str, out: str) -> dict:
  done = {n: os.path.join(runs, n) for n in sorted(os.listdir(runs))
          if os.path.exists(layout.eval_grid(os.path.join(runs, n)))
          and os.path.exists(layout.train_summary(os.path.join(runs, n)))}
  before = {}
  if os.path.exists(out + ".json"):
    previous = layout.read_json(out + ".json")
    before = {**{f"plain_w{k}": v for k, v in previous["alone"].items()}, **previous["recipes"]}
    before.update({f"causal_w{k}": v for k, v in previous.get("causal_alone", {}).items()})
  alone, causal_alone, recipes = {}, {}, {}
  for name, workdir in done.items():
    m = re.fullmatch(r"(plain|causal)_w(\d+)", name)
    if m:
      (alone if m[1] == "plain" else causal_alone)[int(m[2])] = _run(workdir, before.get(name))
    else:
      recipes[name] = _run(workdir, before.get(name))
  if not recipes:
    sys.exit(f"{runs}: no finished DNNet run")
  widths = len(next(iter(recipes.values()))["full_depth_by_width"])
  # One group has nothing to mask: the width-1 slice's own network is plain_w1.
  slice_alone = {**({1: alone[1]} if 1 in alone else {}), **causal_alone}

  def gaps(r: dict, reference: dict) -> list:
    return [None if w + 1 not in reference or not r["full_depth_trained"][w] else
            round(reference[w + 1]["full_exit"] - r["full_depth_by_width"][w], 4)
            for w in range(widths)]

  for r in recipes.values():
    r["gap_by_width"] = gaps(r, alone)
    if causal_alone:
      r["joint_training_gap_by_width"] = gaps(r, slice_alone)
  record = {"alone": {str(k): v for k, v in sorted(alone.items())},
            "causal_alone": {str(k): v for k, v in sorted(causal_alone.items())},
            "recipes": recipes}
  reference_runs = {**{f"causal_w{k}": (k, v, f"the width-{k} slice's network trained alone")
                       for k, v in sorted(causal_alone.items())},
                    **{f"plain_w{k}": (k, v, f"trained alone at width {k}")
                       for k, v in sorted(alone.items())}}
  files.write_json(out + ".json", record)

  order = sorted(recipes, key=lambda n: (not recipes[n]["all_exits_trained"],
                                         -recipes[n]["grid_mean"]))
  cols = " | ".join(str(w + 1) for w in range(widths))
  lines = [f"# Recipe study: full depth, accuracy (%) by width ({runs})", "",
           f"| run | grid mean | full depth, widths {cols} |", "|---" * (widths + 2) + "|"]
  for n in sorted(reference_runs, key=lambda n: n[0] == "c"):  # plain_w rows first.
    k, v, what = reference_runs[n]
    cells = ["" for _ in range(widths)]
    cells[k - 1] = f"{100 * v['full_exit']:.1f}"
    lines.append(f"| {n} ({what}) | | " + " | ".join(cells) + " |")
  for n in order:
    r = recipes[n]
    mean = f"{100 * r['grid_mean']:.1f}" if r["all_exits_trained"] else "(not every exit trained)"
    lines.append(f"| {n} | {mean} | "
                 + " | ".join(f"{100 * a:.1f}" for a in r["full_depth_by_width"]) + " |")
  lines += ["", "Gap to the network trained alone at that width (points; blank: no network "
            "trained alone at that width, or an exit without weight in the run's loss):",
            "", f"| run | {cols} |", "|---" * (widths + 1) + "|"]
  for n in order:
    lines.append(f"| {n} | " + " | ".join("" if g is None else f"{100 * g:.1f}"
                                          for g in recipes[n]["gap_by_width"]) + " |")
  if causal_alone:
    lines += ["", "What the causal masks cost (plain_wK - causal_wK, points): "
              + ", ".join(f"width {k} {100 * (alone[k]['full_exit'] - v['full_exit']):.1f}"
                          for k, v in sorted(causal_alone.items()) if k in alone) + ".",
              "", "What the joint training costs: gap to the slice's own channel-causal network "
              "trained alone (causal_wK; causal_w1 = plain_w1; points):",
              "", f"| run | {cols} |", "|---" * (widths + 1) + "|"]
    for n in order:
      lines.append(f"| {n} | " + " | ".join(
          "" if g is None else f"{100 * g:.1f}"
          for g in recipes[n]["joint_training_gap_by_width"]) + " |")
  lines += ["", "| run | recipe (saved config) | seed | steps | wall (s, last leg) |",
            "|---|---|---|---|---|"]
  for n in order + list(reference_runs):  # causal_w rows, then plain_w, each by width.
    r = recipes[n] if n in recipes else reference_runs[n][1]
    recipe = ", ".join(f"{k}={v}" for k, v in r["recipe"].items())
    lines.append(f"| {n} | {recipe} | {r['seed']} | {r['final_step']} | "
                 f"{r['wall_seconds_last_leg']:.0f} |")
  files.write_atomic(out + ".md", "\n".join(lines) + "\n")

  panels = [("gap_by_width", alone, "gap to the network trained alone (points)")]
  if causal_alone:
    panels.append(("joint_training_gap_by_width", slice_alone,
                   "gap to the slice's causal network alone (points)"))
  fig = plots.figure(figsize=(7 * len(panels), 4.5))
  for ax, (key, reference, label) in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
    xs = [w for w in range(1, widths + 1) if w in reference]
    for n in order:
      shown = [w for w in xs if recipes[n][key][w - 1] is not None]
      ax.plot(shown, [100 * recipes[n][key][w - 1] for w in shown], marker="o", label=n)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.set_xlabel("width (channel groups), full depth")
    ax.set_ylabel(label)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  plots.save(fig, out + ".png")
  print("\n".join(lines))
  return record


if __name__ == "__main__":
  if len(sys.argv) != 3 or not os.path.isdir(sys.argv[1]):
    sys.exit("usage: recipe_gaps.py RUNS_DIR OUT_PREFIX")
  main(sys.argv[1], sys.argv[2])

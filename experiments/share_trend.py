"""How the shallower exits' share of the loss (`loss.lambda_scheme=row_share`,
`loss.shallow_share`) trades the full-depth row against the other 48 exits, across the recipe
study's tables (the JSON that `experiments/recipe_gaps.py` writes), one line per seed.

  python experiments/share_trend.py OUT_PREFIX TABLE.json [TABLE.json ...]
  # e.g. results/cifar10_cpu/recipe_study/share_15ep confirm_15ep.json confirm_15ep_seed1.json

A `full_depth` run (lambda on the full-depth row only) is the share 0: its shallower exits were
never trained, so it has a row mean and a full exit but no shallower-exit or grid mean. Runs
that differ from the others in any other recipe field (optimizer, head, ...) are left out.
"""

import collections
import os
import sys

import numpy as np

from dnn_jax import files
from dnn_jax import plots
from dnn_jax import workdir as layout


def _point(name: str, r: dict) -> dict | None:
  scheme = r["recipe"].get("loss.lambda_scheme")
  if scheme not in ("row_share", "full_depth"):
    return None
  share = float(r["recipe"]["loss.shallow_share"]) if scheme == "row_share" else 0.0
  row = np.array(r["full_depth_by_width"], np.float64)
  depths = len(r["full_width_by_depth"])
  point = {"run": name, "seed": r["seed"], "share": share,
           "full_exit": r["full_exit"], "row_mean": round(float(row.mean()), 4),
           "shallower_mean": None, "grid_mean": None}
  if r["all_exits_trained"]:
    # The grid's sum less the full-depth row's, over the (depths - 1) x widths other exits.
    rest = r["grid_mean"] * depths * row.size - row.sum()
    point["shallower_mean"] = round(float(rest / ((depths - 1) * row.size)), 4)
    point["grid_mean"] = r["grid_mean"]
  return point


# What a point's share may change; every other recipe field is held at the runs' common value.
_VARIED = ("loss.lambda_scheme", "loss.shallow_share")


def _held_fixed(candidates: list[tuple[dict, dict]]) -> list[dict]:
  """The points (of (point, recipe) pairs) whose recipe agrees with the most common value of
  every field but the share (a run with another optimizer or head at some share is another
  trend, not a point of this one); the others are named and left out."""
  fields = {k for _, recipe in candidates for k in recipe} - set(_VARIED)
  common = {k: collections.Counter(repr(r.get(k)) for _, r in candidates).most_common(1)[0][0]
            for k in sorted(fields)}
  kept = []
  for p, recipe in candidates:
    differs = [k for k, v in common.items() if repr(recipe.get(k)) != v]
    if differs:
      print(f"left out {p['run']} ({p['table']}): differs in {', '.join(differs)}")
    else:
      kept.append(p)
  return kept


def main(out: str, tables: list[str]) -> dict:
  candidates = []
  for path in tables:
    if not os.path.exists(path):
      sys.exit(f"{path}: no such table (write it with experiments/recipe_gaps.py)")
    for name, r in layout.read_json(path)["recipes"].items():
      p = _point(name, r)
      if p is not None:
        candidates.append(({**p, "table": os.path.basename(path)}, r["recipe"]))
  points = _held_fixed(candidates)
  if not points:
    sys.exit(f"{', '.join(tables)}: no row_share or full_depth run")
  points.sort(key=lambda p: (p["seed"], p["share"]))
  record = {"points": points}
  files.write_json(out + ".json", record)

  def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"

  lines = ["# The shallower exits' share of the loss: what each part of the grid gets", "",
           "| seed | share | run (table) | full exit | full-depth row mean | "
           "shallower exits' mean | grid mean |", "|---|---|---|---|---|---|---|"]
  for p in points:
    lines.append(f"| {p['seed']} | {p['share']:.2f} | {p['run']} ({p['table']}) | "
                 f"{pct(p['full_exit'])} | {pct(p['row_mean'])} | {pct(p['shallower_mean'])} | "
                 f"{pct(p['grid_mean'])} |")
  files.write_atomic(out + ".md", "\n".join(lines) + "\n")

  fig = plots.figure(figsize=(12, 4.5))
  panels = fig.subplots(1, 2)
  styles = ("-", "--", ":", "-.")
  for i, seed in enumerate(sorted({p["seed"] for p in points})):
    mine = [p for p in points if p["seed"] == seed]
    for ax, keys in zip(panels, (("shallower_mean", "grid_mean"), ("row_mean", "full_exit"))):
      for key, color in zip(keys, ("C0", "C1")):
        shown = [p for p in mine if p[key] is not None]
        ax.plot([p["share"] for p in shown], [100 * p[key] for p in shown],
                linestyle=styles[i % len(styles)], marker="o", color=color,
                label=f"{key.replace('_', ' ')}, seed {seed}")
  for ax, title in zip(panels, ("the shallower exits", "the full-depth row")):
    ax.set_xlabel("loss.shallow_share (the shallower exits' share of the loss)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  plots.save(fig, out + ".png")
  print("\n".join(lines))
  return record


if __name__ == "__main__":
  if len(sys.argv) < 3:
    sys.exit("usage: share_trend.py OUT_PREFIX TABLE.json [TABLE.json ...]")
  main(sys.argv[1], sys.argv[2:])

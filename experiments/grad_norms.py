"""Per-width-group gradient norms logged during training (train.log_group_grad_norms), for one
or more workdirs: OUT_PREFIX.{json,md,png}.

  python experiments/grad_norms.py OUT_PREFIX WORKDIR [WORKDIR ...]

The norms are those of the gradient the optimizer receives (after any rescaling), averaged over
each logging window; the table gives the mean over the run and the ratio of the last group's
to the first's.
"""

import json
import os
import re
import sys

import numpy as np

from dnn_jax import files
from dnn_jax import plots


def read(workdir: str) -> dict:
  steps, norms = [], {"trunk": [], "head": []}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if "grad_norm_trunk_g1" not in record:
        continue
      steps.append(record["step"])
      for kind in norms:
        keys = sorted((k for k in record if re.fullmatch(f"grad_norm_{kind}_g\\d+", k)),
                      key=lambda k: int(k.rsplit("g", 1)[1]))
        norms[kind].append([record[k] for k in keys])
  if not steps:
    sys.exit(f"{workdir}/metrics.jsonl has no gradient norms (train.log_group_grad_norms)")
  return {"steps": steps, **{k: np.array(v) for k, v in norms.items()}}


def main(out: str, workdirs: list[str]) -> dict:
  record, lines = {}, []
  fig = plots.figure(figsize=(11, 4 * len(workdirs)))
  axes = fig.subplots(len(workdirs), 2, squeeze=False)
  for row, workdir in enumerate(workdirs):
    name = os.path.basename(os.path.normpath(workdir))
    r = read(workdir)
    record[name] = {"steps": r["steps"], "trunk": r["trunk"].tolist(), "head": r["head"].tolist()}
    groups = r["trunk"].shape[1]
    if not lines:
      lines = ["| run | part | mean norm per group 1..G | last / first |", "|---|---|---|---|"]
    for col, kind in enumerate(("trunk", "head")):
      mean = r[kind].mean(axis=0)
      lines.append(f"| {name} | {kind} | " + " / ".join(f"{v:.3g}" for v in mean)
                   + f" | {mean[-1] / mean[0]:.3f} |")
      ax = axes[row, col]
      for g in range(groups):
        ax.plot(r["steps"], r[kind][:, g], label=f"group {g + 1}")
      ax.set_yscale("log")
      ax.set_title(f"{name}: {kind} gradient norm per width group")
      ax.set_xlabel("step")
      ax.legend(fontsize=6, ncol=2)
  files.write_json(out + ".json", record)
  files.write_atomic(out + ".md", "\n".join(lines) + "\n")
  plots.save(fig, out + ".png")
  print("\n".join(lines))
  return record


if __name__ == "__main__":
  if len(sys.argv) < 3:
    sys.exit("usage: grad_norms.py OUT_PREFIX WORKDIR [WORKDIR ...]")
  main(sys.argv[1], sys.argv[2:])

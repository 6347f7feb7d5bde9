"""Latency of exported sub-networks in every installed inference runtime, measured side by side.

  python benchmarks/deploy_latency.py --workdir=results/cifar10_cpu/model \
      --cells=D1W1,D3W2,D5W4,D7W4,D7W8 --out=benchmarks/results/deploy_latency_cpu

Each cell of the trained network in --workdir is compiled in every runtime of
`dnn_jax.runtimes` that is installed (jax always; onnxruntime, iree, litert with the export
extras), at batch 1 and --batch. Timing is interleaved: every round calls each (cell, runtime)
once, in a new random order, so load on a shared machine falls on all of them alike; the median
over --repeats rounds is reported. Beside each latency: its share of the full network's latency
in the same runtime over the cell's share of the full network's MACs (1.0: latency follows
MACs; above 1: small sub-networks save less time than their MACs promise). Writes OUT.json and
OUT.md.
"""

import argparse
import os
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnn_jax import checkpointing, evaluate, files, resources, runtimes, subnetwork  # noqa: E402
from dnn_jax import config_base, xla_flags  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", default="results/cifar10_cpu/model")
  ap.add_argument("--cells", default="D1W1,D3W2,D5W4,D7W4,D7W8")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=50)
  ap.add_argument("--runtimes", default=",".join(runtimes.available()))
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  names = [r for r in args.runtimes.split(",") if r]
  for r in names:
    runtimes.require(r, f"--runtimes={r}")
  config = config_base.base_config()
  saved = checkpointing.load_saved(args.workdir)
  shape = saved.input_shape(config.data)
  setup, variables, step, _, class_names = evaluate.load_checkpoint(
      config, args.workdir, shape[-1], saved=saved)
  model, variables = setup.model, jax.device_get(variables)
  cells = [subnetwork.parse_subnet_id(c) for c in args.cells.split(",")]
  full = (model.num_exits, model.num_groups)
  if full not in cells:
    cells.append(full)  # the reference of the shares
  macs = resources.analytic_grid(model, shape, len(class_names))["macs"]
  rng = np.random.default_rng(0)
  fns, inputs = {}, {}
  for b in (1, args.batch):
    inputs[b] = rng.uniform(0, 255, (b,) + tuple(shape)).astype(np.float32)
  for d, c in cells:
    sub, sub_vars = subnetwork.extract(model, variables, d, c)
    for r in names:
      for b in (1, args.batch):
        t = time.perf_counter()
        fns[(d, c, r, b)] = runtimes.compile_subnetwork(r, sub, sub_vars, shape, b)
        fns[(d, c, r, b)](inputs[b])  # warm-up
        print(f"compiled {subnetwork.subnet_id(d, c)} {r} batch {b} in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
  times = {k: [] for k in fns}
  keys = list(fns)
  for i in range(args.repeats):
    for j in rng.permutation(len(keys)):
      k = keys[j]
      t = time.perf_counter()
      fns[k](inputs[k[3]])
      times[k].append(time.perf_counter() - t)
    if (i + 1) % 10 == 0:
      print(f"round {i + 1}/{args.repeats}", flush=True)
  rows = []
  for d, c in cells:
    for r in names:
      row = {"cell": subnetwork.subnet_id(d, c), "runtime": r,
             "macs": int(macs[d - 1, c - 1]),
             "mac_share": float(macs[d - 1, c - 1] / macs[full[0] - 1, full[1] - 1])}
      for b in (1, args.batch):
        ms = 1e3 * float(np.median(times[(d, c, r, b)]))
        ref = 1e3 * float(np.median(times[(full[0], full[1], r, b)]))
        row[f"ms_batch{b}"] = ms
        row[f"share_over_mac_share_batch{b}"] = (ms / ref) / row["mac_share"]
      rows.append(row)
  record = {"benchmark": "deploy_latency", "workdir": args.workdir, "checkpoint_step": int(step),
            "batch": args.batch, "repeats": args.repeats, "runtimes": names,
            "versions": {r: runtimes.version(_DIST[r]) for r in names},
            "machine": platform.node(), "cpu_count": os.cpu_count(),
            "xla_flags": xla_flags.current(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
  table = _table(record)
  print(table)
  if args.out:
    files.write_json(args.out + ".json", record)
    files.write_atomic(args.out + ".md", table)
  return record


_DIST = {"jax": "jaxlib", "onnxruntime": "onnxruntime", "iree": "iree-base-runtime",
         "litert": "ai-edge-litert"}


def _table(record) -> str:
  b = record["batch"]
  names = record["runtimes"]
  lines = [f"# Sub-network latency per runtime (ms, median of {record['repeats']} interleaved "
           f"rounds; {record['date']}, {record['cpu_count']} CPU cores)", "",
           "In brackets: the latency share of the full network over the MAC share "
           "(1.0 = latency follows MACs).", "",
           "| cell | MACs | " + " | ".join(f"{n} b1 | {n} b{b}" for n in names) + " |",
           "|---|---|" + "---|" * (2 * len(names))]
  cells = list(dict.fromkeys(r["cell"] for r in record["rows"]))
  for cell in cells:
    row = {r["runtime"]: r for r in record["rows"] if r["cell"] == cell}
    any_row = next(iter(row.values()))
    parts = [f"{row[n]['ms_batch1']:.2f} ({row[n]['share_over_mac_share_batch1']:.1f}) | "
             f"{row[n][f'ms_batch{b}']:.1f} ({row[n][f'share_over_mac_share_batch{b}']:.1f})"
             for n in names]
    lines.append(f"| {cell} | {any_row['macs']:,} | " + " | ".join(parts) + " |")
  lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
            f"Command: `{record['command']}`", ""]
  return "\n".join(lines)


if __name__ == "__main__":
  main()

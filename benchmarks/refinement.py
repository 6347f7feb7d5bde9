"""Anytime refinement vs recomputing each sub-network from scratch (issue: sub-networks).

  python benchmarks/refinement.py --preset=paper --batch=64 --out=benchmarks/results/refinement_cpu.json

Walks a path of growing sub-networks. For each step it times (median of --repeats after a
warm-up, compile excluded) the refinement step and a from-scratch forward of the target
sub-network (sliced, jit-compiled), and sets their ratio beside the analytic MAC ratio
(MACs(target) - MACs(previous)) / MACs(target) that refinement should approach.
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnn_jax import config_base, files, models, refine, resources, subnetwork, xla_flags  # noqa: E402

PATHS = {"paper": [(4, 4), (4, 11), (8, 11), (8, 16), (12, 16), (16, 22)],
         "cpu": [(2, 2), (2, 4), (4, 4), (4, 6), (7, 8)]}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", choices=sorted(PATHS), default="paper")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  cfg = config_base.base_config().model
  if args.preset == "cpu":
    cfg.num_groups, cfg.channels_per_group, cfg.blocks_per_stage = 8, (2, 4, 8), (2, 2, 2)
  model = models.create_model(cfg, 10)
  shape = (32, 32, 3)
  variables = model.init(jax.random.key(0), jnp.zeros((1,) + shape))
  images = jax.random.uniform(jax.random.key(1), (args.batch,) + shape, maxval=255.0)
  macs = resources.analytic_grid(model, shape, 10)["macs"]
  path = PATHS[args.preset]

  def walk():
    r = refine.Refiner(model, variables, images)
    steps = []
    for d, c in path:
      t = time.perf_counter()
      jax.block_until_ready(r.refine(d, c))
      steps.append(time.perf_counter() - t)
    return steps

  walk()  # Compiles every step.
  refine_times = np.median([walk() for _ in range(args.repeats)], axis=0)
  rows, prev = [], None
  for (d, c), t_refine in zip(path, refine_times):
    sub, sub_vars = subnetwork.extract(model, variables, d, c)
    fwd = jax.jit(sub.apply)
    jax.block_until_ready(fwd(sub_vars, images))
    t_scratch = resources.median_seconds(fwd, (sub_vars, images), 0, args.repeats)
    mac_ratio = 1.0 if prev is None else float(
        (macs[d - 1, c - 1] - macs[prev[0] - 1, prev[1] - 1]) / macs[d - 1, c - 1])
    rows.append({"from": None if prev is None else subnetwork.subnet_id(*prev),
                 "to": subnetwork.subnet_id(d, c), "refine_ms": 1e3 * float(t_refine),
                 "scratch_ms": 1e3 * t_scratch, "time_ratio": float(t_refine / t_scratch),
                 "mac_ratio": mac_ratio})
    print(f"{rows[-1]['from'] or 'start':>7} -> {rows[-1]['to']:<7} refine "
          f"{rows[-1]['refine_ms']:8.2f} ms  scratch {rows[-1]['scratch_ms']:8.2f} ms  "
          f"time ratio {rows[-1]['time_ratio']:.2f}  MAC ratio {mac_ratio:.2f}", flush=True)
    prev = (d, c)
  record = {"benchmark": "refinement", "preset": args.preset, "batch": args.batch,
            "repeats": args.repeats, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "machine": platform.node(),
            "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "xla_flags": xla_flags.current(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "steps": rows,
            "total_refine_ms": float(sum(r["refine_ms"] for r in rows)),
            "scratch_final_ms": rows[-1]["scratch_ms"]}
  if args.out:
    files.write_json(args.out, record)
  return record


if __name__ == "__main__":
  main()

"""Performance benchmarks: ratios measured side by side in one process (not timed tests).

  python benchmarks/run.py --quick --out benchmarks/results/quick_cpu.json   # < 10 min on 2 CPUs
  python benchmarks/run.py --out benchmarks/results/full_cpu.json            # paper preset

Every time is the median of --repeats runs after --warmup untimed runs, compile excluded.
Writes one JSON object; the keys the summary needs are at its top level.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnn_jax import config_base, input_pipeline, models, resources, subnetwork, train  # noqa

ARGS = None


def timed(fn, *args) -> float:
  """Median seconds of fn(*args) after warm-up (the first call also compiles)."""
  for _ in range(ARGS.warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(ARGS.repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def model_config(preset: str, **overrides):
  c = config_base.base_config()
  if preset == "cpu":
    c.model.num_groups, c.model.channels_per_group = 8, (2, 4, 8)
    c.model.blocks_per_stage = (2, 2, 2)
  elif preset == "resnet32":
    c.model.num_groups, c.model.channels_per_group = 1, (16, 32, 64)
    c.model.causal, c.model.shortcut = False, "pad"
  c.model.update(overrides)
  return c


def batch(n, seed=0):
  k = jax.random.key(seed)
  return (jax.random.randint(k, (n, 32, 32, 3), 0, 256).astype(jnp.uint8),
          jax.random.randint(jax.random.fold_in(k, 1), (n,), 0, 10))


def make_train_step(cfg, only_final: bool = False):
  """(jitted step, state) for cfg; only_final: the same backbone, one exit, plain CE."""
  model = models.create_model(cfg.model, 10, input_mean=cfg.data.mean, input_std=cfg.data.std)
  if only_final:
    model = model.clone(only_last_exit=True)
  tx = train.create_optimizer(cfg.train, optax.constant_schedule(0.1))
  state = train.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  lam = train.lambda_grid(cfg.loss, *models.grid_shape(cfg.model))
  if not only_final:
    step = functools.partial(train.train_step, lam_LxG=lam, seed=0, data_config=cfg.data,
                             loss_config=cfg.loss)
  else:
    def step(state, images, labels):
      def loss_fn(p):
        logits, upd = state.apply_fn({"params": p, "batch_stats": state.batch_stats},
                                     images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd
      (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return state.apply_gradients(grads=g, batch_stats=upd["batch_stats"]), {"loss": loss}
  return jax.jit(step), state


def bench_exit_overhead(cfg, n):
  images, labels = batch(n)
  out = {}
  for name, only in (("all_exits", False), ("final_exit_only", True)):
    step, state = make_train_step(cfg, only)
    out[f"{name}_ms"] = 1e3 * timed(lambda: step(state, images, labels)[1])
  out["exit_overhead_ratio"] = out["all_exits_ms"] / out["final_exit_only_ms"]
  return out


def bench_grid_eval(cfg, n):
  images, labels = batch(n)
  model = models.create_model(cfg.model, 10)
  variables = model.init(jax.random.key(0), images[:1])
  mask = jnp.ones((n,), bool)
  grid_step = jax.jit(functools.partial(train.eval_step, model))
  sub, sub_vars = subnetwork.extract(model, variables, model.num_exits, model.num_groups)
  plain = jax.jit(lambda v, x: sub.apply(v, x))
  out = {"grid_eval_ms": 1e3 * timed(grid_step, variables, images, labels, mask),
         "one_forward_ms": 1e3 * timed(plain, sub_vars, images)}
  out["grid_eval_ratio"] = out["grid_eval_ms"] / out["one_forward_ms"]
  each = 0.0
  for d in range(1, model.num_exits + 1):
    for c in range(1, model.num_groups + 1):
      s, sv = subnetwork.extract(model, variables, d, c)
      each += timed(jax.jit(lambda v, x, s=s: s.apply(v, x)), sv, images)
  out["each_sub_network_separately_ms"] = 1e3 * each
  out["grid_speedup_over_separate"] = out["each_sub_network_separately_ms"] / out["grid_eval_ms"]
  return out


def bench_conv_forms(cfg, n, forms):
  images, labels = batch(n)
  out = {}
  for form in forms:
    c = cfg.copy_and_resolve_references()
    c.model.conv_form = form
    model = models.create_model(c.model, 10)
    variables = model.init(jax.random.key(0), images[:1])
    fwd = jax.jit(lambda v, x, m=model: m.apply(v, x))
    step, state = make_train_step(c)
    out[form] = {"forward_ms": 1e3 * timed(fwd, variables, images),
                 "train_step_ms": 1e3 * timed(lambda: step(state, images, labels)[1])}
  best = min(out, key=lambda f: out[f]["train_step_ms"])
  return {"forms": out, "fastest_train_form": best, "backend": jax.default_backend()}


def bench_latency_share(cfg, batches):
  model = models.create_model(cfg.model, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  macs = resources.analytic_grid(model, (32, 32, 3), 10)["macs"].astype(float)
  out = {}
  for b in batches:
    x = jnp.zeros((b, 32, 32, 3))
    lat = np.zeros(macs.shape)
    for d in range(1, model.num_exits + 1):
      for c in range(1, model.num_groups + 1):
        s, sv = subnetwork.extract(model, variables, d, c)
        lat[d - 1, c - 1] = timed(jax.jit(lambda v, x, s=s: s.apply(v, x)), sv, x)
    share = (lat / lat[-1, -1]) / (macs / macs[-1, -1])
    big = macs / macs[-1, -1] >= 0.10
    worst = np.unravel_index(np.argmax(np.where(big, share, -1)), share.shape)
    out[f"batch{b}"] = {"max_ratio": float(share[big].max()),
                        "median_ratio": float(np.median(share[big])),
                        "worst_cell": f"D{worst[0] + 1}W{worst[1] + 1}",
                        "cells_at_least_10pct_macs": int(big.sum())}
  out["latency_share_over_mac_share_max"] = max(v["max_ratio"] for v in out.values())
  return out


def bench_hardware(cfg, n):
  a = jax.random.normal(jax.random.key(0), (2048, 2048))
  matmul = jax.jit(lambda x: x @ x)
  matmul_flops = 2 * 2048 ** 3 / timed(matmul, a)
  images, labels = batch(n)
  step, state = make_train_step(cfg)
  t = timed(lambda: step(state, images, labels)[1])
  compiled = step.lower(state, images, labels).compile()
  xla_flops = compiled.cost_analysis()["flops"]
  model = models.create_model(cfg.model, 10)
  macs = resources.analytic_grid(model, (32, 32, 3), 10)["macs"][-1, -1]
  return {"train_images_per_s": n / t, "matmul_gflops": matmul_flops / 1e9,
          "train_xla_gflops": xla_flops / t / 1e9,
          "flops_fraction_of_matmul": xla_flops / t / matmul_flops,
          # Useful work: forward + backward ~ 3 x 2 x the causal network's MACs per image.
          "useful_flops_fraction_of_matmul": 6 * macs * n / t / matmul_flops}


def bench_input_wait(cfg, n, steps):
  split = input_pipeline.Split(np.asarray(batch(4 * n)[0]), np.asarray(batch(4 * n)[1]))
  step, state = make_train_step(cfg)
  sharding = jax.sharding.NamedSharding(train.make_mesh(), jax.sharding.PartitionSpec("data"))
  batches = input_pipeline.TrainBatches(split, n, 0, sharding)
  images, labels = batches.batch(0)
  jax.block_until_ready(step(state, images, labels))
  wait = 0.0
  t0 = time.perf_counter()
  it = batches.iterate(0, steps)
  metrics = None
  for _ in range(steps):
    t = time.perf_counter()
    _, images, labels = next(it)
    wait += time.perf_counter() - t
    state, metrics = step(state, images, labels)
  jax.block_until_ready(metrics)
  total = time.perf_counter() - t0
  return {"input_wait_share": wait / total, "steps": steps, "loop_seconds": total}


def bench_resnet_reference(n):
  images, labels = batch(n)
  out = {}
  for name, cfg in (("resnet32", model_config("resnet32", blocks_per_stage=(5, 5, 5))),
                    ("dnnet_paper", model_config("paper"))):
    cfg.loss.lambda_scheme = "final" if name == "resnet32" else "uniform"
    step, state = make_train_step(cfg)
    out[f"{name}_train_step_ms"] = 1e3 * timed(lambda: step(state, images, labels)[1])
    m = models.create_model(cfg.model, 10)
    out[f"{name}_macs"] = int(resources.analytic_grid(m, (32, 32, 3), 10)["macs_conv"][-1, -1])
  out["dnnet_over_resnet32"] = out["dnnet_paper_train_step_ms"] / out["resnet32_train_step_ms"]
  return out


def main():
  global ARGS
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="reduced sizes: < 10 min on 2 CPUs")
  ap.add_argument("--out", default="")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=5)
  ARGS = ap.parse_args()
  quick = ARGS.quick
  preset = "cpu" if quick else "paper"
  cfg = model_config(preset)
  n = 64 if quick else 128
  t_start = time.time()
  record = {"quick": quick, "preset": preset, "batch": n, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "machine": platform.node(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv)}
  forms = ["masked", "blocks:2", "blocks:4"] if quick else ["masked", "blocks:2", "blocks:4",
                                                           "blocks:22"]
  sections = [
      ("exit_overhead", lambda: bench_exit_overhead(cfg, n)),
      ("grid_eval", lambda: bench_grid_eval(cfg, n)),
      ("conv_forms", lambda: bench_conv_forms(cfg, n, forms)),
      ("latency_share", lambda: bench_latency_share(cfg, [1] if quick else [1, 128])),
      ("hardware", lambda: bench_hardware(cfg, n)),
      ("input_pipeline", lambda: bench_input_wait(cfg, n, 10 if quick else 30)),
      ("resnet32_reference", lambda: bench_resnet_reference(16 if quick else 128)),
  ]
  for name, fn in sections:
    t = time.time()
    record[name] = fn()
    print(f"{name} ({time.time() - t:.0f} s): {json.dumps(record[name])[:400]}", flush=True)
  record.update(
      exit_overhead_ratio=record["exit_overhead"]["exit_overhead_ratio"],
      grid_eval_ratio=record["grid_eval"]["grid_eval_ratio"],
      latency_share_over_mac_share_max=record["latency_share"][
          "latency_share_over_mac_share_max"],
      flops_fraction_of_matmul=record["hardware"]["flops_fraction_of_matmul"],
      input_wait_share=record["input_pipeline"]["input_wait_share"],
      wall_seconds=round(time.time() - t_start, 1))
  if ARGS.out:
    os.makedirs(os.path.dirname(ARGS.out) or ".", exist_ok=True)
    with open(ARGS.out + ".tmp", "w") as f:
      json.dump(record, f, indent=1)
    os.replace(ARGS.out + ".tmp", ARGS.out)
  print(json.dumps({k: record[k] for k in ("exit_overhead_ratio", "grid_eval_ratio",
                                           "latency_share_over_mac_share_max",
                                           "flops_fraction_of_matmul", "input_wait_share",
                                           "wall_seconds")}))


if __name__ == "__main__":
  main()

"""Performance benchmarks: ratios measured side by side in one process (not timed tests).

  python benchmarks/run.py --quick --out benchmarks/results/quick_cpu.json   # < 10 min on 2 CPUs
  python benchmarks/run.py --out benchmarks/results/full_cpu.json            # paper preset
  python benchmarks/run.py --cells=24 --out ...   # per-cell benchmarks on 24 sampled cells

Every time is the median of --repeats runs after --warmup untimed runs, compile excluded.
Alternatives that a ratio compares (exit overhead, grid evaluation, conv forms, ResNet-32
reference) are timed interleaved, round by round, so a load that comes and goes on a shared
machine hits them alike.
Writes one JSON object (rewritten after every section, so an interrupted run keeps what it
measured; "complete" says whether all sections ran); the summary's keys are at its top level.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnn_jax import config_base, files, input_pipeline, losses, models, optimizer, resources, runtimes, state as state_lib, subnetwork, train, xla_flags  # noqa

ARGS = None


def timed(fn, *args) -> float:
  """Median seconds of fn(*args) after warm-up (the first call also compiles)."""
  return resources.median_seconds(fn, args, ARGS.warmup, ARGS.repeats)


def side_by_side(fns: dict) -> dict:
  """Median seconds of each fn, timed round-robin after warm-up: {name: seconds}."""
  for fn in fns.values():
    for _ in range(ARGS.warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(ARGS.repeats):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  return {name: float(np.median(ts)) for name, ts in times.items()}


def sampled_cells(macs_LxG: np.ndarray, min_share: float = 0.0) -> list[tuple[int, int]]:
  """(depth, width) cells, 1-based, with >= min_share of the full MACs: all, or --cells of them
  spread evenly over the MAC-sorted list (the full network always included)."""
  share = macs_LxG / macs_LxG[-1, -1]
  cells = sorted(((d + 1, c + 1) for d, c in zip(*np.nonzero(share >= min_share))),
                 key=lambda dc: share[dc[0] - 1, dc[1] - 1])
  if ARGS.cells and ARGS.cells < len(cells):
    idx = np.unique(np.linspace(0, len(cells) - 1, ARGS.cells).round().astype(int))
    cells = [cells[i] for i in idx]
  return cells


def model_config(preset: str, **overrides):
  c = config_base.base_config()
  c.model.dtype = ARGS.dtype
  if preset == "cpu":
    c.model.num_groups, c.model.channels_per_group = 8, (2, 4, 8)
    c.model.blocks_per_stage = (2, 2, 2)
  elif preset == "resnet32":
    c.model.num_groups, c.model.channels_per_group = 1, (16, 32, 64)
    c.model.causal, c.model.shortcut = False, "pad"
  c.model.update(overrides)
  return c


def mac_grid(model_cfg, key: str = "macs") -> np.ndarray:
  """Analytic MACs per image (depths x widths) of the network a model config describes."""
  model = models.create_model(model_cfg, 10)
  return resources.analytic_grid(model, (32, 32, 3), 10)[key].astype(float)


def batch(n, seed=0):
  k = jax.random.key(seed)
  return (jax.random.randint(k, (n, 32, 32, 3), 0, 256).astype(jnp.uint8),
          jax.random.randint(jax.random.fold_in(k, 1), (n,), 0, 10))


COMPILE_SECONDS = {}  # train-step compile times, by a readable key
_STEPS = {}


def make_train_step(cfg, n: int, only_final: bool = False):
  """(compiled step, state) for cfg at batch n; only_final: the same backbone, one exit, plain CE.

  Memoised: sections that time the same network share one compilation (on an accelerator a
  train-step compile costs more than the timing)."""
  key = (cfg.model.to_json(), cfg.loss.to_json(), n, only_final)
  if key not in _STEPS:
    t = time.perf_counter()
    step, state = _make_train_step(cfg, only_final)
    images, labels = batch(n)
    _STEPS[key] = step.lower(state, images, labels).compile(), state
    name = (f"{cfg.model.num_groups}g-{cfg.model.conv_form}-{cfg.model.dtype}-b{n}"
            + ("-final_only" if only_final else ""))
    COMPILE_SECONDS[name] = round(time.perf_counter() - t, 1)
  return _STEPS[key]


def _make_train_step(cfg, only_final: bool):
  model = models.create_model(cfg.model, 10, input_mean=cfg.data.mean, input_std=cfg.data.std)
  if only_final:
    model = model.clone(only_last_exit=True)
  tx = optimizer.create_optimizer(cfg.train, optax.constant_schedule(0.1))
  state = state_lib.init_state(model, tx, jax.random.key(0), (32, 32, 3))
  lam = losses.lambda_grid(cfg.loss, *models.grid_shape(cfg.model))
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
  fns = {}
  for name, only in (("all_exits", False), ("final_exit_only", True)):
    step, state = make_train_step(cfg, n, only)
    fns[name] = lambda step=step, state=state: step(state, images, labels)[1]
  out = {f"{k}_ms": 1e3 * v for k, v in side_by_side(fns).items()}
  out["exit_overhead_ratio"] = out["all_exits_ms"] / out["final_exit_only_ms"]
  return out


def bench_grid_eval(cfg, n):
  images, labels = batch(n)
  model = models.create_model(cfg.model, 10)
  variables = model.init(jax.random.key(0), images[:1])
  mask = jnp.ones((n,), bool)
  grid_step = jax.jit(functools.partial(state_lib.eval_step, model))
  sub, sub_vars = subnetwork.extract(model, variables, model.num_exits, model.num_groups)
  plain = jax.jit(lambda v, x: sub.apply(v, x))
  # Where the difference goes: the fused network's logits of every exit, and the same network
  # (masks applied on the fly) with only its last exit's head.
  all_logits = jax.jit(lambda v, x: model.apply(v, x))
  last = model.clone(only_last_exit=True)
  last_only = jax.jit(lambda v, x: last.apply(v, x))
  times = side_by_side({"grid_eval": lambda: grid_step(variables, images, labels, mask),
                        "one_forward": lambda: plain(sub_vars, images),
                        "all_exit_logits": lambda: all_logits(variables, images),
                        "last_exit_only": lambda: last_only(variables, images)})
  out = {f"{k}_ms": 1e3 * v for k, v in times.items()}
  out["grid_eval_ratio"] = out["grid_eval_ms"] / out["one_forward_ms"]
  macs = mac_grid(cfg.model)
  cells = sampled_cells(macs)
  each = []
  for d, c in cells:
    s, sv = subnetwork.extract(model, variables, d, c)
    each.append(timed(jax.jit(lambda v, x, s=s: s.apply(v, x)), sv, images))
  # With --cells, the sum over all cells is estimated from the sampled ones, MAC-weighted by
  # sampling evenly over the MAC-sorted cells: mean sampled time x number of cells.
  out["each_sub_network_separately_ms"] = 1e3 * float(np.mean(each)) * macs.size
  out["separately_cells_timed"] = len(cells)
  out["separately_estimated"] = len(cells) < macs.size
  out["grid_speedup_over_separate"] = out["each_sub_network_separately_ms"] / out["grid_eval_ms"]
  return out


def bench_conv_forms(cfg, n, forms):
  images, labels = batch(n)
  fwds, steps = {}, {}
  for form in forms:
    c = cfg.copy_and_resolve_references()
    c.model.conv_form = form
    model = models.create_model(c.model, 10)
    variables = model.init(jax.random.key(0), images[:1])
    fwd = jax.jit(lambda v, x, m=model: m.apply(v, x))
    fwds[form] = lambda fwd=fwd, variables=variables: fwd(variables, images)
    step, state = make_train_step(c, n)
    steps[form] = lambda step=step, state=state: step(state, images, labels)[1]
  fwd_s, step_s = side_by_side(fwds), side_by_side(steps)
  out = {f: {"forward_ms": 1e3 * fwd_s[f], "train_step_ms": 1e3 * step_s[f]} for f in forms}
  return {"forms": out, "fastest_train_form": min(forms, key=step_s.get),
          "fastest_forward_form": min(forms, key=fwd_s.get), "backend": jax.default_backend(),
          "dtype": cfg.model.dtype, "batch": n}


def activation_grid(model) -> np.ndarray:
  """Conv output elements per image (depths x widths): what each cell writes and reads back,
  the traffic of a memory-bound forward pass (BN, ReLU and residual adds touch the same maps)."""
  acts = np.zeros((model.num_exits, model.num_groups))
  for layer in resources.conv_layers(model, (32, 32, 3)):
    acts[layer.depth - 1] += layer.out_hw * layer.out_channels_by_width
  return np.cumsum(acts, axis=0)


def bench_latency_share(cfg, batches):
  model = models.create_model(cfg.model, 10)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  macs = mac_grid(cfg.model)
  acts = activation_grid(model)
  out = {}
  cells = sampled_cells(macs, min_share=0.10)
  for b in batches:
    x = jnp.zeros((b, 32, 32, 3))
    lat = {}
    for d, c in cells:
      s, sv = subnetwork.extract(model, variables, d, c)
      lat[d, c] = timed(jax.jit(lambda v, x, s=s: s.apply(v, x)), sv, x)
    full = lat[model.num_exits, model.num_groups]
    share = {dc: (t / full) / (macs[dc[0] - 1, dc[1] - 1] / macs[-1, -1])
             for dc, t in lat.items()}
    worst = max(share, key=share.get)
    # The same latency shares over each cell's share of the activation traffic instead.
    by_acts = {dc: (t / full) / (acts[dc[0] - 1, dc[1] - 1] / acts[-1, -1])
               for dc, t in lat.items()}
    out[f"batch{b}"] = {"max_ratio": float(share[worst]),
                        "median_ratio": float(np.median(list(share.values()))),
                        "worst_cell": f"D{worst[0]}W{worst[1]}",
                        "latency_over_activation_share_max": float(max(by_acts.values())),
                        "latency_over_activation_share_min": float(min(by_acts.values())),
                        "latency_over_activation_share_median": float(
                            np.median(list(by_acts.values()))),
                        "full_network_ms": 1e3 * full,
                        "cells_timed": len(cells),
                        "cells_at_least_10pct_macs": int((macs / macs[-1, -1] >= 0.10).sum())}
  out["latency_share_over_mac_share_max"] = max(v["max_ratio"] for v in out.values())
  # What a small cell is up against: one 3x3 conv on the first stage's map at batch 1, at the
  # narrowest and the full width (MACs differ by num_groups^2).
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  cpg, g = models.channels_per_group(cfg.model)[0], cfg.model.num_groups
  out["one_conv_batch1_ms"] = {
      f"{c}_channels": 1e3 * timed(conv, jnp.ones((1, 32, 32, c), cfg.model.dtype),
                                   jnp.ones((3, 3, c, c), cfg.model.dtype))
      for c in (cpg, cpg * g)}
  return out


def matmul_flop_rate() -> tuple[int, float]:
  """(size, FLOP/s) of a square matmul in the model's dtype, big enough to saturate the
  backend: the hardware reference."""
  size = 2048 if jax.default_backend() == "cpu" else 8192
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.dtype(ARGS.dtype))
  return size, 2 * size ** 3 / timed(jax.jit(lambda x: x @ x), a)


def bench_hardware(cfg, n):
  size, matmul_flops = matmul_flop_rate()
  images, labels = batch(n)
  step, state = make_train_step(cfg, n)
  t = timed(lambda: step(state, images, labels)[1])
  cost = step.cost_analysis()
  xla_flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
  macs = mac_grid(cfg.model)
  dense = cfg.model.copy_and_resolve_references()
  dense.causal = False  # the same layout without masks: what the masked form executes
  dense_macs = mac_grid(dense)
  return {"conv_form": models.resolve_conv_form(cfg.model.conv_form),
          "train_images_per_s": n / t, "matmul_size": size, "matmul_gflops": matmul_flops / 1e9,
          # Executed work: forward + backward ~ 3 x 2 x the MACs the conv form runs (the
          # masked form runs the dense layout's), counted analytically on every backend.
          "flops_fraction_of_matmul": 6 * dense_macs[-1, -1] * n / t / matmul_flops,
          # XLA's own count (on GPU it leaves out convolutions run as cuDNN custom calls).
          "xla_flops_per_step": float(xla_flops), "train_xla_gflops": xla_flops / t / 1e9,
          "xla_flops_fraction_of_matmul": xla_flops / t / matmul_flops,
          # Useful work: forward + backward ~ 3 x 2 x the causal network's MACs per image.
          "useful_flops_fraction_of_matmul": 6 * macs[-1, -1] * n / t / matmul_flops}


def bench_input_wait(cfg, n, steps):
  split = input_pipeline.Split(np.asarray(batch(4 * n)[0]), np.asarray(batch(4 * n)[1]))
  step, state = make_train_step(cfg, n)
  sharding = jax.sharding.NamedSharding(state_lib.make_mesh(), jax.sharding.PartitionSpec("data"))
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
  """The DNNet paper preset vs a ResNet-32 of the same MACs, and vs the dense network its
  masked form executes (its channels, causal=False, one group, the final exit only): the
  ratio splits into the price of masks and exits and the price of dense FLOPs."""
  images, labels = batch(n)
  out, fns = {}, {}
  paper = model_config("paper", conv_form=ARGS.reference_form)
  dense = model_config("paper", num_groups=1, causal=False,
                       channels_per_group=tuple(paper.model.num_groups * c
                                                for c in paper.model.channels_per_group))
  for name, cfg in (("resnet32", model_config("resnet32", blocks_per_stage=(5, 5, 5))),
                    ("dnnet_paper", paper), ("dense_same_channels", dense)):
    cfg.loss.lambda_scheme = "uniform" if name == "dnnet_paper" else "final"
    step, state = make_train_step(cfg, n)
    fns[name] = lambda step=step, state=state: step(state, images, labels)[1]
    out[f"{name}_macs"] = int(mac_grid(cfg.model, "macs_conv")[-1, -1])
  for name, seconds in side_by_side(fns).items():
    out[f"{name}_train_step_ms"] = 1e3 * seconds
  out["dnnet_conv_form"] = ARGS.reference_form
  out["dnnet_over_resnet32"] = out["dnnet_paper_train_step_ms"] / out["resnet32_train_step_ms"]
  out["dnnet_over_dense_same_channels"] = (out["dnnet_paper_train_step_ms"]
                                           / out["dense_same_channels_train_step_ms"])
  out["dense_same_channels_over_resnet32"] = (out["dense_same_channels_train_step_ms"]
                                              / out["resnet32_train_step_ms"])
  return out


SECTIONS = ("exit_overhead", "grid_eval", "conv_forms", "latency_share", "hardware",
            "input_pipeline", "resnet32_reference")
SUMMARY = {"exit_overhead_ratio": ("exit_overhead", "exit_overhead_ratio"),
           "grid_eval_ratio": ("grid_eval", "grid_eval_ratio"),
           "latency_share_over_mac_share_max": ("latency_share",
                                                "latency_share_over_mac_share_max"),
           "flops_fraction_of_matmul": ("hardware", "flops_fraction_of_matmul"),
           "input_wait_share": ("input_pipeline", "input_wait_share")}


def write(record: dict) -> None:
  if ARGS.out:
    files.write_json(ARGS.out, record)


def main():
  global ARGS
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="reduced sizes: < 10 min on 2 CPUs")
  ap.add_argument("--out", default="")
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--sections", default=",".join(SECTIONS),
                  help="comma-separated subset of: " + ", ".join(SECTIONS))
  ap.add_argument("--preset", choices=("cpu", "paper"), default=None,
                  help="model preset (default: cpu with --quick, else paper)")
  ap.add_argument("--batch", type=int, default=0, help="default: 64 with --quick, else 128")
  ap.add_argument("--cells", type=int, default=0,
                  help="time only this many sub-networks, spread over the MAC range, in the "
                       "per-cell benchmarks (0: all)")
  ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  ap.add_argument("--forms", default="",
                  help="conv forms to compare (default: masked, blocks:2, blocks:4 [, blocks:G])")
  ap.add_argument("--reference_form", default="masked",
                  help="the DNNet's conv form in the ResNet-32 reference")
  ARGS = ap.parse_args()
  # What `python -m dnn_jax.main` trains and evaluates with (DNN_JAX_XLA_DEFAULTS=0: without).
  xla_flags.apply_defaults()
  sections = ARGS.sections.split(",")
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    ap.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
  quick = ARGS.quick
  preset = ARGS.preset or ("cpu" if quick else "paper")
  cfg = model_config(preset)
  n = ARGS.batch or (64 if quick else 128)
  t_start = time.time()
  record = {"quick": quick, "preset": preset, "batch": n, "dtype": ARGS.dtype,
            "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
            "machine": platform.node(), "cpu_count": os.cpu_count(), "jax": jax.__version__,
            "software": runtimes.software(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": ("DNN_JAX_XLA_DEFAULTS=0 " if os.environ.get("DNN_JAX_XLA_DEFAULTS") == "0"
                        else "") + " ".join(sys.argv),
            "xla_flags": xla_flags.current(),
            "complete": False}
  forms = (ARGS.forms.split(",") if ARGS.forms else
           ["masked", "blocks:2", "blocks:4"] + ([] if quick else
                                                 [f"blocks:{cfg.model.num_groups}"]))
  benches = {
      "exit_overhead": lambda: bench_exit_overhead(cfg, n),
      "grid_eval": lambda: bench_grid_eval(cfg, n),
      "conv_forms": lambda: bench_conv_forms(cfg, n, forms),
      "latency_share": lambda: bench_latency_share(cfg, [1] if quick else [1, 128]),
      "hardware": lambda: bench_hardware(cfg, n),
      "input_pipeline": lambda: bench_input_wait(cfg, n, 10 if quick else 30),
      "resnet32_reference": lambda: bench_resnet_reference(16 if quick else n),
  }
  failed = []
  for name in sections:
    t = time.time()
    try:
      record[name] = benches[name]()
    except Exception as e:  # a benchmark runner reports a broken section and goes on
      traceback.print_exc()
      record[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
      failed.append(name)
    record[name]["section_seconds"] = round(time.time() - t, 1)
    record["train_step_compile_seconds"] = COMPILE_SECONDS
    for key, (sec, field) in SUMMARY.items():
      if sec == name and field in record[name]:
        record[key] = record[name][field]
    record["wall_seconds"] = round(time.time() - t_start, 1)
    write(record)
    print(f"{name} ({time.time() - t:.0f} s): {json.dumps(record[name])[:600]}", flush=True)
  record["complete"] = not failed
  write(record)
  print(json.dumps({k: record.get(k) for k in list(SUMMARY) + ["wall_seconds"]}))
  if failed:
    sys.exit(f"benchmark sections failed: {', '.join(failed)}")


if __name__ == "__main__":
  main()

"""The network's convolutions on XLA:CPU: how fast, under each conv path this jaxlib offers.

  python benchmarks/cpu_conv_paths.py --preset paper --batch 32 \
      --out benchmarks/results/cpu_conv_paths_paper_b32.json

XLA reads XLA_FLAGS once per process, so each path (a setting of XLA_FLAGS, `PATHS`) runs in
its own child process; with --rounds 2 the paths run twice, in reverse order the second time.
Each child times every distinct convolution of the preset's network as the library runs it
(`models.CausalConv`, masked form): forward and input gradient on the masked kernel, kernel
gradient through the mask and its barrier; medians after warm-up, each against a 2048^2
matmul timed in the same process (the image conv has no input gradient in training, so none
is timed). It also counts where XLA put the convolutions of those compiled programs (inside
YNNPACK, XNNPACK or oneDNN fusions, or oneDNN custom calls; the rest run in XLA's Eigen
runtime), so a path that XLA ignores shows as such. `per_train_step` adds the ops of every
conv layer: the convolutions' time in one train step and their FLOP rate against the matmul
(goal 5).
Rerun it after a jaxlib upgrade, before extending `CPU_DEFAULTS` in `dnn_jax/xla_flags.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

EIGEN = "--xla_cpu_experimental_ynn_fusion_type=individual_dot,eltwise,reduce"
PATHS = {  # name -> XLA_FLAGS (DNN_JAX_XLA_DEFAULTS=0 in every child: nothing is added)
    "ynnpack": "",  # JAX 0.10's default: YNNPACK takes convolutions.
    "eigen": EIGEN,  # dnn_jax's CPU default (xla_flags.py): XLA's Eigen runtime.
    "onednn": EIGEN + " --xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack_graph": ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=true "
                      "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"),
}
FUSION_KINDS = {"ynnpack": "__ynn_fusion", "xnnpack": "__xnn_fusion", "onednn": "__onednn_fusion"}


def convolution_placement(hlo_text: str) -> dict:
  """Convolutions of a compiled HLO module: all, and those inside each library's fusions."""
  bodies = {c.split(" ", 1)[0]: c for c in re.split(r"\n(?=\S)", hlo_text)}
  out = {"convolutions": hlo_text.count(" convolution(")}
  for lib, kind in FUSION_KINDS.items():
    called = set(re.findall(rf"calls=(%[\w.]+)[^\n]*{kind}", hlo_text))
    out[f"in_{lib}_fusions"] = sum(bodies[c].count(" convolution(") for c in called if c in bodies)
  out["onednn_custom_calls"] = hlo_text.count("__onednn$")
  return out


def child(args) -> dict:
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  sys.argv = [sys.argv[0]]  # run.py parses its own arguments; only its helpers are used.
  import run as bench
  from dnn_jax import models
  bench.ARGS = argparse.Namespace(dtype="float32", warmup=args.warmup, repeats=args.repeats,
                                  cells=0)
  model = models.create_model(bench.model_config(args.preset).model, 10)

  convs = {}  # (input shape, module fields) -> count in the network

  def record(next_fun, fargs, kwargs, context):
    mod = context.module
    if isinstance(mod, models.CausalConv) and context.method_name == "__call__":
      key = (tuple(fargs[0].shape[1:]), mod.features, mod.kernel_size, mod.strides,
             mod.num_groups, mod.grouped_input, mod.causal, mod.form)
      convs[key] = convs.get(key, 0) + 1
    return next_fun(*fargs, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))

  key = jax.random.key(0)
  matmul_gflops = bench.matmul_flop_rate()[1] / 1e9
  rows, placement = [], {}
  for (shape, features, k, strides, groups, grouped_input, causal, form), count in convs.items():
    conv = models.CausalConv(features, k, strides, groups, grouped_input, causal, form=form)
    x = jax.random.normal(key, (args.batch,) + shape)
    params = conv.init(key, x)
    y = conv.apply(params, x)
    dy = jax.random.normal(key, y.shape)
    # In a train step the masked kernel is computed once and read by the forward and
    # input-gradient convolutions: time those two on it. (On its own, a forward program fuses
    # the mask multiply into its convolution, and XLA:CPU hands that fusion to YNNPACK.)
    mask = models.group_mask(shape[-1], features, groups, grouped_input=grouped_input,
                             causal=causal)
    premasked = conv.clone(apply_mask=False)
    masked_params = {"params": {"kernel": params["params"]["kernel"] * mask}}
    fwd = jax.jit(premasked.apply)
    dx = jax.jit(lambda p, x, dy, m=premasked: jax.vjp(lambda x: m.apply(p, x), x)[1](dy)[0])
    dw = jax.jit(lambda p, x, dy, m=conv: jax.vjp(lambda p: m.apply(p, x), p)[1](dy)[0])
    programs = {"forward": (fwd, (masked_params, x)), "kernel_grad": (dw, (params, x, dy))}
    if grouped_input:  # Else the image conv: training needs no gradient of its input.
      programs["input_grad"] = (dx, (masked_params, x, dy))
    for fn, fargs in programs.values():
      for name, n in convolution_placement(fn.lower(*fargs).compile().as_text()).items():
        placement[name] = placement.get(name, 0) + n
    flops = 2 * args.batch * y.shape[1] * y.shape[2] * k * k * shape[-1] * features
    ms = {op: 1e3 * bench.timed(fn, *fargs) for op, (fn, fargs) in programs.items()}
    rows.append({"input": list(shape), "features": features, "kernel": k, "strides": strides,
                 "count": count, "gflop": round(flops / 1e9, 4),
                 **{f"{op}_ms": round(v, 3) for op, v in ms.items()},
                 **{f"{op}_fraction_of_matmul": round(flops / v / 1e6 / matmul_gflops, 3)
                    for op, v in ms.items()}})
  ops = lambda r: [op for op in ("forward", "input_grad", "kernel_grad") if f"{op}_ms" in r]
  step_ms = sum(r["count"] * sum(r[f"{op}_ms"] for op in ops(r)) for r in rows)
  step_gflop = sum(r["count"] * len(ops(r)) * r["gflop"] for r in rows)
  return {"xla_flags": os.environ.get("XLA_FLAGS", ""), "matmul_gflops": round(matmul_gflops, 1),
          "convolution_placement": placement, "convs": rows,
          "per_train_step": {"conv_ms": round(step_ms, 1), "conv_gflop": round(step_gflop, 2),
                             "fraction_of_matmul": round(
                                 step_gflop / step_ms * 1e3 / matmul_gflops, 3)}}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", choices=("cpu", "paper", "resnet32"), default="paper")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--paths", default=",".join(PATHS),
                  help="comma-separated subset of: " + ", ".join(PATHS))
  ap.add_argument("--rounds", type=int, default=1)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--repeats", type=int, default=15)
  ap.add_argument("--out", default="")
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    print(json.dumps(child(args)))
    return
  names = args.paths.split(",")
  unknown = sorted(set(names) - set(PATHS))
  if unknown:
    ap.error(f"--paths: unknown {unknown}; choose from {', '.join(PATHS)}")
  from dnn_jax import files, runtimes
  t0 = time.time()
  record = {"preset": args.preset, "batch": args.batch, "machine": platform.node(),
            "cpu_count": os.cpu_count(), "software": runtimes.software(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv), "paths": {n: {"xla_flags": PATHS[n], "rounds": []}
                                                     for n in names}}
  for r in range(args.rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      cmd = [sys.executable, os.path.abspath(__file__), "--child", "--preset", args.preset,
             "--batch", str(args.batch), "--warmup", str(args.warmup),
             "--repeats", str(args.repeats)]
      env = dict(os.environ, XLA_FLAGS=PATHS[name], DNN_JAX_XLA_DEFAULTS="0")
      proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
      if proc.returncode:
        last = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        sys.exit(f"path {name!r} (XLA_FLAGS={PATHS[name]!r}) failed: {last[0]}")
      result = json.loads(proc.stdout.strip().splitlines()[-1])
      record["paths"][name]["rounds"].append(result)
      step = result["per_train_step"]
      print(f"round {r + 1} {name}: convs {step['conv_ms']} ms per train step, "
            f"{step['fraction_of_matmul']} of the matmul's {result['matmul_gflops']} GFLOP/s; "
            f"convolutions {result['convolution_placement']}", flush=True)
  record["summary"] = {
      n: {"conv_ms_per_train_step": float(np.median(
              [x["per_train_step"]["conv_ms"] for x in p["rounds"]])),
          "fraction_of_matmul": float(np.median(
              [x["per_train_step"]["fraction_of_matmul"] for x in p["rounds"]]))}
      for n, p in record["paths"].items()}
  record["wall_seconds"] = round(time.time() - t0, 1)
  if args.out:
    files.write_json(args.out, record)
  print(json.dumps(record["summary"]))


if __name__ == "__main__":
  main()

"""The same train steps on several Python/JAX installations, and a PyTorch ResNet-32, in one run.

  python benchmarks/interpreters.py --python .venv/bin/python \
      --python ~/venv312/bin/python --batch 128 --rounds 2 \
      --out benchmarks/results/interpreters_b128.json

Each --python is an interpreter with dnn_jax installed (`pip install -e .`); --torch_python
one with torch (any Python; by default the first --python that imports it). In every round
each installation runs `benchmarks/run.py --preset cpu --sections resnet32_reference,hardware`
in a child process (the ResNet-32, the DNNet paper preset with all 352 exits and the dense
network of its channels, timed interleaved; then the reduced-scale DNNet of
configs/cifar10_cpu.py), once with the library's default XLA flags and, with --jax_defaults,
once more with DNN_JAX_XLA_DEFAULTS=0 (JAX's own defaults), then PyTorch's ResNet-32 step in
a child of the first interpreter that imports torch (skipped, with a printed line, where none
does; PyTorch is never a dependency of dnn_jax). The order of the children is reversed every
other round, so a load that comes and goes hits them alike. Per cell: the median over rounds
of each child's median step time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
STEPS = ("resnet32", "dnnet_paper", "dense_same_channels")


def software(python: str) -> dict:
  """runtimes.software() as another interpreter sees it, plus torch where installed (that
  interpreter need not have dnn_jax)."""
  from dnn_jax import runtimes
  code = ("import importlib.metadata as m, json, platform, sys\n"
          "v = {'python': platform.python_version()}\n"
          "for d in sys.argv[1:]:\n"
          "  try: v[d] = m.version(d)\n"
          "  except m.PackageNotFoundError: pass\n"
          "print(json.dumps(v))")
  proc = subprocess.run([python, "-c", code, *runtimes.STACK, "torch"], capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    sys.exit(f"--python {python}: cannot run it ({proc.stderr.strip()[-200:]})")
  return json.loads(proc.stdout)


def torch_resnet32_step_ms(batch: int, warmup: int, repeats: int) -> dict:
  """Median ms of one SGD step of a CIFAR ResNet-32 (He et al. 2016, 16/32/64 channels, five
  basic blocks per stage, zero-padded identity shortcuts) in PyTorch, float32, eager."""
  import torch
  from torch import nn
  import torch.nn.functional as F

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      y = F.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      s = x[:, :, ::self.stride, ::self.stride]
      if self.extra:  # Zeros for the new channels, split on both sides.
        s = F.pad(s, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return F.relu(y + s)

  class ResNet32(nn.Module):
    def __init__(self, classes=10):
      super().__init__()
      self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                                nn.ReLU())
      layers, cin = [], 16
      for i, cout in enumerate((16, 32, 64)):
        for b in range(5):
          layers.append(Block(cin, cout, 2 if (i and not b) else 1))
          cin = cout
      self.blocks = nn.Sequential(*layers)
      self.fc = nn.Linear(64, classes)

    def forward(self, x):
      return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))

  torch.manual_seed(0)
  model = ResNet32().train()
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()

  for _ in range(warmup):
    step()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
  return {"resnet32_train_step_ms": 1e3 * statistics.median(times),
          "threads": torch.get_num_threads()}


def run_child(cmd: list[str], env: dict, what: str) -> dict:
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if proc.returncode:
    last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    sys.exit(f"{what} failed: {last}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--python", action="append", default=[],
                  help="an interpreter with dnn_jax installed (repeat for each)")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--jax_defaults", action="store_true",
                  help="also time each installation with DNN_JAX_XLA_DEFAULTS=0")
  ap.add_argument("--torch_python", default="",
                  help="interpreter for the PyTorch reference (default: the first --python "
                       "that imports torch)")
  ap.add_argument("--no_torch", action="store_true", help="leave out the PyTorch reference")
  ap.add_argument("--out", default="")
  ap.add_argument("--torch_child", action="store_true", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.torch_child:
    print(json.dumps(torch_resnet32_step_ms(args.batch, args.warmup, args.repeats)))
    return
  if not args.python:
    ap.error("give at least one --python")
  if args.rounds < 1 or args.batch < 1:
    ap.error("--rounds and --batch must be positive")

  from dnn_jax import files
  installs = {py: software(py) for py in args.python}
  missing = [py for py, v in installs.items() if "jax" not in v]
  if missing:
    sys.exit(f"--python {missing[0]}: no JAX installed there (pip install -e . first)")
  torch_python = next((py for py, v in installs.items() if "torch" in v), None)
  if args.torch_python and not args.no_torch:
    installs[args.torch_python] = software(args.torch_python)
    if "torch" not in installs[args.torch_python]:
      sys.exit(f"--torch_python {args.torch_python}: torch is not installed there")
    torch_python = args.torch_python
  if args.no_torch:
    torch_python = None
  elif torch_python is None:
    print("PyTorch reference skipped: no --python interpreter imports torch", flush=True)

  cells = []  # (name, interpreter, extra environment; None: the PyTorch reference)
  for py in args.python:
    v = installs[py]
    label = f"Python {v['python']}, JAX {v['jax']} (jaxlib {v.get('jaxlib')})"
    variants = [("library defaults", {})]
    if args.jax_defaults:
      variants.append(("JAX's XLA defaults (DNN_JAX_XLA_DEFAULTS=0)",
                       {"DNN_JAX_XLA_DEFAULTS": "0"}))
    for variant, extra in variants:
      cells.append((f"{label}, {variant}", py, extra))
  if torch_python:
    cells.append((f"PyTorch {installs[torch_python]['torch']} CPU, ResNet-32", torch_python,
                  None))

  record = {"batch": args.batch, "rounds": args.rounds, "warmup": args.warmup,
            "repeats": args.repeats, "machine": platform.node(), "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv), "software": installs,
            "cells": {name: {"python": py, "env": extra, "rounds": []}
                      for name, py, extra in cells}}
  t0 = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(args.rounds):
      for name, py, extra in (cells if r % 2 == 0 else cells[::-1]):
        t = time.time()
        if extra is None:  # PyTorch
          result = run_child([py, os.path.abspath(__file__), "--torch_child",
                              "--batch", str(args.batch), "--warmup", str(args.warmup),
                              "--repeats", str(args.repeats)], dict(os.environ), name)
        else:
          out = os.path.join(tmp, "run.json")
          env = dict(os.environ, **extra)
          run_child([py, os.path.join(HERE, "run.py"), "--preset", "cpu",
                     "--sections", "resnet32_reference,hardware", "--batch", str(args.batch),
                     "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                     "--out", out], env, name)
          with open(out) as f:
            full = json.load(f)
          ref = full["resnet32_reference"]
          result = {f"{s}_train_step_ms": ref[f"{s}_train_step_ms"] for s in STEPS}
          result["dnnet_cpu_preset_train_step_ms"] = (
              1e3 * args.batch / full["hardware"]["train_images_per_s"])
          result["xla_flags"] = full["xla_flags"]
        record["cells"][name]["rounds"].append(result)
        print(f"round {r + 1}, {name} ({time.time() - t:.0f} s): "
              + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v!r}"
                          for k, v in result.items()), flush=True)
  summary = {}
  for name, cell in record["cells"].items():
    keys = [k for k in cell["rounds"][0] if k.endswith("_ms")]
    summary[name] = {k: round(statistics.median(r[k] for r in cell["rounds"]), 1)
                     for k in keys}
    summary[name]["xla_flags"] = cell["rounds"][0].get("xla_flags")
  record["summary"] = summary
  record["wall_seconds"] = round(time.time() - t0, 1)
  if args.out:
    files.write_json(args.out, record)
  print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()

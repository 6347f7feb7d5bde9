"""Where a train step's time goes, by kind of XLA op (from a JAX profiler trace).

  python benchmarks/profile_step.py --preset paper --batch 32 [--out FILE.json]

Runs the library's train step (all exits, joint loss, optimizer) a few times under
`jax.profiler.trace`, reads the Perfetto trace, and sums the time of every executed XLA op
into: kernel-gradient convolutions (the window spans the feature map), the other
convolutions (forward and input-gradient), transposes/copies, and everything else. Times are
per step, summed over ops; ops that overlap on the CPU's threads count fully, so the total
can exceed the step's wall time. Applies the command line's default XLA flags
only with --xla_defaults: the attribution is trustworthy where ops run synchronously, as
YNNPACK's do, and not with those flags (convolutions in XLA's Eigen runtime), where the
forward and input-gradient convolutions read a fraction of what the same convolutions take
timed alone and the rest lands in "everything else". CPU only: on other backends the trace's
op names do not match the HLO's, and the script says so.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dnn_jax import files, xla_flags  # noqa: E402


def op_kinds(hlo_text: str) -> dict[str, str]:
  """Executed op (thunk) name -> kind, from the optimized HLO text."""
  calls, bodies, kinds, current = {}, collections.defaultdict(list), {}, None
  for line in hlo_text.splitlines():
    if line.endswith("{") and (line.startswith("%") or line.startswith("ENTRY ")):
      current = line.removeprefix("ENTRY ").split()[0][1:]
      continue
    if line.startswith("}"):
      current = None
      continue
    if current:
      bodies[current].append(line)
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
    if m:
      call = re.search(r"calls=%([\w.\-]+)", line)
      calls[m.group(1)] = (m.group(2), line, call.group(1) if call else None)
  for name, (opcode, line, callee) in calls.items():
    text = line + "\n".join(bodies.get(callee, [])) if callee else line
    if "convolution(" in text:
      # A kernel gradient's window spans the feature map; a forward/input-gradient's is the
      # kernel (1x1 or 3x3).
      window = re.search(r"window=\{size=(\d+)x(\d+)", text)
      big = window and int(window.group(1)) > 3
      kinds[name] = "kernel-gradient convolutions" if big else "other convolutions"
    elif "transpose" in name or "copy" in name or opcode in ("transpose", "copy"):
      kinds[name] = "transposes and copies"
    else:
      kinds[name] = "everything else"
  return kinds


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", choices=("cpu", "paper", "resnet32"), default="paper")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--out", default="")
  ap.add_argument("--xla_defaults", action="store_true",
                  help="apply the command line's default XLA flags (attribution unreliable)")
  args = ap.parse_args()
  if args.xla_defaults:
    xla_flags.apply_defaults()
  import jax
  sys.argv = [sys.argv[0]]  # run.py parses its own arguments; only its helpers are used.
  import run as bench
  bench.ARGS = argparse.Namespace(dtype="float32", warmup=2, repeats=5, cells=0)
  cfg = bench.model_config(args.preset)
  if args.preset == "resnet32":
    cfg.model.blocks_per_stage = (5, 5, 5)
  step, state = bench.make_train_step(cfg, args.batch)
  images, labels = bench.batch(args.batch)
  run_once = lambda: jax.block_until_ready(step(state, images, labels)[1])
  for _ in range(3):
    run_once()
  t = time.perf_counter()
  for _ in range(args.steps):
    run_once()
  wall_ms = 1e3 * (time.perf_counter() - t) / args.steps
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(args.steps):
        run_once()
    path = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  kinds = op_kinds(step.as_text())
  per_kind = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in kinds:
      per_kind[kinds[e["name"]]] += e.get("dur", 0) / 1e3 / args.steps
  total = sum(per_kind.values())
  if not total:
    sys.exit("no executed op in the trace matched the compiled program's op names "
             f"(backend {jax.default_backend()}): this script reads CPU traces")
  record = {"preset": args.preset, "batch": args.batch, "steps": args.steps,
            "step_wall_ms_unprofiled": wall_ms, "ops_ms_per_step": dict(per_kind.most_common()),
            "ops_share": {k: v / total for k, v in per_kind.most_common()},
            "xla_flags": xla_flags.current(), "jax": jax.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["benchmarks/profile_step.py", f"--preset {args.preset}",
                                 f"--batch {args.batch}", f"--steps {args.steps}"]
                                + (["--xla_defaults"] if args.xla_defaults else []))}
  print(f"{args.preset}, batch {args.batch}: {wall_ms:.1f} ms per step (unprofiled); "
        f"XLA_FLAGS={record['xla_flags']!r}")
  for kind, ms in per_kind.most_common():
    print(f"  {kind:30s} {ms:8.1f} ms  {100 * ms / total:5.1f}%")
  if args.out:
    files.write_json(args.out, record)


if __name__ == "__main__":
  main()

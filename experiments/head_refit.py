"""Diagnostic: is the shared cumulative head what holds a DNNet's narrow slices back?

Freezes a trained DNNet's trunk and refits, for every width c at full depth, a classifier of
its own on the pooled features of groups 1..c (baselines.fine_tune_accuracy: 30 epochs of SGD
on the training split); compares it with the shared head's accuracy on the eval split.

  python experiments/head_refit.py WORKDIR OUT_PREFIX   # -> OUT_PREFIX.{json,md}
"""

import os
import platform
import sys
import time

import jax
import numpy as np

from dnn_jax import baselines
from dnn_jax import checkpointing
from dnn_jax import evaluate
from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import workdir as layout
from dnn_jax.metric_writers import log


def main(workdir: str, out: str, epochs: int = 30) -> dict:
  t0 = time.time()
  saved = checkpointing.load_saved(workdir)
  # Decoded images are cached next to the output, not in the (possibly shipped) workdir.
  dataset = input_pipeline.load_dataset(saved.config.data, os.path.dirname(out) or ".")
  setup, variables, step, _, _ = evaluate.load_checkpoint(saved.config, workdir,
                                                          dataset.train.images.shape[-1])
  shared = np.array(layout.read_eval_grid(workdir)["accuracy"])[-1]
  refit = baselines.fine_tune_accuracy(setup.model, jax.device_get(variables), dataset.train,
                                       dataset.eval, saved.config.eval.batch_size,
                                       setup.batch_sharding, epochs=epochs, progress=log)
  record = {"workdir": workdir, "checkpoint_step": step, "split": dataset.eval_split,
            "num_examples": len(dataset.eval), "refit_epochs": epochs,
            "shared_head_full_depth": shared.round(4).tolist(),
            "refit_head_full_depth": np.round(refit, 4).tolist(),
            "command": f"python experiments/head_refit.py {workdir} {out}",
            "wall_seconds": round(time.time() - t0, 1), "jax": jax.__version__,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.default_backend()}"}
  files.write_json(out + ".json", record)
  widths = len(shared)
  lines = [f"# Shared head vs a refitted head per width (full depth, {record['split']}, "
           f"{record['num_examples']} images)", "",
           "| head | " + " | ".join(str(w + 1) for w in range(widths)) + " |",
           "|---" * (widths + 1) + "|",
           "| shared cumulative head (trained) | "
           + " | ".join(f"{100 * a:.1f}" for a in shared) + " |",
           f"| refitted per width, trunk frozen ({epochs} epochs) | "
           + " | ".join(f"{100 * a:.1f}" for a in refit) + " |", "",
           f"Command: `{record['command']}`; {record['wall_seconds']:.0f} s; JAX "
           f"{record['jax']}; {record['machine']}."]
  files.write_atomic(out + ".md", "\n".join(lines) + "\n")
  print("\n".join(lines))
  return record


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: head_refit.py WORKDIR OUT_PREFIX")
  main(sys.argv[1], sys.argv[2])

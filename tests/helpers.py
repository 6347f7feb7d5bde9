"""Helpers shared by the tests (and experiments/fault_table.py, which replays their faults)."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dnn_jax import config_base


def names(path):
  return [getattr(p, "key", str(p)) for p in path]


def model_config(num_groups=3, cpg=(2, 2, 4), blocks=(1, 2, 1), **overrides):
  """A small model config: 3 groups, 3 stages, 5 exits."""
  c = config_base.base_config().model
  c.num_groups, c.channels_per_group, c.blocks_per_stage = num_groups, cpg, blocks
  c.update(overrides)
  return c


def random_variables(model, image_shape, seed=0):
  """Init, then make every parameter and BN statistic non-trivial (heads start at zero)."""
  variables = model.init(jax.random.key(seed), jnp.zeros((1,) + image_shape))
  leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    noise = jax.random.normal(k, x.shape)
    out.append(jnp.abs(x + noise) + 0.5 if names(path)[-1] == "var" else x + 0.3 * noise)
  return jax.tree_util.tree_unflatten(tree, out)


def images(shape, seed=3):
  return jax.random.uniform(jax.random.key(seed), shape, minval=0, maxval=255)


def truncate_data_files(step_dir):
  """Truncates every data file of a checkpoint step."""
  for root, _, files in os.walk(step_dir):
    for name in files:
      if "metadata" not in name and not name.startswith("_"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(os.path.getsize(os.path.join(root, name)) // 3, 1))


def rewrite_with_other_values(step_dir):
  """Rewrites a checkpoint's state with one parameter changed, as valid Orbax files: what
  bytes changed on disk can look like when every file still reads."""
  import orbax.checkpoint as ocp
  path = os.path.join(step_dir, "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    tree = checkpointer.restore(path)
    kernel = tree["params"]["stem"]["kernel"]
    tree["params"]["stem"]["kernel"] = np.asarray(kernel) + 0.5
    shutil.rmtree(path)
    checkpointer.save(path, tree)

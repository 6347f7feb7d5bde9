"""Helpers shared by the model and sub-network tests."""

import jax
import jax.numpy as jnp

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

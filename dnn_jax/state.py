"""The train state, its initialisation, the device mesh and shardings, and the eval step:
what training, evaluation and export share about a model on devices."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.train_state import TrainState as FlaxTrainState
from jax.sharding import NamedSharding, PartitionSpec as P

from dnn_jax import checkpointing
from dnn_jax import input_pipeline
from dnn_jax import models
from dnn_jax.errors import DataError

# Random stream of parameter initialisation, derived from config.seed (train.py holds the
# others).
INIT_STREAM = 1


class TrainState(FlaxTrainState):
  batch_stats: Any


class AdaptiveTrainState(TrainState):
  """The train state under adaptive loss weighting (loss.adaptive_weight > 0): also the
  running mean of every exit's cross-entropy, depths x widths. A subclass, so that other
  runs' checkpoints keep the structure they always had."""
  loss_ema: Any = None


def init_state(model: models.DNNet, tx, key: jax.Array, image_shape,
               track_exit_losses: bool = False) -> TrainState:
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.uint8), train=False)
  fields = dict(apply_fn=model.apply, params=variables["params"], tx=tx,
                batch_stats=variables["batch_stats"])
  if track_exit_losses:
    return AdaptiveTrainState.create(
        **fields, loss_ema=jnp.ones((model.num_exits, model.num_groups), jnp.float32))
  return TrainState.create(**fields)


def variables(state: TrainState) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def params_sha256(params) -> str:
  """sha256 over every parameter's path, dtype, shape and bytes, in sorted path order."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    leaf = np.ascontiguousarray(leaf)
    h.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
    h.update(leaf.tobytes())
  return h.hexdigest()


def eval_step(model: models.DNNet, variables, images_BxHxWxC: jax.Array, labels_B: jax.Array,
              mask_B: jax.Array) -> jax.Array:
  """Correct-prediction counts of every exit, padding masked out: int32 depths x widths."""
  logits = model.apply(variables, images_BxHxWxC, train=False)
  correct_BxLxG = (jnp.argmax(logits, -1) == labels_B[:, None, None]) & mask_B[:, None, None]
  return correct_BxLxG.sum(axis=0, dtype=jnp.int32)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Model, device mesh and shardings (and the compiled eval step) for one config."""
  model: models.DNNet
  mesh: Any
  replicated: NamedSharding
  batch_sharding: NamedSharding
  eval_step: Any

  def accuracy_grid(self, variables, split: input_pipeline.Split, batch_size: int
                    ) -> np.ndarray:
    """Accuracy of every (depth, width) exit over all of `split`: one forward pass a batch."""
    counts = [self.eval_step(variables, *batch)
              for batch in input_pipeline.eval_batches(split, batch_size, self.batch_sharding)]
    return np.sum(jax.device_get(counts), axis=0) / len(split)


def make_mesh():
  """One data-parallel axis over every device (of every process). Auto axes: XLA propagates
  the batch sharding through the step (GSPMD)."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def make_setup(config, num_classes: int, channels: int) -> Setup:
  mean, std = tuple(config.data.mean), tuple(config.data.std)
  if len(mean) not in (1, channels):
    raise DataError(f"config.data.mean has {len(mean)} values but the images have "
                    f"{channels} channel(s)")
  model = models.create_model(config.model, num_classes, input_mean=mean, input_std=std)
  mesh = make_mesh()
  replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  step = jax.jit(functools.partial(eval_step, model),
                 in_shardings=(replicated, batch, batch, batch), out_shardings=replicated)
  return Setup(model, mesh, replicated, batch, step)


def init_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(seed), INIT_STREAM)


def abstract_state(setup: Setup, tx, image_shape, seed: int, track_exit_losses: bool = False):
  """(init fn, its key, shapes/dtypes/shardings of the train state): init and restore target."""
  init_fn = jax.jit(functools.partial(init_state, setup.model, tx, image_shape=image_shape,
                                      track_exit_losses=track_exit_losses),
                    out_shardings=setup.replicated)
  key = init_key(seed)
  return init_fn, key, checkpointing.abstract_like(jax.eval_shape(init_fn, key),
                                                   setup.replicated)


def abstract_variables(setup: Setup, num_channels: int) -> dict:
  """Restore target of a model's variables (params and batch stats), no optimizer state.
  Parameter shapes do not depend on the image size: any spatial size serves."""
  x = jnp.zeros((1, 8, 8, num_channels), jnp.uint8)
  shapes = jax.eval_shape(functools.partial(setup.model.init, train=False), init_key(0), x)
  return checkpointing.abstract_like(
      {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}, setup.replicated)

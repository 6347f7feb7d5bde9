"""Learning-rate schedules and optimizers, chosen by name from the train config."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(train_config, steps_per_epoch: int, total_steps: int):
  t = train_config
  warmup = min(int(round(t.warmup_epochs * steps_per_epoch)), total_steps)
  lr = t.learning_rate
  if t.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  if t.schedule == "step":
    main = optax.piecewise_constant_schedule(
        lr, {int(0.5 * total_steps) - warmup: 0.1, int(0.75 * total_steps) - warmup: 0.1})
  else:
    main = optax.constant_schedule(lr)
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _decay_mask(params):
  """Weight decay on conv and head kernels only, not on BN scales or biases."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def _sgd(t, schedule):
  # L2 weight decay added to the gradient, as in the standard CIFAR ResNet recipe.
  return optax.chain(
      optax.add_decayed_weights(t.weight_decay, mask=_decay_mask),
      optax.sgd(schedule, momentum=t.momentum or None,
                nesterov=t.nesterov and t.momentum > 0))


def _adamw(t, schedule):  # Decoupled weight decay (scaled by the learning rate).
  return optax.adamw(schedule, b1=t.momentum, weight_decay=t.weight_decay, mask=_decay_mask)


def _lamb(t, schedule):  # Adam steps rescaled per layer to the weights' norm (You et al.).
  return optax.lamb(schedule, b1=t.momentum, weight_decay=t.weight_decay, mask=_decay_mask)


# train.optimizer -> the optax transformation of (train config, schedule).
OPTIMIZERS = {"sgd": _sgd, "adamw": _adamw, "lamb": _lamb}


def create_optimizer(train_config, schedule) -> optax.GradientTransformation:
  return OPTIMIZERS[train_config.optimizer](train_config, schedule)

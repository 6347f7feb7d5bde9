"""The joint loss over every exit (paper eq. 2), its weightings, and the rescaling of the
gradients of shared parameters (gradient equilibrium).

Exit (d, c) is the width-c sub-network at depth d; `lam_LxG` weighs its cross-entropy.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnn_jax import models


def _uniform(cfg, depths, widths):
  return np.ones((depths, widths))


def _linear(cfg, depths, widths):  # Toward deeper and wider exits.
  return np.outer(np.arange(1, depths + 1), np.arange(1, widths + 1)) / (depths * widths)


def _anchored(cfg, depths, widths):  # Uniform, and the full exit carries half of the total.
  lam = np.ones((depths, widths))
  lam[-1, -1] = depths * widths - 1
  return lam


def _final(cfg, depths, widths):  # Plain training of the full exit.
  lam = np.zeros((depths, widths))
  lam[-1, -1] = 1.0
  return lam


def _full_width(cfg, depths, widths):  # The depth-only anytime network.
  lam = np.zeros((depths, widths))
  lam[:, -1] = 1.0
  return lam


def _full_depth(cfg, depths, widths):  # Width-only.
  lam = np.zeros((depths, widths))
  lam[-1, :] = 1.0
  return lam


def _sandwich(cfg, depths, widths):
  """Every depth the same total; within it the narrowest and the widest exit a quarter each
  and the other widths the remaining half (the sandwich rule of US-Nets, per depth)."""
  if widths <= 2:
    return np.ones((depths, widths))
  row = np.full(widths, 0.5 / (widths - 2))
  row[0] = row[-1] = 0.25
  return np.tile(row, (depths, 1))


def _explicit(cfg, depths, widths):
  return np.asarray(cfg.lambda_grid, np.float64)


def _anchored_row(cfg, depths, widths):
  """The full exit half of the total, the other full-depth exits a quarter together and the
  exits at shallower depths a quarter together (shares 2 : 1 : 1, each spread evenly; a part
  with no exits drops out). At 7 x 8 exits each narrower full-depth exit gets 1/28 of the
  total (1/110 under `anchored`) and each shallower exit 1/192."""
  lam = np.zeros((depths, widths))
  lam[-1, -1] = 2.0
  if widths > 1:
    lam[-1, :-1] = 1.0 / (widths - 1)
  if depths > 1:
    lam[:-1] = 1.0 / ((depths - 1) * widths)
  return lam


def _rows(depths, widths, shallow_share):
  """The full-depth exits 1 - shallow_share of the total, the exits at shallower depths
  shallow_share, each part spread evenly (with one depth the row takes it all)."""
  lam = np.zeros((depths, widths))
  if depths == 1:
    lam[-1] = 1.0 / widths
    return lam
  lam[-1] = (1.0 - shallow_share) / widths
  lam[:-1] = shallow_share / ((depths - 1) * widths)
  return lam


def _row_half(cfg, depths, widths):
  """The full-depth exits half of the total and the exits at shallower depths the other half,
  each half spread evenly."""
  return _rows(depths, widths, 0.5)


def _row_share(cfg, depths, widths):
  """As row_half with the shallower exits' share `loss.shallow_share`. With untied heads and
  head_gradient=mean every head still learns at its exit's full weight, so the share sets only
  how much the trunk is shaped for the shallower exits (0: width-only trunk, probes for heads)."""
  return _rows(depths, widths, cfg.shallow_share)


# loss.lambda_scheme -> lambda(d, c) as a function of (loss config, depths, widths).
LAMBDA_SCHEMES: dict[str, Callable] = {
    "uniform": _uniform, "linear": _linear, "anchored": _anchored, "final": _final,
    "full_width": _full_width, "full_depth": _full_depth, "sandwich": _sandwich,
    "anchored_row": _anchored_row, "row_half": _row_half, "row_share": _row_share,
    "explicit": _explicit,
}
# loss.distill_teacher: whose detached prediction each exit learns (see joint_loss).
DISTILL_TEACHERS = ("full_exit", "widest_at_depth", "next_wider")
GRADIENT_MODES = ("sum", "mean")


def lambda_grid(loss_config, depths: int, widths: int) -> np.ndarray:
  """lambda(d, c) of the joint loss as a float32 depths x widths array."""
  scheme = loss_config.lambda_scheme
  if scheme not in LAMBDA_SCHEMES:
    raise ValueError(f"unknown lambda scheme {scheme!r}")
  return np.asarray(LAMBDA_SCHEMES[scheme](loss_config, depths, widths), np.float32)


def adaptive_lambda(lam_LxG: jax.Array, loss_ema_LxG: jax.Array, mix: float) -> jax.Array:
  """lambda(d, c) times (1 - mix) + mix * mean(ema) / ema(d, c): the static weights, each
  scaled by a mix of 1 and its exit's inverse running-mean loss (adaptive loss balancing,
  Hu et al., AAAI 2019, which keeps every exit's loss at a comparable scale). Held fixed
  (no gradient)."""
  ema = jax.lax.stop_gradient(loss_ema_LxG)
  return lam_LxG * ((1.0 - mix) + mix * jnp.mean(ema) / ema)


def _teacher_logits(logits_BxLxGxK: jax.Array, teacher: str) -> tuple[jax.Array, np.ndarray]:
  """(teacher logits broadcast to every exit, bool L x G grid of the exits that learn from a
  teacher); the teachers themselves learn from the labels."""
  _, depths, widths, _ = logits_BxLxGxK.shape
  students = np.ones((depths, widths), bool)
  if teacher == "full_exit":
    students[-1, -1] = False
    return logits_BxLxGxK[:, -1:, -1:], students
  students[:, -1] = False
  if teacher == "widest_at_depth":
    return logits_BxLxGxK[:, :, -1:], students
  if teacher == "next_wider":
    return jnp.concatenate([logits_BxLxGxK[:, :, 1:], logits_BxLxGxK[:, :, -1:]], axis=2), \
        students
  raise ValueError(f"unknown distillation teacher {teacher!r}")


def boosted_logits(logits_BxLxGxK: jax.Array) -> jax.Array:
  """Each width's logits with the narrower widths' part held fixed: P_c + stop_gradient(Z_{c-1})
  for Z_c = Z_{c-1} + P_c (head_reduction=sum). Same values; exit c trains only group c's head
  and what feeds it (BoostNet's rule along the width)."""
  prev = jnp.pad(logits_BxLxGxK[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))
  return logits_BxLxGxK - prev + jax.lax.stop_gradient(prev)


def joint_loss(logits_BxLxGxK: jax.Array, labels_B: jax.Array, lam_LxG: jax.Array,
               label_smoothing: float = 0.0, distill_weight: float = 0.0,
               distill_temperature: float = 1.0, distill_teacher: str = "full_exit",
               boosted: bool = False) -> tuple[jax.Array, jax.Array]:
  """Paper eq. 2: sum(lambda * L) / sum(lambda); also returns the cross-entropy grid.

  With `distill_weight` a > 0, every student exit learns from
  (1 - a) * CE + a * T^2 * KL(teacher || exit) at temperature T, the teacher's prediction
  held fixed (in-place distillation). Teachers (`distill_teacher`): the full exit (students:
  every other exit); the widest exit of the same depth, or the next wider exit of the same
  depth (students: every exit but the widest of each depth). a = 1 with `widest_at_depth` is
  US-Nets' form: the label is replaced by the teacher's prediction.
  """
  k = logits_BxLxGxK.shape[-1]
  logits = logits_BxLxGxK.astype(jnp.float32)
  if boosted:
    logits = boosted_logits(logits)
  targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, k), label_smoothing)
  ce_LxG = optax.softmax_cross_entropy(logits, targets_BxK[:, None, None, :]).mean(axis=0)
  per_exit_LxG = ce_LxG
  if distill_weight > 0:
    t = distill_temperature
    teacher, students_LxG = _teacher_logits(logits, distill_teacher)
    teacher_p = jax.lax.stop_gradient(jax.nn.softmax(teacher / t))
    kl_LxG = (t * t) * optax.kl_divergence(jax.nn.log_softmax(logits / t),
                                           teacher_p).mean(axis=0)
    per_exit_LxG = jnp.where(students_LxG,
                             (1 - distill_weight) * ce_LxG + distill_weight * kl_LxG, ce_LxG)
  return jnp.sum(lam_LxG * per_exit_LxG) / jnp.sum(lam_LxG), ce_LxG


def head_gradient_scale(lam_LxG: np.ndarray) -> np.ndarray:
  """Per (depth, group) factor that turns a head group's gradient into the lambda-weighted
  *mean* over the exits that read it, instead of a 1 / sum(lambda)-scaled sum.

  Head group k of depth d feeds exits (d, c >= k) only, so under the joint loss its gradient
  is smaller by sum(lambda) / sum_{c >= k} lambda(d, c) (up to 56x for 7 x 8 exits) than the
  backbone's: heads learn far slower than in a plain network unless rescaled.
  """
  consumers_LxG = np.cumsum(lam_LxG[:, ::-1], axis=1)[:, ::-1]
  return _ratio(lam_LxG.sum(), consumers_LxG)


def untied_head_gradient_scale(lam_LxG: np.ndarray) -> np.ndarray:
  """Per (depth, width) factor of an untied head (model.exit_head='untied'): width c's map
  at depth d feeds exit (d, c) alone, so its mean gradient is that exit's loss gradient at
  full weight, sum(lambda) / lambda(d, c) times its share of the joint loss."""
  return _ratio(lam_LxG.sum(), lam_LxG)


def trunk_gradient_scale(lam_LxG: np.ndarray) -> np.ndarray:
  """Per (first exit e, output group j) factor that turns the gradient of a trunk parameter
  into the lambda-weighted mean over the exits that read it.

  In a channel-causal network, output group j of the stem (e = 1) or of block e - 1 is read
  by exits (d >= e, c >= j) and by no other, so the joint loss gives it
  sum_{d >= e, c >= j} lambda(d, c) / sum(lambda) of a full share: under uniform lambda the
  last group of the stem gets 1/8 of the first group's gradient (8 groups). Gradient
  equilibrium (Li et al., ICCV 2019) along both axes multiplies by the inverse.
  """
  consumers_LxG = np.cumsum(np.cumsum(lam_LxG[::-1, ::-1], axis=0), axis=1)[::-1, ::-1]
  return _ratio(lam_LxG.sum(), consumers_LxG)


def _ratio(total: float, consumers: np.ndarray) -> np.ndarray:
  with np.errstate(divide="ignore"):
    return np.where(consumers > 0, total / consumers, 0.0).astype(np.float32)


def _names(path) -> tuple[str, ...]:
  return tuple(getattr(p, "key", str(p)) for p in path)


def gradient_factors(params, lam_LxG: np.ndarray, head: str = "sum", trunk: str = "sum"
                     ) -> dict[tuple[str, ...], np.ndarray]:
  """{parameter path: factor broadcasting against it} for the parameters whose gradient is
  rescaled to a mean (`head` / `trunk` = "mean"); parameters not listed keep their gradient.
  Untied heads are recognised by their kernel (G x G x D x K)."""
  num_groups = lam_LxG.shape[1]
  head_scale = head_gradient_scale(lam_LxG) if head == "mean" else None
  untied_scale = untied_head_gradient_scale(lam_LxG) if head == "mean" else None
  trunk_scale = trunk_gradient_scale(lam_LxG) if trunk == "mean" else None
  factors = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _names(path)
    top = names[0]
    row = None
    if models.is_exit(top):
      scale = untied_scale if models.is_untied_head(params[top]) else head_scale
      row = None if scale is None else scale[models.first_exit(top) - 1]
    elif trunk_scale is not None:
      row = trunk_scale[models.first_exit(top) - 1]
    if row is not None:
      factors[names] = row[models.output_groups(names, np.shape(leaf), num_groups)]
  return factors


def scale_by_factors(factors: dict[tuple[str, ...], np.ndarray]
                     ) -> optax.GradientTransformation:
  """A stateless optax transformation multiplying each listed parameter's update by its
  factor (`gradient_factors`); the others pass unchanged."""

  def update(updates, state, params=None):
    del params
    scaled = jax.tree_util.tree_map_with_path(
        lambda p, g: g * factors[_names(p)] if _names(p) in factors else g, updates)
    return scaled, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def group_gradient_norms(grads, num_groups: int) -> dict[str, jax.Array]:
  """L2 norm of the gradient per width group, over the trunk and over the heads of every
  depth: {"trunk": G, "head": G}."""
  sq = {"trunk": jnp.zeros(num_groups), "head": jnp.zeros(num_groups)}
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    names = _names(path)
    groups = np.broadcast_to(models.output_groups(names, g.shape, num_groups), g.shape)
    kind = "head" if models.is_exit(names[0]) else "trunk"
    sq[kind] = sq[kind] + jax.ops.segment_sum(jnp.square(g.astype(jnp.float32)).ravel(),
                                              groups.ravel(), num_segments=num_groups)
  return {k: jnp.sqrt(v) for k, v in sq.items()}

"""The joint loss, its weightings and the gradient rescaling, against references."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dnn_jax import config_validation
from dnn_jax import losses
from dnn_jax import models
from dnn_jax import optimizer
from dnn_jax.errors import ConfigError


def _lam(scheme, depths=3, widths=4, grid=(), shallow_share=0.5):
  cfg = ml_collections.ConfigDict({"lambda_scheme": scheme, "lambda_grid": grid,
                                   "shallow_share": shallow_share})
  return losses.lambda_grid(cfg, depths, widths)


def test_lambda_schemes():
  np.testing.assert_array_equal(_lam("uniform"), np.ones((3, 4)))
  lam = _lam("linear")
  np.testing.assert_allclose(lam, np.outer([1, 2, 3], [1, 2, 3, 4]) / 12)
  lam = _lam("anchored")
  assert lam[-1, -1] == lam.sum() / 2 and (lam == 1).sum() == 11
  final = np.zeros((3, 4))
  final[-1, -1] = 1
  np.testing.assert_array_equal(_lam("final"), final)
  full_width = np.zeros((3, 4))
  full_width[:, -1] = 1
  np.testing.assert_array_equal(_lam("full_width"), full_width)
  full_depth = np.zeros((3, 4))
  full_depth[-1, :] = 1
  np.testing.assert_array_equal(_lam("full_depth"), full_depth)
  np.testing.assert_array_equal(_lam("sandwich"), [[0.25, 0.25, 0.25, 0.25]] * 3)
  np.testing.assert_allclose(_lam("sandwich", 2, 6), [[0.25, 0.125, 0.125, 0.125, 0.125, 0.25]] * 2)
  np.testing.assert_array_equal(_lam("sandwich", 2, 2), np.ones((2, 2)))
  lam = _lam("anchored_row")  # Shares 2 : 1 : 1 of full exit, rest of the row, shallower.
  np.testing.assert_allclose(lam / lam.sum(), [[1 / 32] * 4] * 2 + [[1 / 12] * 3 + [1 / 2]],
                             rtol=1e-6)
  np.testing.assert_allclose(_lam("anchored_row", 1, 3), [[0.5, 0.5, 2]])  # No shallower exits.
  np.testing.assert_allclose(_lam("anchored_row", 2, 1), [[1], [2]])  # No narrower exits.
  lam = _lam("row_half")
  np.testing.assert_allclose(lam / lam.sum(), [[1 / 16] * 4] * 2 + [[1 / 8] * 4], rtol=1e-6)
  np.testing.assert_allclose(_lam("row_half", 1, 2), [[0.5, 0.5]])
  np.testing.assert_array_equal(_lam("row_share"), _lam("row_half"))
  lam = _lam("row_share", shallow_share=0.2)
  np.testing.assert_allclose(lam / lam.sum(), [[0.025] * 4] * 2 + [[0.2] * 4], rtol=1e-6)
  np.testing.assert_allclose(_lam("row_share", shallow_share=0.0), _lam("full_depth") / 4)
  np.testing.assert_array_equal(_lam("explicit", 3, 2, ((0, 1), (2, 3), (4, 5))),
                                np.arange(6).reshape(3, 2))
  assert all(_lam(s).dtype == np.float32 for s in losses.LAMBDA_SCHEMES if s != "explicit")


def test_validation_reads_the_scheme_table(tiny_config):
  tiny_config.loss.lambda_scheme = "sandwich"
  config_validation.validate(tiny_config, check_paths=False)
  tiny_config.loss.lambda_scheme = "nope"
  with pytest.raises(ConfigError,
                     match="loss.lambda_scheme: 'nope' is not one of uniform, .*sandwich"):
    config_validation.validate(tiny_config, check_paths=False)


def test_head_gradient_scale_turns_sums_into_means():
  np.testing.assert_allclose(losses.head_gradient_scale(np.ones((2, 3), np.float32)),
                             [[2, 3, 6], [2, 3, 6]])
  final = np.zeros((2, 3), np.float32)
  final[-1, -1] = 1.0  # A plain network's loss: its one head is left as it is.
  np.testing.assert_allclose(losses.head_gradient_scale(final), [[0, 0, 0], [1, 1, 1]])


def test_trunk_gradient_scale_counts_the_exits_below_and_right():
  lam = np.ones((2, 3), np.float32)  # Stem (e = 1): 6, 4, 2 readers; block_1 (e = 2): 3, 2, 1.
  np.testing.assert_allclose(losses.trunk_gradient_scale(lam), [[1, 1.5, 3], [2, 3, 6]])
  final = np.zeros((2, 3), np.float32)
  final[-1, -1] = 1.0
  np.testing.assert_allclose(losses.trunk_gradient_scale(final), [[1, 1, 1], [1, 1, 1]])


def _exit_readers(model_config, num_classes=5):
  """{(parameter path, group): exits whose logits autodiff finds depend on that group}."""
  model = models.create_model(model_config, num_classes)
  x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1), minval=0, maxval=255)
  variables = model.init(jax.random.key(0), x)
  weights = jax.random.normal(jax.random.key(2), (4, num_classes))
  depths, widths = models.grid_shape(model_config)
  readers = {}
  for d in range(depths):
    for c in range(widths):
      def logit(params):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
        return jnp.sum(out[:, d, c] * weights)
      grads = jax.grad(logit)(variables["params"])
      for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        names = tuple(p.key for p in path)
        groups = np.broadcast_to(models.output_groups(names, g.shape, widths), g.shape)
        for j in range(widths):
          readers.setdefault((names, j), set())
          if np.any(np.asarray(g)[groups == j] != 0):
            readers[(names, j)].add((d, c))
  return variables["params"], readers


@pytest.mark.core
@pytest.mark.parametrize("shortcut,exit_head", [("projection", "shared"), ("pad", "shared"),
                                                ("projection", "untied")])
def test_gradient_factors_are_means_over_the_exits_autodiff_finds(shortcut, exit_head):
  cfg = ml_collections.ConfigDict({
      "num_groups": 3, "channels_per_group": (2, 4), "stage_channels": (),
      "blocks_per_stage": (1, 1), "causal": True, "shortcut": shortcut,
      "head_reduction": "sum", "exit_head": exit_head, "zero_init_residual": False,
      "bn_momentum": 0.9,
      "dtype": "float32", "conv_form": "masked"})
  params, readers = _exit_readers(cfg)
  lam = np.random.default_rng(0).uniform(0.2, 2.0, (3, 3)).astype(np.float32)
  factors = losses.gradient_factors(params, lam, head="mean", trunk="mean")
  assert len(factors) == len(jax.tree_util.tree_leaves(params))
  for (names, j), exits in readers.items():
    assert exits, (names, j)  # Every group of every parameter reaches some exit.
    leaf = params
    for n in names:
      leaf = leaf[n]
    groups = np.broadcast_to(models.output_groups(names, leaf.shape, 3), leaf.shape)
    got = np.broadcast_to(factors[names], leaf.shape)[groups == j]
    expected = lam.sum() / sum(lam[d, c] for d, c in exits)
    np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{names} group {j + 1}")
  assert losses.gradient_factors(params, lam) == {}  # sum / sum: nothing is rescaled.


def test_scale_by_factors_multiplies_only_the_listed_leaves():
  grads = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"bias": jnp.full((3,), 2.0)}}
  tx = losses.scale_by_factors({("a", "kernel"): np.array([1.0, 2.0, 3.0])})
  out, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_array_equal(out["a"]["kernel"], [[1, 2, 3], [1, 2, 3]])
  np.testing.assert_array_equal(out["b"]["bias"], [2, 2, 2])


def test_group_gradient_norms_match_numpy():
  rng = np.random.default_rng(0)
  grads = {"stem": {"kernel": rng.normal(size=(3, 3, 1, 4))},
           "block_1": {"bn1": {"scale": rng.normal(size=(8,))}},
           "exit_1": {"kernel": rng.normal(size=(2, 2, 5)), "bias": rng.normal(size=(2, 5))}}
  norms = losses.group_gradient_norms(jax.tree_util.tree_map(jnp.asarray, grads), 2)
  trunk = [np.sum(grads["stem"]["kernel"][..., 2 * j:2 * j + 2] ** 2)
           + np.sum(grads["block_1"]["bn1"]["scale"][4 * j:4 * j + 4] ** 2) for j in (0, 1)]
  head = [np.sum(grads["exit_1"]["kernel"][j] ** 2) + np.sum(grads["exit_1"]["bias"][j] ** 2)
          for j in (0, 1)]
  np.testing.assert_allclose(norms["trunk"], np.sqrt(trunk), rtol=1e-5)
  np.testing.assert_allclose(norms["head"], np.sqrt(head), rtol=1e-5)


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(logits, labels):
  return -np.take_along_axis(_log_softmax(logits), labels[:, None, None, None], -1)[..., 0].mean(0)


@pytest.mark.core
def test_joint_loss_is_the_lambda_weighted_mean_of_exit_losses():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 2, 5)).astype(np.float32)
  labels = np.array([0, 1, 4, 2])
  lam = np.array([[0, 1], [2, 3], [4, 5]], np.float32)
  loss, ce = losses.joint_loss(logits, labels, lam)
  np.testing.assert_allclose(ce, _ce(logits, labels), rtol=1e-5)
  np.testing.assert_allclose(loss, (lam * _ce(logits, labels)).sum() / lam.sum(), rtol=1e-5)


@pytest.mark.parametrize("teacher", losses.DISTILL_TEACHERS)
def test_distillation_matches_a_numpy_reference(teacher):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 2, 3, 5)).astype(np.float32)
  labels = np.array([0, 1, 4, 2])
  lam = rng.uniform(0.5, 1.0, size=(2, 3)).astype(np.float32)
  a, t = 0.3, 2.0
  loss, ce = losses.joint_loss(logits, labels, lam, distill_weight=a, distill_temperature=t,
                               distill_teacher=teacher)
  students = np.ones((2, 3), bool)
  if teacher == "full_exit":
    source = np.broadcast_to(logits[:, -1:, -1:], logits.shape)
    students[-1, -1] = False
  elif teacher == "widest_at_depth":
    source = np.broadcast_to(logits[:, :, -1:], logits.shape)
    students[:, -1] = False
  else:
    source = np.concatenate([logits[:, :, 1:], logits[:, :, -1:]], axis=2)
    students[:, -1] = False
  p_teacher = np.exp(_log_softmax(source / t))
  kl = (p_teacher * (np.log(p_teacher) - _log_softmax(logits / t))).sum(-1).mean(0) * t * t
  per_exit = np.where(students, (1 - a) * np.asarray(ce) + a * kl, ce)
  np.testing.assert_allclose(loss, (lam * per_exit).sum() / lam.sum(), rtol=1e-5)


def test_distillation_passes_no_gradient_to_the_teacher():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.normal(size=(4, 2, 3, 5)), jnp.float32)
  labels, lam = jnp.array([0, 1, 4, 2]), jnp.ones((2, 3))
  g = jax.grad(lambda z: losses.joint_loss(z, labels, lam, distill_weight=1.0,
                                           distill_teacher="widest_at_depth")[0])(logits)
  g_ce = jax.grad(lambda z: losses.joint_loss(z, labels, lam)[0])(logits)
  # With a = 1 the widest exits learn from the labels alone, exactly as without distillation.
  np.testing.assert_allclose(g[:, :, -1], g_ce[:, :, -1], rtol=1e-6)


def test_boosted_logits_keep_values_and_cut_the_narrower_widths_gradient():
  rng = np.random.default_rng(3)
  partial = jnp.asarray(rng.normal(size=(2, 1, 3, 4)), jnp.float32)
  labels, lam = jnp.array([1, 3]), jnp.ones((1, 3))

  def loss(p, boosted, only):  # The loss of one width, of partial logits P (Z = cumsum P).
    weights = lam * 0 + jnp.eye(3)[only]
    return losses.joint_loss(jnp.cumsum(p, axis=2), labels, weights, boosted=boosted)[0]

  np.testing.assert_allclose(loss(partial, True, 2), loss(partial, False, 2), rtol=1e-6)
  g_boost = jax.grad(loss)(partial, True, 2)
  g_plain = jax.grad(loss)(partial, False, 2)
  np.testing.assert_array_equal(g_boost[:, :, :2], 0)  # Widths 1, 2: held fixed.
  np.testing.assert_allclose(g_boost[:, :, 2], g_plain[:, :, 2], rtol=1e-6)
  assert np.abs(g_plain[:, :, :2]).min() > 0


def test_recipe_options_are_validated(tiny_config):
  check = lambda: config_validation.validate(tiny_config, check_paths=False)
  tiny_config.loss.trunk_gradient = "mean"
  check()
  tiny_config.model.causal = False
  with pytest.raises(ConfigError, match="loss.trunk_gradient: 'mean' needs model.causal=True"):
    check()
  tiny_config.loss.lambda_scheme = "full_width"  # The depth-only network: allowed.
  check()
  tiny_config.model.causal, tiny_config.loss.trunk_gradient = True, "avg"
  with pytest.raises(ConfigError, match="loss.trunk_gradient: 'avg' is not one of sum, mean"):
    check()
  tiny_config.loss.trunk_gradient = "sum"
  tiny_config.loss.distill_teacher = "widest"
  with pytest.raises(ConfigError, match="loss.distill_teacher"):
    check()
  tiny_config.loss.distill_teacher = "next_wider"
  tiny_config.loss.boosted, tiny_config.model.head_reduction = True, "mean"
  with pytest.raises(ConfigError, match="loss.boosted: needs model.head_reduction='sum'"):
    check()
  tiny_config.model.head_reduction, tiny_config.model.exit_head = "sum", "untied"
  with pytest.raises(ConfigError, match="loss.boosted: needs model.exit_head='shared'"):
    check()
  tiny_config.model.exit_head = "tied"
  with pytest.raises(ConfigError, match="model.exit_head: 'tied' is not one of shared, untied"):
    check()
  tiny_config.model.exit_head, tiny_config.loss.boosted = "shared", False
  tiny_config.train.optimizer = "adam"
  with pytest.raises(ConfigError, match="train.optimizer: 'adam' is not one of sgd, adamw, lamb"):
    check()


@pytest.mark.parametrize("name", sorted(optimizer.OPTIMIZERS))
def test_optimizers_decay_kernels_only(tiny_config, name):
  tiny_config.train.optimizer, tiny_config.train.weight_decay = name, 0.1
  tx = optimizer.create_optimizer(tiny_config.train, 1.0)
  params = {"conv": {"kernel": jnp.ones((2, 2))}, "bn": {"bias": jnp.ones((2,))}}
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert np.all(np.asarray(updates["conv"]["kernel"]) < 0)  # Decay alone moves kernels.
  np.testing.assert_array_equal(updates["bn"]["bias"], 0)


def test_adaptive_lambda_scales_by_the_inverse_running_loss():
  lam = np.array([[1.0, 1.0], [1.0, 3.0]], np.float32)
  ema = np.array([[2.0, 1.0], [0.5, 0.5]], np.float32)  # mean 1.0
  np.testing.assert_allclose(losses.adaptive_lambda(lam, ema, 1.0), lam / ema, rtol=1e-6)
  np.testing.assert_allclose(losses.adaptive_lambda(lam, ema, 0.5), lam * (0.5 + 0.5 / ema),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.adaptive_lambda(lam, ema, 0.0), lam)

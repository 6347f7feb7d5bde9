"""Nesting invariants of the DNNet: causality in width and depth, BN, fused exits, presets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dnn_jax import config_base
from dnn_jax import models
from dnn_jax import subnetwork
from tests import helpers


_names, _model_config, _random_variables, _images = (helpers.names, helpers.model_config,
                                                  helpers.random_variables, helpers.images)


def test_group_mask_is_block_lower_triangular():
  m = models.group_mask(4, 6, 2)  # 2 in-channels and 3 out-channels per group
  expected = np.array([[1, 1, 1, 1, 1, 1]] * 2 + [[0, 0, 0, 1, 1, 1]] * 2, bool)
  np.testing.assert_array_equal(m, expected)
  assert models.group_mask(3, 6, 2, grouped_input=False).all()
  assert models.group_mask(4, 6, 2, causal=False).all()


def test_masked_taps_start_at_zero_with_visible_fan_in_scale():
  conv = models.CausalConv(features=64, kernel_size=3, num_groups=4)
  kernel = conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 32)))["params"]["kernel"]
  mask = models.group_mask(32, 64, 4)
  assert not np.any(np.asarray(kernel)[:, :, ~mask])
  # Output group 1 sees 8 input channels, group 4 sees 32: He std sqrt(2 / (9 * fan_in)).
  std_first = np.std(np.asarray(kernel)[:, :, :8, :16])
  std_last = np.std(np.asarray(kernel)[:, :, :, 48:])
  np.testing.assert_allclose([std_first, std_last], np.sqrt(2 / (9 * np.array([8, 32]))),
                             rtol=0.1)


def test_kernel_masking_behind_its_barrier_is_a_plain_multiply_in_every_mode():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 4, 6))
  mask = models.group_mask(4, 6, 2)
  plain = lambda k: k * jnp.asarray(mask, k.dtype)
  barrier = lambda k: models._masked(k, mask)
  np.testing.assert_array_equal(barrier(kernel), plain(kernel))
  loss = lambda f: lambda k: jnp.sum(jnp.sin(f(k)))
  np.testing.assert_array_equal(jax.grad(loss(barrier))(kernel), jax.grad(loss(plain))(kernel))
  tangent = jax.random.normal(jax.random.key(1), kernel.shape)  # forward mode, e.g. jacfwd
  np.testing.assert_array_equal(jax.jvp(loss(barrier), (kernel,), (tangent,))[1],
                                jax.jvp(loss(plain), (kernel,), (tangent,))[1])


@pytest.mark.parametrize("c", [1, 2, 3])
def test_causal_conv_ignores_later_input_groups(c):
  conv = models.CausalConv(features=12, kernel_size=3, strides=2, num_groups=4)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  variables = conv.init(jax.random.key(1), x)
  x2 = x.at[..., c * 2:].add(jax.random.normal(jax.random.key(2), (2, 8, 8, 8 - c * 2)))
  y, y2 = conv.apply(variables, x), conv.apply(variables, x2)
  chex.assert_trees_all_close(y[..., :c * 3], y2[..., :c * 3], atol=0)
  assert not np.allclose(y[..., c * 3:], y2[..., c * 3:])


@pytest.mark.parametrize("shortcut", ["projection", "pad"])
@pytest.mark.parametrize("train", [False, True])
def test_residual_block_ignores_later_input_groups(shortcut, train):
  block = models.ResidualBlock(features=12, strides=2, num_groups=3, shortcut=shortcut)
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 6))
  variables = _random_variables(block, (8, 8, 6))
  c = 2
  x2 = x.at[..., c * 2:].add(5.0)
  run = lambda v, inp: block.apply(v, inp, train=train, mutable=["batch_stats"])[0]
  chex.assert_trees_all_close(run(variables, x)[..., :c * 4], run(variables, x2)[..., :c * 4],
                              atol=1e-5)


def _width_region(variables, num_groups, width):
  """Tree of bool masks: True where an entry feeds (or is) a group <= width."""

  def region(path, x):
    m = np.zeros(x.shape, bool)
    names = _names(path)
    if names[1].startswith("exit_"):
      m[:width] = True
    elif names[-1] == "kernel" and x.ndim == 4:
      m[..., :x.shape[3] * width // num_groups] = True
    else:
      m[:x.shape[0] * width // num_groups] = True
    return m

  return jax.tree_util.tree_map_with_path(region, variables)


@pytest.mark.parametrize("shortcut", ["projection", "pad"])
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("width", [1, 2])
def test_width_causality_of_the_whole_network(shortcut, train, width):
  cfg = _model_config(shortcut=shortcut)
  model = models.create_model(cfg, 5)
  variables = _random_variables(model, (8, 8, 3))
  region = _width_region(variables, cfg.num_groups, width)
  noise = jax.tree_util.tree_map(
      lambda x, r: jnp.where(r, 0.0, jax.random.normal(jax.random.key(9), x.shape)),
      variables, region)
  perturbed = jax.tree_util.tree_map(lambda x, n: x + n, variables, noise)
  perturbed = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.abs(x) if _names(p)[-1] == "var" else x, perturbed)
  x = _images((4, 8, 8, 3))
  run = lambda v: model.apply(v, x, train=train, mutable=["batch_stats"])[0]
  a, b = run(variables), run(perturbed)
  assert a.shape == (4, 5, 3, 5)
  chex.assert_trees_all_close(a[:, :, :width], b[:, :, :width], atol=1e-5)
  assert not np.allclose(a[:, :, width:], b[:, :, width:])


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_causality_of_the_whole_network(depth):
  cfg = _model_config()
  model = models.create_model(cfg, 5)
  variables = _random_variables(model, (8, 8, 3))

  def deeper(name):
    if name.startswith("block_"):
      return int(name.split("_")[1]) >= depth
    return name.startswith("exit_") and int(name.split("_")[1]) > depth

  perturbed = {col: {k: (jax.tree_util.tree_map(lambda x: x * 1.7 + 0.2, v) if deeper(k) else v)
                     for k, v in tree.items()} for col, tree in variables.items()}
  x = _images((4, 8, 8, 3))
  for train in (False, True):
    run = lambda v: model.apply(v, x, train=train, mutable=["batch_stats"])[0]
    a, b = run(variables), run(perturbed)
    chex.assert_trees_all_close(a[:, :depth], b[:, :depth], atol=1e-6)
    assert not np.allclose(a[:, depth:], b[:, depth:])


@pytest.mark.core
@pytest.mark.parametrize("shortcut,exit_head", [("projection", "shared"), ("pad", "shared"),
                                                ("projection", "untied")])
def test_fused_exits_equal_each_sub_network_computed_on_its_own(shortcut, exit_head):
  """Every cell of the one-pass grid equals the separately built, sliced sub-network."""
  cfg = _model_config(shortcut=shortcut, exit_head=exit_head)
  model = models.create_model(cfg, 5, input_mean=(100.0,), input_std=(50.0,))
  variables = _random_variables(model, (8, 8, 3))
  x = _images((3, 8, 8, 3))
  fused = model.apply(variables, x)
  depths, widths = models.grid_shape(cfg)
  for d in range(1, depths + 1):
    for c in range(1, widths + 1):
      sub = subnetwork.subnetwork_model(model, d, c)
      sub_vars = subnetwork.slice_variables(variables, cfg.num_groups, d, c)
      logits = sub.apply(sub_vars, x)
      assert logits.shape == (3, d, c, 5)
      chex.assert_trees_all_close(logits[:, -1, -1], fused[:, d - 1, c - 1], atol=1e-4,
                                  rtol=1e-5)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_untied_head_computes_each_widths_own_map_of_its_groups(reduction):
  """Z_c = sum_{k <= c} U[c, k] f_k + b_c, whatever U holds above the diagonal; with
  U[c, k] = W_k and b_c = b_1 + ... + b_c it is the shared head."""
  g, d, k = 3, 4, 5
  feats = jax.random.normal(jax.random.key(0), (2, 2, 2, g * d))
  f_BxGxD = np.asarray(feats).mean(axis=(1, 2)).reshape(2, g, d)
  untied = models.ExitHead(g, k, reduction, untied=True)
  u = untied.init(jax.random.key(1), feats)["params"]
  assert u["kernel"].shape == (g, g, d, k) and u["bias"].shape == (g, k)
  assert not np.any(np.asarray(u["kernel"])[np.triu_indices(g, 1)])  # Masked taps start at 0.
  u = jax.tree_util.tree_map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), u)
  z = np.asarray(untied.apply({"params": u}, feats))
  uk, ub = np.asarray(u["kernel"]), np.asarray(u["bias"])
  for c in range(1, g + 1):
    expected = sum(f_BxGxD[:, j] @ uk[c - 1, j] for j in range(c)) + ub[c - 1]
    np.testing.assert_allclose(z[:, c - 1], expected / (c if reduction == "mean" else 1),
                               rtol=1e-5, atol=1e-5)
  shared = models.ExitHead(g, k, reduction)
  w = shared.init(jax.random.key(3), feats)["params"]
  w = {"kernel": w["kernel"] + 0.1, "bias": w["bias"] + 0.2}
  tied = {"kernel": jnp.broadcast_to(w["kernel"][None], (g, g, d, k)),
          "bias": jnp.cumsum(w["bias"], axis=0)}
  np.testing.assert_allclose(untied.apply({"params": tied}, feats),
                             shared.apply({"params": w}, feats), rtol=1e-5, atol=1e-5)


def test_mean_head_divides_the_cumulative_sum_by_width():
  cfg = _model_config()
  x = _images((2, 8, 8, 3))
  summed = models.create_model(cfg, 5)
  variables = _random_variables(summed, (8, 8, 3))
  meaned = models.create_model(_model_config(head_reduction="mean"), 5)
  a, b = summed.apply(variables, x), meaned.apply(variables, x)
  chex.assert_trees_all_close(a / jnp.arange(1, 4)[None, None, :, None], b, rtol=1e-5)


@pytest.mark.parametrize("width,depth", [(1, 5), (2, 3), (3, 5)])
def test_bn_statistics_of_a_group_do_not_depend_on_the_rest_of_the_network(width, depth):
  """Train-mode BN stats of the full network equal those of any sub-network containing them."""
  cfg = _model_config()
  model = models.create_model(cfg, 5)
  variables = _random_variables(model, (8, 8, 3))
  x = _images((8, 8, 8, 3))
  _, full = model.apply(variables, x, train=True, mutable=["batch_stats"])
  sub = subnetwork.subnetwork_model(model, depth, width)
  _, sub_stats = sub.apply(subnetwork.slice_variables(variables, cfg.num_groups, depth, width),
                           x, train=True, mutable=["batch_stats"])
  expected = subnetwork.slice_variables(full, cfg.num_groups, depth, width)["batch_stats"]
  chex.assert_trees_all_close(sub_stats["batch_stats"], expected, atol=1e-4, rtol=1e-5)


def _count(cfg, num_classes, image_shape):
  model = models.create_model(cfg, num_classes)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + image_shape))["params"]
  return params, models.count_params(params), models.count_params(params, cfg)


def test_paper_preset_parameter_counts_are_pinned():
  cfg = config_base.base_config().model  # 22 groups, 1/2/4 channels per group, 5-5-5 blocks
  params, stored, effective = _count(cfg, 10, (32, 32, 3))
  assert models.grid_shape(cfg) == (16, 22)
  assert len([k for k in params if k.startswith("exit_")]) == 16
  # By hand: dense convs 876,634 + BN 3,388 + 16 heads 11,440 = 891,462 stored; the causal
  # masks keep 458,524 conv weights (a fraction 253/484 of each grouped conv) -> 473,352.
  assert stored == 891_462
  assert effective == 473_352


def test_standard_resnet32_backbone_has_its_known_parameter_count():
  cfg = _model_config(num_groups=1, cpg=(16, 32, 64), blocks=(5, 5, 5), causal=False,
                      shortcut="pad")
  params, _, _ = _count(cfg, 10, (32, 32, 3))
  final_only = {k: v for k, v in params.items() if not k.startswith("exit_") or k == "exit_16"}
  assert models.count_params(final_only) == 464_154  # He et al.'s ResNet-32 (0.46M)


def test_digits_preset_parameter_count_is_pinned():
  from configs import digits
  _, stored, effective = _count(digits.get_config().model, 10, (8, 8, 1))
  assert (stored, effective) == (78_544, 49_936)  # Checked by hand like the paper preset.


def test_stage_channels_give_the_same_layout_as_channels_per_group():
  a = _model_config(num_groups=4, cpg=(1, 2, 4))
  b = _model_config(num_groups=4, cpg=(9, 9, 9), stage_channels=(4, 8, 16))
  assert models.channels_per_group(a) == models.channels_per_group(b) == (1, 2, 4)


def test_auto_conv_form_picks_the_backends_measured_form(monkeypatch):
  assert models.resolve_conv_form("blocks:2") == "blocks:2"
  # Every measured form is "masked" today: give the table other values to see it is read.
  monkeypatch.setitem(models.CONV_FORM_BY_BACKEND, "gpu", "blocks:2")
  assert models.resolve_conv_form("auto", "gpu") == "blocks:2"
  monkeypatch.setitem(models.CONV_FORM_BY_BACKEND, jax.default_backend(), "blocks:3")
  assert models.create_model(_model_config(conv_form="auto"), 5).conv_form == "blocks:3"
  assert models.create_model(_model_config(conv_form="masked"), 5).conv_form == "masked"
  assert models.resolve_conv_form("auto", "some_new_backend") == "masked"


@pytest.mark.parametrize("form", ["blocks:1", "blocks:2", "blocks:3"])
def test_conv_forms_compute_the_same_network(form):
  cfg = _model_config()
  x = _images((2, 8, 8, 3))
  masked = models.create_model(cfg, 5)
  variables = _random_variables(masked, (8, 8, 3))
  other = models.create_model(_model_config(conv_form=form), 5)
  chex.assert_trees_all_close(other.apply(variables, x), masked.apply(variables, x), atol=1e-4)
  loss = lambda m: lambda v: jnp.sum(m.apply(v, x, train=True, mutable=["batch_stats"])[0] ** 2)
  chex.assert_trees_all_close(jax.grad(loss(other))(variables)["params"],
                              jax.grad(loss(masked))(variables)["params"], atol=1e-3, rtol=1e-4)

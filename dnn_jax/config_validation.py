"""Checks a config before anything is compiled; raises ConfigError naming the field."""

from __future__ import annotations

import os

import jax
import numpy as np

from dnn_jax import losses
from dnn_jax import models
from dnn_jax import optimizer
from dnn_jax.errors import ConfigError

SOURCES = ("digits", "tfds", "image_folder")
TFDS_NAMES = ("cifar10", "svhn_cropped")
EVAL_SPLITS = ("test", "validation")
AUGMENTS = ("crop_flip", "crop", "none")
SCHEDULES = ("cosine", "step", "constant")
DTYPES = ("float32", "bfloat16")


def _require(ok: bool, field: str, message: str):
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def _one_of(value, field: str, choices):
  _require(value in choices, field, f"{value!r} is not one of {', '.join(choices)}")


def _positive_ints(values, field: str, allow_zero: bool = False):
  values = tuple(values) if isinstance(values, (list, tuple)) else (values,)
  lo = 0 if allow_zero else 1
  _require(len(values) > 0 and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                   and v >= lo for v in values),
           field, f"{values!r} must be {'non-negative' if allow_zero else 'positive'} integers")


def _finite_numbers(config, prefix: str = "") -> None:
  """Every number in the config is finite: nan and inf pass comparisons like `x >= 0` (or
  fail them) with a message that reads wrong ("nan is negative")."""
  for key, value in config.items():
    field = f"{prefix}{key}"
    if hasattr(value, "items"):
      _finite_numbers(value, field + ".")
    for v in value if isinstance(value, (list, tuple)) else (value,):
      _require(not isinstance(v, float) or np.isfinite(v), field,
               f"{value!r} is not a finite number")


def validate(config, device_count: int | None = None, check_paths: bool = True) -> None:
  """Raises ConfigError for the first invalid field found. check_paths=False: the data
  paths need not exist (modes that read only a checkpoint)."""
  device_count = device_count or jax.device_count()
  _finite_numbers(config)
  d, m, l, t = config.data, config.model, config.loss, config.train

  _one_of(d.source, "data.source", SOURCES)
  if d.source == "tfds":
    _one_of(d.name, "data.name", TFDS_NAMES)
    _require(not (check_paths and d.tfds_data_dir)
             or os.path.isdir(os.path.expanduser(d.tfds_data_dir)),
             "data.tfds_data_dir", f"{d.tfds_data_dir!r} is not a directory")
  if d.source == "image_folder" and check_paths:
    _require(bool(d.root), "data.root", "must name a folder with train/<class>/* images")
    root = os.path.expanduser(d.root)
    _require(os.path.isdir(root), "data.root", f"{d.root!r} is not a directory")
    _require(any(os.path.isdir(os.path.join(root, s)) for s in ("train", "test")), "data.root",
             f"{d.root!r} has neither train/ nor test/ (expected train/<class>/*.jpg)")
  _one_of(d.eval_split, "data.eval_split", EVAL_SPLITS)
  _require(0.0 < d.validation_fraction < 1.0, "data.validation_fraction",
           f"{d.validation_fraction} must be in (0, 1)")
  _one_of(d.augment, "data.augment", AUGMENTS)
  _positive_ints(d.crop_padding, "data.crop_padding", allow_zero=True)
  _positive_ints(d.image_size, "data.image_size", allow_zero=True)
  _require(len(d.mean) == len(d.std) and len(d.mean) > 0, "data.mean",
           "data.mean and data.std need the same, non-zero length")
  _require(all(s > 0 for s in d.std), "data.std", f"{tuple(d.std)} must be positive")

  _positive_ints(m.num_groups, "model.num_groups")
  _positive_ints(m.blocks_per_stage, "model.blocks_per_stage", allow_zero=True)
  if m.stage_channels:
    _positive_ints(m.stage_channels, "model.stage_channels")
    for s, c in enumerate(m.stage_channels):
      _require(c % m.num_groups == 0, "model.stage_channels",
               f"stage {s + 1} has {c} channels, not divisible into "
               f"model.num_groups={m.num_groups} groups")
    stages = len(m.stage_channels)
  else:
    _positive_ints(m.channels_per_group, "model.channels_per_group")
    stages = len(m.channels_per_group)
  _require(stages == len(m.blocks_per_stage), "model.blocks_per_stage",
           f"has {len(m.blocks_per_stage)} stages but the channel layout has {stages}")
  _one_of(m.shortcut, "model.shortcut", models.SHORTCUTS)
  _one_of(m.head_reduction, "model.head_reduction", models.HEAD_REDUCTIONS)
  _one_of(m.exit_head, "model.exit_head", models.EXIT_HEADS)
  _one_of(m.dtype, "model.dtype", DTYPES)
  form = m.conv_form
  _require(form in ("auto", "masked") or (form.startswith("blocks:") and form[7:].isdigit()
                                and 1 <= int(form[7:]) <= m.num_groups),
           "model.conv_form",
           f"{form!r} is not 'auto', 'masked' or 'blocks:S' with 1 <= S <= num_groups")
  _require(0.0 <= m.bn_momentum < 1.0, "model.bn_momentum", f"{m.bn_momentum} not in [0, 1)")

  _one_of(l.lambda_scheme, "loss.lambda_scheme", tuple(losses.LAMBDA_SCHEMES))
  depths, widths = 1 + sum(m.blocks_per_stage), m.num_groups
  if l.lambda_scheme == "explicit":
    try:
      grid = np.asarray(l.lambda_grid, np.float64)
    except (TypeError, ValueError):
      grid = np.zeros((0,))
    _require(grid.shape == (depths, widths), "loss.lambda_grid",
             f"shape {grid.shape} does not match the exit grid ({depths} depths, {widths} widths)")
    _require(bool(np.all(grid >= 0)) and grid.sum() > 0, "loss.lambda_grid",
             "weights must be non-negative with a positive sum")
  _require(0.0 <= l.shallow_share < 1.0, "loss.shallow_share", f"{l.shallow_share} not in [0, 1)")
  _require(0.0 <= l.label_smoothing < 1.0, "loss.label_smoothing",
           f"{l.label_smoothing} not in [0, 1)")

  _one_of(l.head_gradient, "loss.head_gradient", losses.GRADIENT_MODES)
  _one_of(l.trunk_gradient, "loss.trunk_gradient", losses.GRADIENT_MODES)
  if l.trunk_gradient == "mean" and not m.causal:
    lam = losses.lambda_grid(l, depths, widths)
    # Only channel-causal layers have the consumer structure trunk_gradient_scale assumes;
    # a plain network's exits at full width alone see every channel, as it does.
    _require(not lam[:, :-1].any(), "loss.trunk_gradient",
             "'mean' needs model.causal=True unless only full-width exits carry weight")
  _one_of(l.distill_teacher, "loss.distill_teacher", losses.DISTILL_TEACHERS)
  _require(0.0 <= l.adaptive_weight <= 1.0, "loss.adaptive_weight",
           f"{l.adaptive_weight} not in [0, 1]")
  _require(0.0 <= l.adaptive_decay < 1.0, "loss.adaptive_decay",
           f"{l.adaptive_decay} not in [0, 1)")
  _require(isinstance(l.boosted, bool), "loss.boosted", f"{l.boosted!r} must be True or False")
  _require(not (l.boosted and m.head_reduction != "sum"), "loss.boosted",
           "needs model.head_reduction='sum' (logits as running sums over groups)")
  _require(not (l.boosted and m.exit_head != "shared"), "loss.boosted",
           "needs model.exit_head='shared' (width c's logits extend width c - 1's)")
  _require(0.0 <= l.distill_weight <= 1.0, "loss.distill_weight",
           f"{l.distill_weight} not in [0, 1]")
  _require(l.distill_temperature > 0, "loss.distill_temperature",
           f"{l.distill_temperature} must be positive")

  _one_of(t.optimizer, "train.optimizer", tuple(optimizer.OPTIMIZERS))
  _positive_ints(t.batch_size, "train.batch_size")
  _require(t.batch_size % device_count == 0, "train.batch_size",
           f"{t.batch_size} is not divisible by the {device_count} devices")
  _require(t.num_steps > 0 or t.num_epochs > 0, "train.num_epochs",
           f"{t.num_epochs} must be positive (or set train.num_steps)")
  _positive_ints(t.num_steps, "train.num_steps", allow_zero=True)
  _require(t.learning_rate > 0, "train.learning_rate", f"{t.learning_rate} must be positive")
  _one_of(t.schedule, "train.schedule", SCHEDULES)
  _require(t.warmup_epochs >= 0, "train.warmup_epochs", f"{t.warmup_epochs} is negative")
  _require(0.0 <= t.momentum < 1.0, "train.momentum", f"{t.momentum} not in [0, 1)")
  _require(t.weight_decay >= 0, "train.weight_decay", f"{t.weight_decay} is negative")
  _positive_ints(t.log_every_steps, "train.log_every_steps")
  _positive_ints(t.eval_every_steps, "train.eval_every_steps", allow_zero=True)

  for name in ("macs", "params", "activation_bytes", "latency_ms"):
    value = config.budget[name]
    _require(value is None or value > 0, f"budget.{name}", f"{value} must be positive")
  _positive_ints(config.export.depth, "export.depth", allow_zero=True)
  _positive_ints(config.export.width, "export.width", allow_zero=True)
  if config.export.subnet:
    from dnn_jax.subnetwork import parse_subnet_id
    try:  # Whether it is inside the grid is checked against the checkpoint's model.
      parse_subnet_id(config.export.subnet)
    except ValueError as e:
      raise ConfigError(f"config.export.subnet: {e}") from e
  _require(isinstance(config.anytime.budgets, int) and config.anytime.budgets >= 2,
           "anytime.budgets", f"{config.anytime.budgets} must be an integer >= 2")
  from dnn_jax.anytime import PATHS
  _one_of(config.anytime.path, "anytime.path", tuple(PATHS))
  _positive_ints(config.anytime.timing_images, "anytime.timing_images", allow_zero=True)
  from dnn_jax.export import FORMATS, parse_formats
  try:
    parse_formats(str(config.export.format))
  except ValueError as e:
    raise ConfigError(f"config.export.format: {e}; choose from {', '.join(FORMATS)} "
                      "(comma-separated)") from e
  sizes = [b.strip() for b in str(config.export.tflite_batch_sizes).split(",")]
  _require(all(b.isdigit() and int(b) > 0 for b in sizes), "export.tflite_batch_sizes",
           f"{config.export.tflite_batch_sizes!r} is not a comma-separated list of positive "
           "integers")
  _positive_ints(config.resources.batch_size, "resources.batch_size")
  from dnn_jax.runtimes import RUNTIMES
  _one_of(config.resources.runtime, "resources.runtime", RUNTIMES)
  _positive_ints(config.resources.repeats, "resources.repeats")

  _positive_ints(config.eval.batch_size, "eval.batch_size")
  _require(config.eval.batch_size % device_count == 0, "eval.batch_size",
           f"{config.eval.batch_size} is not divisible by the {device_count} devices")
  _positive_ints(config.checkpoint.every_steps, "checkpoint.every_steps")
  _positive_ints(config.checkpoint.max_to_keep, "checkpoint.max_to_keep")

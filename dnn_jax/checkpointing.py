"""Orbax checkpoints of the whole train state, with the config that produced it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from dnn_jax import files
from dnn_jax import workdir as layout


class CorruptCheckpoint(Exception):
  """A checkpoint read back, but not as it was saved (its digest differs)."""


def _host(x) -> np.ndarray:
  """A leaf's value on this host: a replicated array's local copy where it spans processes."""
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      x = x.addressable_shards[0].data
  return np.ascontiguousarray(jax.device_get(x))


def tree_sha256(tree) -> str:
  """sha256 over every leaf's dtype, shape and bytes, in the tree's order: the digest saved
  with each checkpoint and checked on every restore."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    a = _host(leaf)
    h.update(f"{a.dtype}:{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def variables_of(state) -> dict:
  return {"params": state.params, "batch_stats": state.batch_stats}


def manager(workdir: str, checkpoint_config=None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.max_to_keep if checkpoint_config else None)
  return ocp.CheckpointManager(files.absolute(layout.checkpoints(workdir)),
                               options=options, item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, state, config: ml_collections.ConfigDict,
         class_names, image_shape) -> None:
  """Saves the state; the config, class names and image shape travel with it as JSON."""
  step = int(jax.device_get(state.step))
  meta = {"config": config.to_dict(), "class_names": list(class_names),
          "image_shape": [int(x) for x in image_shape],
          # Checked on every restore: bytes changed on disk must not restore as valid.
          "state_sha256": tree_sha256(state),
          "variables_sha256": tree_sha256(variables_of(state))}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(meta)), force=True)


def abstract_like(tree, sharding):
  """Shape/dtype structs of `tree` carrying `sharding`: the restore target."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# Model fields that define the network a checkpoint holds (its parameter structure or what
# its parameters compute). Others (conv form, dtype, BN momentum, init choices) may change
# on a resume.
NETWORK_FIELDS = ("num_groups", "channels_per_group", "stage_channels", "blocks_per_stage",
                  "causal", "shortcut", "head_reduction", "exit_head")


def network_differences(saved: "Saved", config: ml_collections.ConfigDict, class_names,
                        num_channels: int) -> list[str]:
  """What makes `config` + the given data build another network than the checkpoint's."""
  diffs = []
  for key in NETWORK_FIELDS:
    a, b = saved.config.model[key], config.model[key]
    a, b = (tuple(a), tuple(b)) if isinstance(a, (list, tuple)) else (a, b)
    if a != b:
      diffs.append(f"model.{key}={a!r} (saved) vs {b!r} (given)")
  if saved.config.train.optimizer != config.train.optimizer:
    diffs.append(f"train.optimizer={saved.config.train.optimizer!r} (saved) vs "
                 f"{config.train.optimizer!r} (given): the optimizer state differs")
  elif (saved.config.train.momentum > 0) != (config.train.momentum > 0):
    diffs.append(f"train.momentum={saved.config.train.momentum} (saved) vs "
                 f"{config.train.momentum} (given): the optimizer state differs")
  if (saved.config.loss.adaptive_weight > 0) != (config.loss.adaptive_weight > 0):
    diffs.append(f"loss.adaptive_weight={saved.config.loss.adaptive_weight} (saved) vs "
                 f"{config.loss.adaptive_weight} (given): the running exit losses are "
                 f"{'kept' if saved.config.loss.adaptive_weight > 0 else 'not kept'} in the "
                 "checkpoint")
  if len(saved.class_names) != len(class_names):
    diffs.append(f"{len(saved.class_names)} classes (saved) vs {len(class_names)} (given data)")
  elif tuple(saved.class_names) != tuple(class_names):  # Same count: a silent relabelling.
    shown = lambda names: ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    diffs.append(f"classes {shown(list(saved.class_names))} (saved) vs "
                 f"{shown(list(class_names))} (given data)")
  if saved.image_shape is not None and saved.image_shape[-1] != num_channels:
    diffs.append(f"{saved.image_shape[-1]} image channels (saved) vs {num_channels} (given data)")
  return diffs


def move_aside(workdir: str, step: int, reason: str, log=print) -> None:
  """Moves unreadable checkpoint `step` to DIR/corrupt_checkpoints/ (never deleted), on
  process 0, and waits for every process to see it."""
  if jax.process_index() == 0:
    aside = os.path.join(layout.corrupt_checkpoints(workdir), f"{step}-{int(time.time())}")
    files.makedirs(os.path.dirname(aside))
    files.move(os.path.join(files.absolute(layout.checkpoints(workdir)), str(step)), aside)
    log(f"Checkpoint step {step} is unreadable ({reason}); moved to {aside}")
  if jax.process_count() > 1:  # Every process sees the move before listing steps again.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")


def write_error(e: Exception) -> str:
  """What stopped a save, in a few words: the OS error behind Orbax's and tensorstore's
  wrappers (ValueError('RESOURCE_EXHAUSTED: ... [os_error_code='28']')) where there is one."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  code = re.search(r"os_error_code='?(\d+)", str(e))
  return os.strerror(int(code.group(1))) if code else _reason(e)


def _reason(e: Exception) -> str:
  return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def restore_latest_good(mngr: ocp.CheckpointManager, abstract_state, workdir: str, log=print):
  """Restores the newest checkpoint that reads back as saved; unreadable ones (and ones whose
  digest differs) are moved aside to DIR/corrupt_checkpoints/ and reported. Raises UserError
  if none reads."""
  from dnn_jax.errors import UserError
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(mngr, abstract_state, step)
    except Exception as e:  # Orbax raises many types for truncated or corrupt files.
      move_aside(workdir, step, _reason(e), log)
      mngr.reload()
  raise UserError(f"no readable checkpoint in {layout.checkpoints(workdir)} "
                  f"(tried steps {steps}; see {layout.corrupt_checkpoints(workdir)})")


def restore_variables_latest_good(workdir: str, saved: "Saved", abstract_variables: dict,
                                  log=print) -> tuple[dict, "Saved"]:
  """The model's variables of checkpoint `saved.step`, or of the newest older one that reads
  back as saved (the unreadable ones moved aside): (variables, that checkpoint's Saved)."""
  from dnn_jax.errors import UserError
  mngr = manager(workdir)
  try:
    steps = [s for s in sorted(mngr.all_steps(), reverse=True) if s <= saved.step]
    for step in steps:
      try:
        meta = saved if step == saved.step else saved_at(mngr, step)
        return restore_variables(workdir, step, abstract_variables,
                                 meta.variables_sha256), meta
      except Exception as e:
        move_aside(workdir, step, _reason(e), log)
  finally:
    mngr.close()
  raise UserError(f"no readable checkpoint in {layout.checkpoints(workdir)} "
                  f"(tried steps {steps}; see {layout.corrupt_checkpoints(workdir)})")


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) into `abstract_state`'s shardings."""
  step = mngr.latest_step() if step is None else step
  expected = saved_at(mngr, step).state_sha256
  state = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state))).state
  if expected is not None and tree_sha256(state) != expected:
    raise CorruptCheckpoint(f"step {step} does not read back as saved (sha256 differs)")
  return state


def restore_variables(workdir: str, step: int, abstract_variables: dict,
                      expected_sha256: str | None = None) -> dict:
  """The model's variables (params, batch stats) of checkpoint `step`, into the target's
  shardings; the optimizer state stays on disk. CorruptCheckpoint when they differ from the
  digest saved with them."""
  path = os.path.join(files.absolute(layout.checkpoints(workdir)), str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
        abstract_variables,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables),
        partial_restore=True))
  variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
  if expected_sha256 is not None and tree_sha256(variables) != expected_sha256:
    raise CorruptCheckpoint(f"step {step} does not read back as saved (sha256 differs)")
  return variables


@dataclasses.dataclass(frozen=True)
class Saved:
  """What a workdir's checkpoint says about the trained model (no weights loaded)."""
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...] | None  # None in checkpoints saved before it was recorded
  step: int
  state_sha256: str | None = None  # None in checkpoints saved before digests were kept
  variables_sha256: str | None = None

  def overlay(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with what the trained model is made of taken from the checkpoint: the model
    fields and the input normalisation (data fields otherwise stay the given ones)."""
    config = config.copy_and_resolve_references()
    config.model = self.config.model
    config.data.mean, config.data.std = self.config.data.mean, self.config.data.std
    return config

  def model_differs(self, config: ml_collections.ConfigDict) -> bool:
    """Whether `config` describes another network than the saved one (conv form aside)."""
    fields = lambda model: {k: v for k, v in json.loads(model.to_json()).items()
                            if k != "conv_form"}
    return fields(config.model) != fields(self.config.model)

  def check_image_shape(self, shape, source: str) -> None:
    """DataError unless images of `shape` (H, W, C) are what the checkpoint was trained on
    (checkpoints that did not record a shape: not checked)."""
    from dnn_jax.errors import DataError
    if self.image_shape is not None and tuple(shape) != tuple(self.image_shape):
      raise DataError(f"{source}: images of shape {tuple(shape)}, but the checkpoint's model "
                      f"was trained on {tuple(self.image_shape)} (check config.data.image_size "
                      "and the data)")

  def input_shape(self, data_config=None) -> tuple[int, ...]:
    """The trained image shape. Older checkpoints did not record it: then the saved data
    config's, or failing that the shape of the images `data_config` (else the saved one) reads."""
    if self.image_shape is not None:
      return self.image_shape
    from dnn_jax import input_pipeline
    return (input_pipeline.static_image_shape(self.config.data)
            or input_pipeline.describe(data_config or self.config.data)[0])


def load_saved(workdir: str, step: int | None = None, *, required: bool = True
               ) -> Saved | None:
  """The metadata of the checkpoint at `step` (default: latest). Without a checkpoint:
  UserError, or None when not `required`."""
  from dnn_jax.errors import UserError
  ckpt_dir = layout.checkpoints(workdir)
  mngr = manager(workdir) if files.isdir(ckpt_dir) else None
  try:
    if mngr and step is None:  # The newest whose metadata reads; others moved aside.
      tried = sorted(mngr.all_steps(), reverse=True)
      for latest in tried:
        try:
          return saved_at(mngr, latest)
        except Exception as e:
          from dnn_jax.metric_writers import log
          move_aside(workdir, latest, _reason(e), log)
      if tried:
        raise UserError(f"no readable checkpoint in {ckpt_dir} (tried steps {tried}; see "
                        f"{layout.corrupt_checkpoints(workdir)})")
    if step is None:
      if required:
        aside = layout.corrupt_checkpoints(workdir)
        raise UserError(f"no checkpoint in {ckpt_dir}: " + (
            f"the unreadable ones were moved to {aside}" if files.isdir(aside)
            and files.listdir(aside) else "train first (--mode=train)"))
      return None
    return saved_at(mngr, step)
  finally:
    if mngr:
      mngr.close()


def saved_at(mngr: ocp.CheckpointManager, step: int) -> Saved:
  """The metadata of checkpoint `step` through an open manager."""
  meta = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  shape = meta.get("image_shape")
  return Saved(with_defaults(meta["config"]), tuple(meta["class_names"]),
               tuple(shape) if shape else None, int(step), meta.get("state_sha256"),
               meta.get("variables_sha256"))


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config over today's defaults: fields added since it was saved take their
  defaults (which reproduce the old behaviour), so older checkpoints stay readable."""
  from dnn_jax.config_base import base_config
  config = base_config()

  def merge(target, values):
    for key, value in values.items():
      if isinstance(value, dict) and key in target and isinstance(
          target[key], ml_collections.ConfigDict):
        merge(target[key], value)
      else:
        with target.ignore_type():
          target[key] = tuple(value) if isinstance(value, list) else value

  merge(config, saved)
  return config

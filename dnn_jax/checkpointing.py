"""Orbax checkpoints of the whole train state, with the config that produced it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time

import jax
import ml_collections
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, checkpoint_config=None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=checkpoint_config.max_to_keep if checkpoint_config else None)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                               options=options, item_names=("state", "config"))


def save(mngr: ocp.CheckpointManager, state, config: ml_collections.ConfigDict,
         class_names, image_shape) -> None:
  """Saves the state; the config, class names and image shape travel with it as JSON."""
  step = int(jax.device_get(state.step))
  meta = {"config": config.to_dict(), "class_names": list(class_names),
          "image_shape": [int(x) for x in image_shape]}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(meta)), force=True)


def abstract_like(tree, sharding):
  """Shape/dtype structs of `tree` carrying `sharding`: the restore target."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def state_config_differences(saved: ml_collections.ConfigDict, saved_classes,
                             config: ml_collections.ConfigDict, class_names) -> list[str]:
  """Differences that change the train state's structure: model fields (not the conv form,
  which only changes how the network runs), momentum on/off, the number of classes."""
  def flat(tree, prefix):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out

  a, b = flat(saved.model.to_dict(), "model."), flat(config.model.to_dict(), "model.")
  diffs = [f"{k}={a.get(k)!r} (saved) vs {b.get(k)!r} (given)" for k in sorted(set(a) | set(b))
           if k != "model.conv_form" and a.get(k) != b.get(k)]
  if (saved.train.momentum > 0) != (config.train.momentum > 0):
    diffs.append(f"train.momentum={saved.train.momentum} (saved) vs {config.train.momentum} "
                 "(given)")
  if class_names is not None and len(saved_classes) != len(class_names):
    diffs.append(f"{len(saved_classes)} classes (saved) vs {len(class_names)} (given data)")
  return diffs


def restore_latest_good(mngr: ocp.CheckpointManager, abstract_state, workdir: str, log=print,
                        config: ml_collections.ConfigDict | None = None, class_names=None):
  """Restores the newest checkpoint that reads back; unreadable ones are moved aside to
  DIR/corrupt_checkpoints/ (never deleted) and reported. Raises UserError if none reads, or
  (given `config`) if a checkpoint fails to restore because it was saved with a different
  network or optimizer structure: that is a wrong config, not a corrupt file."""
  from dnn_jax.errors import UserError
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(mngr, abstract_state, step)
    except Exception as e:  # Orbax raises many types for truncated or corrupt files.
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      if config is not None:
        try:
          saved, saved_classes = restore_metadata(mngr, step)
        except Exception:  # The metadata is unreadable too: a corrupt checkpoint.
          saved = None
        diffs = saved and state_config_differences(saved, saved_classes, config, class_names)
        if diffs:
          raise UserError(
              f"checkpoint step {step} in {os.path.join(workdir, CHECKPOINT_DIR)} was saved "
              f"with a different network: {'; '.join(diffs)}. Resume with the saved config "
              "or train in a new --workdir") from e
      if jax.process_index() == 0:
        aside = os.path.join(workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step)), aside)
        log(f"Checkpoint step {step} is unreadable ({reason}); moved to {aside}")
      if jax.process_count() > 1:  # Every process sees the move before listing steps again.
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
      mngr.reload()
  raise UserError(f"no readable checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)} "
                  f"(tried steps {steps}; see {os.path.join(workdir, 'corrupt_checkpoints')})")


def restore(mngr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores the state at `step` (default: latest) into `abstract_state`'s shardings."""
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state))).state


def restore_metadata(mngr: ocp.CheckpointManager, step: int | None = None
                     ) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(config, class_names) saved with the checkpoint at `step` (default: latest)."""
  meta = _read_metadata(mngr, step)
  return with_defaults(meta["config"]), list(meta["class_names"])


def _read_metadata(mngr: ocp.CheckpointManager, step: int | None) -> dict:
  step = mngr.latest_step() if step is None else step
  return mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config


@dataclasses.dataclass(frozen=True)
class Saved:
  """What a workdir's checkpoint says about the trained model (no weights loaded)."""
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  image_shape: tuple[int, ...] | None  # None in checkpoints saved before it was recorded
  step: int

  def input_shape(self, data_config=None) -> tuple[int, ...]:
    """The trained image shape. Older checkpoints did not record it: then the saved data
    config's, or failing that the shape of the images `data_config` (else the saved one) reads."""
    if self.image_shape is not None:
      return self.image_shape
    from dnn_jax import input_pipeline
    return (input_pipeline.static_image_shape(self.config.data)
            or input_pipeline.describe(data_config or self.config.data)[0])


def load_saved(workdir: str, step: int | None = None) -> Saved:
  """The metadata of the checkpoint at `step` (default: latest); UserError if there is none."""
  from dnn_jax.errors import UserError
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  missing = UserError(f"no checkpoint in {ckpt_dir}: train first (--mode=train)")
  if not os.path.isdir(ckpt_dir):
    raise missing
  mngr = manager(workdir)
  try:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise missing
    meta = _read_metadata(mngr, step)
  finally:
    mngr.close()
  shape = meta.get("image_shape")
  return Saved(with_defaults(meta["config"]), tuple(meta["class_names"]),
               tuple(shape) if shape else None, int(step))


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

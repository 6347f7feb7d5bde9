"""Orbax checkpoints of the whole train state, with the config that produced it."""

from __future__ import annotations

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
         class_names) -> None:
  """Saves the state; the config and class names travel with it as JSON."""
  step = int(jax.device_get(state.step))
  meta = {"config": config.to_dict(), "class_names": list(class_names)}
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(meta)), force=True)


def abstract_like(tree, sharding):
  """Shape/dtype structs of `tree` carrying `sharding`: the restore target."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def restore_latest_good(mngr: ocp.CheckpointManager, abstract_state, workdir: str, log=print):
  """Restores the newest checkpoint that reads back; unreadable ones are moved aside to
  DIR/corrupt_checkpoints/ (never deleted) and reported. Raises UserError if none reads."""
  from dnn_jax.errors import UserError
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      return restore(mngr, abstract_state, step)
    except Exception as e:  # Orbax raises many types for truncated or corrupt files.
      reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
      if jax.process_index() == 0:
        aside = os.path.join(workdir, "corrupt_checkpoints", f"{step}-{int(time.time())}")
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR, str(step)), aside)
        log(f"Checkpoint step {step} is unreadable ({reason}); moved to {aside}")
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
  step = mngr.latest_step() if step is None else step
  meta = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
  return with_defaults(meta["config"]), list(meta["class_names"])


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

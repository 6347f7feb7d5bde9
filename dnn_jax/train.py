"""The training loop: all exits trained jointly in one jit-compiled, data-parallel step.

Only `main` imports this module; the loss, optimizer, state and checkpoints stand beside it.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dnn_jax import checkpointing
from dnn_jax import config_validation
from dnn_jax import evaluate
from dnn_jax import files
from dnn_jax import input_pipeline
from dnn_jax import interrupts
from dnn_jax import losses
from dnn_jax import models
from dnn_jax import optimizer
from dnn_jax import runtimes
from dnn_jax import state as state_lib
from dnn_jax import workdir as layout
from dnn_jax import xla_flags
from dnn_jax.errors import DataError, RunError, TrainingInterrupted, UserError
from dnn_jax.metric_writers import MetricWriter, duration, log

# Random stream of augmentation, derived from config.seed (state.INIT_STREAM: init's).
_AUGMENT_STREAM = 2


class NonFiniteLossError(RunError):
  pass


def _check_writable(workdir: str) -> None:
  probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
  if files.is_remote(workdir):  # The workers of a pod share the bucket (and maybe pids).
    probe += f"_{socket.gethostname()}"
  try:
    files.makedirs(workdir)
    files.put(probe, "ok")
  except OSError as e:
    raise UserError(f"--workdir {workdir} is not writable ({e.strerror or e})") from e
  finally:
    if files.exists(probe):
      files.remove(probe)


def _close_after_failure(*closers) -> None:
  """Closes what a failed run holds without hiding why it failed: a full disk that stopped a
  save also fails the flush of the metric writers."""
  for close in closers:
    try:
      close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("closing after a failed run: %s", e)


class _StopSignals:
  """Turns SIGTERM, SIGINT and SIGHUP (a dropped terminal or ssh session) into a flag the
  training loop checks after every step."""

  def __init__(self):
    self.signum = interrupts.received() or None  # One whose exception was lost at start-up.
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    self.signum = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def agreed(self, step: int, at_sync_point: bool) -> int:
    """The signal to stop on, or 0. With several processes, all must stop at the same step
    (the checkpoint is written collectively). There, JAX's coordination service catches
    SIGTERM itself and names a step at which every process stops (preemption sync point);
    other signals are shared at log steps. One process checks after every step."""
    if jax.process_count() == 1:
      return self.signum or 0
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(step):
      return signal.SIGTERM
    if not at_sync_point:
      return 0
    return int(np.max(multihost_utils.process_allgather(np.int32(self.signum or 0))))


def train_step(state: state_lib.TrainState, images_BxHxWxC: jax.Array, labels_B: jax.Array, *,
               lam_LxG: np.ndarray, seed: int, data_config, loss_config,
               log_group_grad_norms: bool = False):
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), state.step)
  images = input_pipeline.augment(images_BxHxWxC, key, data_config.augment,
                                  data_config.crop_padding)

  weights_LxG = jnp.asarray(lam_LxG)
  if loss_config.adaptive_weight > 0:
    weights_LxG = losses.adaptive_lambda(weights_LxG, state.loss_ema, loss_config.adaptive_weight)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                     images, train=True, mutable=["batch_stats"])
    loss, ce_LxG = losses.joint_loss(
        logits, labels_B, weights_LxG, loss_config.label_smoothing,
        loss_config.distill_weight, loss_config.distill_temperature,
        loss_config.distill_teacher, loss_config.boosted)
    return loss, (logits, ce_LxG, updates["batch_stats"])

  (loss, (logits, ce_LxG, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  factors = losses.gradient_factors(grads, lam_LxG, loss_config.head_gradient,
                                    loss_config.trunk_gradient)
  if factors:
    grads, _ = losses.scale_by_factors(factors).update(grads, None)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if loss_config.adaptive_weight > 0:
    decay = loss_config.adaptive_decay
    new_state = new_state.replace(loss_ema=decay * state.loss_ema + (1 - decay) * ce_LxG)
  correct_LxG = jnp.mean(jnp.argmax(logits, -1) == labels_B[:, None, None], axis=0)
  metrics = {"loss": loss, "full_exit_ce": ce_LxG[-1, -1],
             "full_exit_accuracy": correct_LxG[-1, -1], "mean_exit_accuracy": correct_LxG.mean()}
  if log_group_grad_norms:  # The gradient as the optimizer receives it (after rescaling).
    for kind, norms_G in losses.group_gradient_norms(grads, lam_LxG.shape[1]).items():
      metrics.update({f"grad_norm_{kind}_g{j + 1}": n for j, n in enumerate(norms_G)})
  return new_state, metrics


def _check_same_network(workdir: str, mngr, config, dataset) -> None:
  """A resume must build the network the checkpoint holds: else a config error naming the
  fields (not a corrupt checkpoint, and not a silent switch to another network)."""
  try:
    saved = checkpointing.saved_at(mngr, mngr.latest_step())
  except Exception:  # Unreadable metadata: restore_latest_good moves the checkpoint aside.
    return
  diffs = checkpointing.network_differences(saved, config, dataset.class_names,
                                            dataset.train.images.shape[-1])
  if diffs:
    raise UserError(f"checkpoint step {saved.step} in {layout.checkpoints(workdir)} "
                    f"holds a different network: {'; '.join(diffs)}. Resume with the saved "
                    "config or train in a new --workdir")


def num_train_steps(config, num_examples: int) -> tuple[int, int]:
  spe = input_pipeline.steps_per_epoch(num_examples, config.train.batch_size)
  total = config.train.num_steps or int(round(config.train.num_epochs * spe))
  return spe, max(total, 1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from DIR/checkpoints if present), then writes DIR/eval/grid.json of the
  final state; returns the train summary (DIR/train_summary.json) with the grid as "eval"."""
  config_validation.validate(config)
  _check_writable(workdir)
  with layout.training_lock(workdir, take=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  dataset = input_pipeline.load_dataset(config.data, workdir)
  if len(dataset.train) < config.train.batch_size:
    raise DataError(f"config.train.batch_size: {config.train.batch_size} is more than the "
                    f"{len(dataset.train)} training examples")
  setup = state_lib.make_setup(config, dataset.num_classes, dataset.train.images.shape[-1])
  spe, total_steps = num_train_steps(config, len(dataset.train))
  depths, widths = models.grid_shape(config.model)
  lam = losses.lambda_grid(config.loss, depths, widths)
  schedule = optimizer.learning_rate_schedule(config.train, spe, total_steps)
  tx = optimizer.create_optimizer(config.train, schedule)
  image_shape = dataset.train.images.shape[1:]

  init_fn, init_key, abstract = state_lib.abstract_state(
      setup, tx, image_shape, config.seed, track_exit_losses=config.loss.adaptive_weight > 0)
  mngr = checkpointing.manager(workdir, config.checkpoint)
  if mngr.latest_step() is not None:
    _check_same_network(workdir, mngr, config, dataset)
    state = checkpointing.restore_latest_good(mngr, abstract, workdir, log)
    log(f"Resumed from {layout.checkpoints(workdir)} at step {int(state.step)}")
  else:
    aside = layout.corrupt_checkpoints(workdir)
    if files.isdir(aside) and files.listdir(aside):
      raise UserError(f"{workdir} has no readable checkpoint, only unreadable ones in {aside}; "
                      "move that folder away to train from scratch in this workdir")
    state = init_fn(init_key)
  n_params = models.count_params(state.params, config.model)
  log(f"DNNet: {depths} depths x {widths} widths = {depths * widths} exits, "
      f"{n_params:,} parameters; {len(dataset.train):,} train / {len(dataset.eval):,} "
      f"{dataset.eval_split} examples; {jax.device_count()} device(s); "
      f"{total_steps} steps of batch {config.train.batch_size}")

  step_fn = jax.jit(
      functools.partial(train_step, lam_LxG=lam, seed=config.seed, data_config=config.data,
                        loss_config=config.loss,
                        log_group_grad_norms=config.train.log_group_grad_norms),
      in_shardings=(setup.replicated, setup.batch_sharding, setup.batch_sharding),
      out_shardings=(setup.replicated, setup.replicated), donate_argnums=0)
  batches = input_pipeline.TrainBatches(dataset.train, config.train.batch_size, config.seed,
                                        setup.batch_sharding)
  start_step = int(jax.device_get(state.step))
  writer = MetricWriter(workdir, start_step)
  pending: list[dict] = []
  t_start = t_window = time.time()
  window_start = start_step

  def flush(step: int) -> None:
    nonlocal t_window, window_start
    if not pending:
      return
    fetched = jax.device_get(pending)
    pending.clear()
    means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
    bad = [i for i, m in enumerate(fetched) if not np.isfinite(m["loss"])]
    if bad:
      raise NonFiniteLossError(
          f"non-finite loss at step {step - len(fetched) + bad[0] + 1}; " + (
              f"the last good checkpoint is step {mngr.latest_step()}"
              if mngr.latest_step() is not None else "no checkpoint was saved yet"))
    now = time.time()
    images_per_s = (step - window_start) * config.train.batch_size / max(now - t_window, 1e-9)
    eta = (total_steps - step) * config.train.batch_size / max(images_per_s, 1e-9)
    means.update(learning_rate=float(schedule(step - 1)), images_per_second=images_per_s)
    writer.write_scalars(step, means)
    log(f"step {step}/{total_steps}  loss {means['loss']:.4f}  full-exit acc "
        f"{means['full_exit_accuracy']:.3f}  lr {means['learning_rate']:.4f}  "
        f"{images_per_s:.0f} img/s  ETA {duration(eta)}")
    t_window, window_start = now, step

  def save(step: int) -> None:
    writer.sync()  # A gs:// DIR's metrics up to `step`, before the checkpoint a resume reads.
    try:
      checkpointing.save(mngr, state, config, dataset.class_names, image_shape)
      mngr.wait_until_finished()
    except Exception as e:  # OSError; Orbax's ValueError('RESOURCE_EXHAUSTED: ...').
      raise RunError(f"could not write the checkpoint of step {step} to "
                     f"{layout.checkpoints(workdir)} ({checkpointing.write_error(e)}); the "
                     f"previous one, step {mngr.latest_step()}, is intact") from e

  with _StopSignals() as stop:
    try:
      for step, images, labels in batches.iterate(start_step, total_steps):
        state, metrics = step_fn(state, images, labels)
        pending.append(metrics)
        done = step + 1
        if done % config.train.log_every_steps == 0 or done == total_steps:
          flush(done)
        signum = stop.agreed(done, done % config.train.log_every_steps == 0)
        if signum and done < total_steps:
          flush(done)
          save(done)
          name = signal.Signals(signum).name
          raise TrainingInterrupted(f"stopped by {name} at step {done}; checkpoint saved in "
                                    f"{layout.checkpoints(workdir)}; "
                                    "rerun the same command to resume", int(signum))
        if done % config.checkpoint.every_steps == 0 and done < total_steps:
          flush(done)
          save(done)
        if config.train.eval_every_steps and done % config.train.eval_every_steps == 0:
          grid = setup.accuracy_grid(state_lib.variables(state), dataset.eval,
                                     config.eval.batch_size)
          writer.write_scalars(done, {"eval_full_exit_accuracy": grid[-1, -1],
                                      "eval_mean_exit_accuracy": grid.mean()})
          log(f"eval at step {done}: full exit {grid[-1, -1]:.4f}, grid mean {grid.mean():.4f}")
      flush(total_steps)
      if mngr.latest_step() != int(jax.device_get(state.step)):
        save(total_steps)
      mngr.wait_until_finished()
    except BaseException:
      _close_after_failure(writer.close, mngr.close)
      raise
  writer.close()
  mngr.close()

  wall = time.time() - t_start
  summary = {"final_step": int(jax.device_get(state.step)), "wall_seconds": round(wall, 2),
             "resumed_from_step": start_step,
             "params_sha256": state_lib.params_sha256(state.params),
             "num_params": n_params, "devices": jax.device_count(),
             "processes": jax.process_count(), "backend": jax.default_backend(),
             "xla_flags": xla_flags.current(), "software": runtimes.software(),
             # On CPU the thread count changes XLA's summation order (README, Reproducibility).
             "host_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                          else os.cpu_count()}
  if jax.process_index() == 0:
    files.write_json(layout.train_summary(workdir), summary)
  log(f"Training done: step {summary['final_step']} in {duration(wall)}; "
      f"params sha256 {summary['params_sha256'][:16]}...")
  # The data and the final state are at hand: the grid needs no reload or restore.
  record = evaluate.grid_record(setup, state_lib.variables(state), dataset.eval,
                                dataset.eval_split, config.eval.batch_size,
                                summary["final_step"])
  evaluate.write_grid(workdir, record)
  return {**summary, "eval": record}


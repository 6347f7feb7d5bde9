"""Joint training of all exits in one jit-compiled, data-parallel step."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from dnn_jax import checkpointing
from dnn_jax import files
from dnn_jax import config_validation
from dnn_jax import input_pipeline
from dnn_jax import models
from dnn_jax import xla_flags
from dnn_jax.errors import DataError, RunError, TrainingInterrupted, UserError
from dnn_jax.metric_writers import MetricWriter

# Independent random streams derived from config.seed.
_INIT_STREAM, _AUGMENT_STREAM = 1, 2


class TrainState(train_state.TrainState):
  batch_stats: Any


class NonFiniteLossError(RunError):
  pass


def _check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UserError(f"--workdir {workdir} is not writable ({e.strerror or e})") from e


class _StopSignals:
  """Turns SIGTERM/SIGINT into a flag the training loop checks after every step."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
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


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def lambda_grid(loss_config, depths: int, widths: int) -> np.ndarray:
  """lambda(l, c) of the joint loss as a float32 depths x widths array."""
  scheme = loss_config.lambda_scheme
  lam = np.zeros((depths, widths), np.float32)
  if scheme == "uniform":
    lam[:] = 1.0
  elif scheme == "linear":  # Toward deeper and wider exits.
    lam[:] = np.outer(np.arange(1, depths + 1), np.arange(1, widths + 1)) / (depths * widths)
  elif scheme == "anchored":  # Uniform, and the full exit carries half of the total weight.
    lam[:] = 1.0
    lam[-1, -1] = depths * widths - 1
  elif scheme == "final":
    lam[-1, -1] = 1.0
  elif scheme == "full_width":
    lam[:, -1] = 1.0
  elif scheme == "full_depth":
    lam[-1, :] = 1.0
  elif scheme == "explicit":
    lam[:] = np.asarray(loss_config.lambda_grid, np.float32)
  else:
    raise ValueError(f"unknown lambda scheme {scheme!r}")
  return lam


def joint_loss(logits_BxLxGxK: jax.Array, labels_B: jax.Array, lam_LxG: jax.Array,
               label_smoothing: float = 0.0, distill_weight: float = 0.0,
               distill_temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Paper eq. 2: sum(lambda * L) / sum(lambda); also returns the cross-entropy grid.

  With `distill_weight` a > 0, every exit but the full one learns from
  (1 - a) * CE + a * T^2 * KL(full exit || exit) at temperature T, the full exit's
  prediction held fixed (in-place distillation, as in slimmable networks).
  """
  k = logits_BxLxGxK.shape[-1]
  logits = logits_BxLxGxK.astype(jnp.float32)
  targets_BxK = optax.smooth_labels(jax.nn.one_hot(labels_B, k), label_smoothing)
  ce_LxG = optax.softmax_cross_entropy(logits, targets_BxK[:, None, None, :]).mean(axis=0)
  per_exit_LxG = ce_LxG
  if distill_weight > 0:
    t = distill_temperature
    teacher_BxK = jax.lax.stop_gradient(jax.nn.softmax(logits[:, -1, -1] / t))
    kl_LxG = (t * t) * optax.kl_divergence(jax.nn.log_softmax(logits / t),
                                           teacher_BxK[:, None, None, :]).mean(axis=0)
    per_exit_LxG = ((1 - distill_weight) * ce_LxG + distill_weight * kl_LxG).at[-1, -1].set(
        ce_LxG[-1, -1])
  return jnp.sum(lam_LxG * per_exit_LxG) / jnp.sum(lam_LxG), ce_LxG


def head_gradient_scale(lam_LxG: np.ndarray) -> np.ndarray:
  """Per (depth, group) factor that turns a head group's gradient into the lambda-weighted
  *mean* over the exits that read it, instead of a 1 / sum(lambda)-scaled sum.

  Head group k of depth d feeds exits (d, c >= k) only, so under the joint loss its gradient
  is smaller by sum(lambda) / sum_{c >= k} lambda(d, c) (up to 56x for 7 x 8 exits) than the
  backbone's: heads learn far slower than in a plain network unless rescaled.
  """
  consumers_LxG = np.cumsum(lam_LxG[:, ::-1], axis=1)[:, ::-1]
  with np.errstate(divide="ignore"):
    scale = np.where(consumers_LxG > 0, lam_LxG.sum() / consumers_LxG, 0.0)
  return scale.astype(np.float32)


def _scale_head_grads(grads, scale_LxG: np.ndarray):
  grads = dict(grads)
  for d in range(scale_LxG.shape[0]):
    head = dict(grads[f"exit_{d + 1}"])
    head["kernel"] = head["kernel"] * scale_LxG[d][:, None, None]
    head["bias"] = head["bias"] * scale_LxG[d][:, None]
    grads[f"exit_{d + 1}"] = head
  return grads


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


def create_optimizer(train_config, schedule) -> optax.GradientTransformation:
  # Weight decay on conv and head kernels only, not on BN scales or biases.
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)
  return optax.chain(
      optax.add_decayed_weights(train_config.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=train_config.momentum or None,
                nesterov=train_config.nesterov and train_config.momentum > 0))


def init_state(model: models.DNNet, tx, key: jax.Array, image_shape) -> TrainState:
  variables = model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.uint8), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables["batch_stats"])


def train_step(state: TrainState, images_BxHxWxC: jax.Array, labels_B: jax.Array, *,
               lam_LxG: np.ndarray, seed: int, data_config, loss_config):
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), _AUGMENT_STREAM), state.step)
  images = input_pipeline.augment(images_BxHxWxC, key, data_config.augment,
                                  data_config.crop_padding)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                     images, train=True, mutable=["batch_stats"])
    loss, ce_LxG = joint_loss(logits, labels_B, jnp.asarray(lam_LxG), loss_config.label_smoothing,
                              loss_config.distill_weight, loss_config.distill_temperature)
    return loss, (logits, ce_LxG, updates["batch_stats"])

  (loss, (logits, ce_LxG, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params)
  if loss_config.head_gradient == "mean":
    grads = _scale_head_grads(grads, head_gradient_scale(lam_LxG))
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  correct_LxG = jnp.mean(jnp.argmax(logits, -1) == labels_B[:, None, None], axis=0)
  metrics = {"loss": loss, "full_exit_ce": ce_LxG[-1, -1],
             "full_exit_accuracy": correct_LxG[-1, -1], "mean_exit_accuracy": correct_LxG.mean()}
  return state, metrics


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


def abstract_state(setup: Setup, tx, image_shape, seed: int):
  """Shapes, dtypes and shardings of the train state: init and restore target."""
  init_fn = jax.jit(functools.partial(init_state, setup.model, tx, image_shape=image_shape),
                    out_shardings=setup.replicated)
  key = jax.random.fold_in(jax.random.key(seed), _INIT_STREAM)
  return init_fn, key, checkpointing.abstract_like(jax.eval_shape(init_fn, key),
                                                   setup.replicated)


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
    raise UserError(f"checkpoint step {saved.step} in {workdir}/{checkpointing.CHECKPOINT_DIR} "
                    f"holds a different network: {'; '.join(diffs)}. Resume with the saved "
                    "config or train in a new --workdir")


def num_train_steps(config, num_examples: int) -> tuple[int, int]:
  spe = input_pipeline.steps_per_epoch(num_examples, config.train.batch_size)
  total = config.train.num_steps or int(round(config.train.num_epochs * spe))
  return spe, max(total, 1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from DIR/checkpoints if present); returns the train summary."""
  config_validation.validate(config)
  _check_writable(workdir)
  dataset = input_pipeline.load_dataset(config.data, workdir)
  if len(dataset.train) < config.train.batch_size:
    raise DataError(f"config.train.batch_size: {config.train.batch_size} is more than the "
                    f"{len(dataset.train)} training examples")
  setup = make_setup(config, dataset.num_classes, dataset.train.images.shape[-1])
  spe, total_steps = num_train_steps(config, len(dataset.train))
  depths, widths = models.grid_shape(config.model)
  lam = lambda_grid(config.loss, depths, widths)
  schedule = learning_rate_schedule(config.train, spe, total_steps)
  tx = create_optimizer(config.train, schedule)
  image_shape = dataset.train.images.shape[1:]

  init_fn, init_key, abstract = abstract_state(setup, tx, image_shape, config.seed)
  mngr = checkpointing.manager(workdir, config.checkpoint)
  if mngr.latest_step() is not None:
    _check_same_network(workdir, mngr, config, dataset)
    state = checkpointing.restore_latest_good(mngr, abstract, workdir, log)
    log(f"Resumed from {workdir}/{checkpointing.CHECKPOINT_DIR} at step {int(state.step)}")
  else:
    aside = os.path.join(workdir, checkpointing.CORRUPT_DIR)
    if os.path.isdir(aside) and os.listdir(aside):
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
                        loss_config=config.loss),
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
        f"{images_per_s:.0f} img/s  ETA {_duration(eta)}")
    t_window, window_start = now, step

  def save(step: int) -> None:
    try:
      checkpointing.save(mngr, state, config, dataset.class_names, image_shape)
      mngr.wait_until_finished()
    except OSError as e:
      raise RunError(f"could not write the checkpoint of step {step} to "
                     f"{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)} "
                     f"({e.strerror or e}); the previous one, step {mngr.latest_step()}, "
                     "is intact") from e

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
                                    f"{os.path.join(workdir, checkpointing.CHECKPOINT_DIR)}; "
                                    "rerun the same command to resume", int(signum))
        if done % config.checkpoint.every_steps == 0 and done < total_steps:
          flush(done)
          save(done)
        if config.train.eval_every_steps and done % config.train.eval_every_steps == 0:
          grid = setup.accuracy_grid(variables(state), dataset.eval, config.eval.batch_size)
          writer.write_scalars(done, {"eval_full_exit_accuracy": grid[-1, -1],
                                      "eval_mean_exit_accuracy": grid.mean()})
          log(f"eval at step {done}: full exit {grid[-1, -1]:.4f}, grid mean {grid.mean():.4f}")
      flush(total_steps)
      if mngr.latest_step() != int(jax.device_get(state.step)):
        save(total_steps)
      mngr.wait_until_finished()
    finally:
      writer.close()
      mngr.close()

  wall = time.time() - t_start
  summary = {"final_step": int(jax.device_get(state.step)), "wall_seconds": round(wall, 2),
             "resumed_from_step": start_step, "params_sha256": params_sha256(state.params),
             "num_params": n_params, "devices": jax.device_count(),
             "processes": jax.process_count(), "backend": jax.default_backend(),
             "xla_flags": xla_flags.current()}
  if jax.process_index() == 0:
    files.write_json(os.path.join(workdir, "train_summary.json"), summary)
  log(f"Training done: step {summary['final_step']} in {_duration(wall)}; "
      f"params sha256 {summary['params_sha256'][:16]}...")
  return summary




def _duration(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 \
      else f"{seconds // 60}m{seconds % 60:02d}s"

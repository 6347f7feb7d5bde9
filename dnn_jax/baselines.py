"""The paper's width baselines on a trained plain network (Fig. 4).

- Brute-force slicing: keep the first c groups' channels of every layer of a plain network
  trained at full width (`subnetwork.extract` on a non-causal model does exactly that; BN keeps
  the full network's statistics).
- Fine-tuning: brute-force slicing, then only the classifier is retrained on the frozen,
  sliced backbone's pooled features.
Full training (a plain network trained from scratch at each width) and the depth-only anytime
network are configs (configs/baseline.py), trained by the ordinary training loop.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dnn_jax import input_pipeline
from dnn_jax import models
from dnn_jax import subnetwork


def _correct_count(model, variables, images, labels, mask):
  logits = model.apply(variables, images)
  return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)


def subnet_accuracy(model: models.DNNet, variables: dict, split: input_pipeline.Split,
                    batch_size: int, batch_sharding) -> float:
  """Accuracy of a model that returns logits_BxK (e.g. an extracted sub-network)."""
  step = jax.jit(functools.partial(_correct_count, model))
  total = sum(int(step(variables, *b))
              for b in input_pipeline.eval_batches(split, batch_size, batch_sharding))
  return total / len(split)


def brute_force_accuracy(model: models.DNNet, variables: dict, split, batch_size: int,
                         batch_sharding, depth: int | None = None) -> np.ndarray:
  """Accuracy of every width's slice at `depth` (default: full depth)."""
  depth = depth or model.num_exits
  return np.array([subnet_accuracy(*subnetwork.extract(model, variables, depth, c), split,
                                   batch_size, batch_sharding)
                   for c in range(1, model.num_groups + 1)])


def pooled_features(model: models.DNNet, variables: dict, split, batch_size: int,
                    batch_sharding) -> np.ndarray:
  """Globally pooled output of the deepest block of `model` (the classifier's input): N x C."""
  last = models.block_name(model.num_exits - 1) if model.num_exits > 1 else models.STEM_BN

  def features(v, images):
    _, state = model.apply(v, images, capture_intermediates=lambda m, _: m.name == last,
                           mutable=["intermediates"])
    out = state["intermediates"][last]["__call__"][0]
    return jnp.mean(jax.nn.relu(out) if last == models.STEM_BN else out, axis=(1, 2))

  fn = jax.jit(features)
  chunks = []
  for images, _, mask in input_pipeline.eval_batches(split, batch_size, batch_sharding):
    chunks.append(np.asarray(fn(variables, images))[np.asarray(mask)])
  return np.concatenate(chunks)


def fit_classifier(features_NxC: np.ndarray, labels_N: np.ndarray, kernel_GxDxK, bias_GxK, *,
                   epochs: int = 30, batch_size: int = 256, learning_rate: float = 0.05,
                   weight_decay: float = 5e-4, seed: int = 0):
  """Retrains an exit head (per-group maps, summed) on fixed features; returns (kernel, bias).
  An untied head's kernel (G x G x D x K) starts from its widest width's map and bias."""
  if np.ndim(kernel_GxDxK) == 4:
    kernel_GxDxK, bias = kernel_GxDxK[-1], jnp.asarray(bias_GxK)[-1]
  else:
    bias = jnp.asarray(bias_GxK).sum(0)  # Summed per-group biases act as one.
  g, d, k = kernel_GxDxK.shape
  params = {"kernel": jnp.asarray(kernel_GxDxK).reshape(g * d, k), "bias": bias}
  steps_per_epoch = max(len(labels_N) // batch_size, 1)
  tx = optax.chain(optax.add_decayed_weights(weight_decay, mask={"kernel": True, "bias": False}),
                   optax.sgd(optax.cosine_decay_schedule(learning_rate,
                                                         epochs * steps_per_epoch), 0.9))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss(p):
      return optax.softmax_cross_entropy_with_integer_labels(x @ p["kernel"] + p["bias"],
                                                             y).mean()
    grads = jax.grad(loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  x_all, y_all = jnp.asarray(features_NxC), jnp.asarray(labels_N)
  for epoch in range(epochs):
    perm = np.random.default_rng([seed, epoch]).permutation(len(labels_N))
    for i in range(steps_per_epoch):
      idx = perm[i * batch_size:(i + 1) * batch_size]
      params, opt_state = step(params, opt_state, x_all[idx], y_all[idx])
  return params


def fine_tune_accuracy(model: models.DNNet, variables: dict, train_split, eval_split,
                       batch_size: int, batch_sharding, *, epochs: int = 30, seed: int = 0,
                       progress=None) -> np.ndarray:
  """Per width at full depth: slice, retrain the classifier on frozen features, evaluate."""
  depth = model.num_exits
  accuracies = []
  for c in range(1, model.num_groups + 1):
    _, sub_vars = subnetwork.extract(model, variables, depth, c)
    backbone = subnetwork.subnetwork_model(model, depth, c)  # Same weights, all its exits.
    head = sub_vars["params"][models.exit_name(depth)]
    full_vars = subnetwork.slice_variables(variables, model.num_groups, depth, c)
    train_x = pooled_features(backbone, full_vars, train_split, batch_size, batch_sharding)
    eval_x = pooled_features(backbone, full_vars, eval_split, batch_size, batch_sharding)
    p = fit_classifier(train_x, train_split.labels, head["kernel"], head["bias"], epochs=epochs,
                       seed=seed)
    predictions = np.argmax(eval_x @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), -1)
    accuracies.append(float(np.mean(predictions == eval_split.labels)))
    if progress:
      progress(f"fine-tuning: width {c}/{model.num_groups}: {accuracies[-1]:.4f}")
  return np.array(accuracies)

"""Anytime refinement: grow a prediction from sub-network (d, c) without redoing finished work.

The network is causal in both directions, so widening from c to c' computes only groups
c+1..c' of each layer (reading the stored activations of groups 1..c), and deepening from d to
d' continues from the stored activation of exit d. Each step is one jit-compiled call.
A shared head's logits grow by the new groups' partial logits; an untied head's
(model.exit_head='untied') are computed afresh from the stored exit activation (one small
matrix product).

  refiner = Refiner(model, variables, images)
  logits = refiner.refine(4, 4)    # D4W4
  logits = refiner.refine(4, 10)   # widen: only groups 5..10 of the 3 blocks are computed
  logits = refiner.refine(12, 10)  # deepen: blocks 4..11 at width 10
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dnn_jax import models
from dnn_jax.subnetwork import subnet_id


def _conv(x, kernel, c0, c1, cpg_in, cpg_out, stride, dtype, grouped_input=True):
  """Output groups [c0, c1) of a causal conv, reading input groups < c1 only."""
  cin = x.shape[-1] if not grouped_input else c1 * cpg_in
  k = kernel[:, :, :cin, c0 * cpg_out:c1 * cpg_out]
  # Masked taps are zero in trained weights; masking keeps any weights exact.
  mask = models.group_mask(cin, c1 * cpg_out, c1, grouped_input=grouped_input)
  k = k * jnp.asarray(mask[:, c0 * cpg_out:], k.dtype)
  return models.conv(x[..., :cin], k, stride, dtype)


def _bn(y, params, stats, c0, c1, cpg, dtype):
  """The network's BatchNorm (inference) on channels of groups [c0, c1)."""
  sl = slice(c0 * cpg, c1 * cpg)
  return models.batch_norm(False, 0.9, dtype, "bn").apply(
      {"params": {"scale": params["scale"][sl], "bias": params["bias"][sl]},
       "batch_stats": {"mean": stats["mean"][sl], "var": stats["var"][sl]}}, y)


def _head_sum(x_new, params, c0, c1):
  """Sum of the partial logits of groups [c0, c1) at one exit: B x K; None for an untied
  head, whose logits are not a running sum (`_untied_logits`)."""
  if models.is_untied_head(params):
    return None
  return models.partial_logits(x_new, params["kernel"][c0:c1], params["bias"][c0:c1]).sum(1)


def _untied_logits(params, act_BxHxWxC, width):
  """Width `width`'s logits at one exit of an untied head, from the activation of its groups."""
  kernel = params["kernel"][width - 1, :width]
  zeros = jnp.zeros((width, kernel.shape[-1]), kernel.dtype)
  return models.partial_logits(act_BxHxWxC, kernel, zeros).sum(1) + params["bias"][width - 1]


class _Steps:
  """The refinement steps of one model, as pure functions of (variables, images, state)."""

  def __init__(self, model: models.DNNet):
    self.model = model
    self.blocks = models.block_layout(model.channels_per_group, model.blocks_per_stage,
                                      model.shortcut)
    self.exit_cpg = models.exit_channels_per_group(model.channels_per_group,
                                                   model.blocks_per_stage)

  def _stem(self, v, x, c0, c1):
    p, s, dt = v["params"], v["batch_stats"], self.model.dtype
    cpg = self.exit_cpg[0]
    y = _conv(x, p[models.STEM]["kernel"], c0, c1, None, cpg, 1, dt, grouped_input=False)
    return jax.nn.relu(_bn(y, p[models.STEM_BN], s[models.STEM_BN], c0, c1, cpg, dt))

  def _block(self, v, blk: models.BlockLayout, x_in, mid_old, c0, c1):
    """Groups [c0, c1) of one block given its input's groups < c1; returns (mid, out) new."""
    p, s, dt = v["params"][blk.name], v["batch_stats"][blk.name], self.model.dtype
    y1 = jax.nn.relu(_bn(_conv(x_in, p["conv1"]["kernel"], c0, c1, blk.cpg_in, blk.cpg_out,
                               blk.stride, dt), p["bn1"], s["bn1"], c0, c1, blk.cpg_out, dt))
    mid = y1 if mid_old is None else jnp.concatenate([mid_old, y1], -1)
    y2 = _bn(_conv(mid, p["conv2"]["kernel"], c0, c1, blk.cpg_out, blk.cpg_out, 1, dt),
             p["bn2"], s["bn2"], c0, c1, blk.cpg_out, dt)
    if blk.shortcut == "projection":
      sc = _bn(_conv(x_in, p["proj"]["kernel"], c0, c1, blk.cpg_in, blk.cpg_out, blk.stride,
                     dt), p["proj_bn"], s["proj_bn"], c0, c1, blk.cpg_out, dt)
    elif blk.shortcut == "pad":
      sc = models.group_pad_shortcut(x_in[..., c0 * blk.cpg_in:c1 * blk.cpg_in],
                                     (c1 - c0) * blk.cpg_out, c1 - c0, blk.stride)
    else:
      sc = x_in[..., c0 * blk.cpg_in:c1 * blk.cpg_in]
    return y1, jax.nn.relu(y2 + sc)

  def _widen(self, v, x, acts, mids, sums, depth, c0, c1):
    acts, mids, sums = list(acts), list(mids), list(sums)
    new = self._stem(v, x, c0, c1)
    for i in range(depth):
      if i > 0:
        blk = self.blocks[i - 1]
        y1, new = self._block(v, blk, acts[i - 1], mids[i - 1], c0, c1)
        mids[i - 1] = jnp.concatenate([mids[i - 1], y1], -1)
      acts[i] = jnp.concatenate([acts[i], new], -1)
      part = _head_sum(new, v["params"][models.exit_name(i + 1)], c0, c1)
      sums[i] = None if part is None else sums[i] + part
    return acts, mids, sums

  def _deepen(self, v, x, acts, mids, d0, d1, width):
    acts, mids = list(acts), list(mids)
    sums = []
    for i in range(d0, d1):
      if i == 0:
        out = self._stem(v, x, 0, width)
      else:
        y1, out = self._block(v, self.blocks[i - 1], acts[i - 1], None, 0, width)
        mids.append(y1)
      acts.append(out)
      sums.append(_head_sum(out, v["params"][models.exit_name(i + 1)], 0, width))
    return acts, mids, sums



@functools.lru_cache(maxsize=16)
def _programs(model: models.DNNet):
  """Jitted (widen, deepen) of a model, shared by every Refiner of an equal model.

  Weights are arguments, not closed-over constants, so XLA need not fold them in.
  """
  steps = _Steps(model)
  return (jax.jit(steps._widen, static_argnums=(5, 6, 7)),
          jax.jit(steps._deepen, static_argnums=(4, 5, 6)),
          jax.jit(_untied_logits, static_argnums=2))


class Refiner:
  """Holds the activations of the current (depth, width) and grows them on request."""

  def __init__(self, model: models.DNNet, variables: dict, images_BxHxWxC):
    if not model.causal:
      raise ValueError("refinement needs a channel-causal model (model.causal=True)")
    self.model = model
    self.variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    self.images = (jnp.asarray(images_BxHxWxC, jnp.float32) - jnp.asarray(model.input_mean)
                   ) / jnp.asarray(model.input_std)
    self._widen_fn, self._deepen_fn, self._untied_fn = _programs(model)
    self.depth = self.width = 0
    self.acts: list = []  # exit activations, groups < width
    self.mids: list = []  # per block: relu(bn1(conv1)), groups < width
    self.sums: list = []  # per exit: summed partial logits of groups < width

  def refine(self, depth: int, width: int) -> jax.Array:
    """Logits_BxK of sub-network (depth, width); neither may shrink along the path."""
    if not (1 <= depth <= self.model.num_exits and 1 <= width <= self.model.num_groups):
      raise ValueError(f"{subnet_id(depth, width)} is outside the grid of {self.model.num_exits} "
                       f"depths x {self.model.num_groups} widths")
    if depth < self.depth or width < self.width:
      raise ValueError(f"cannot refine from {subnet_id(self.depth, self.width)} to "
                       f"{subnet_id(depth, width)}: depth and width can only grow")
    if width > self.width and self.depth:
      self.acts, self.mids, self.sums = self._widen_fn(
          self.variables, self.images, self.acts, self.mids, self.sums, self.depth, self.width,
          width)
    self.width = width
    if depth > self.depth:
      self.acts, self.mids, sums = self._deepen_fn(self.variables, self.images, self.acts,
                                                   self.mids, self.depth, depth, width)
      self.sums = list(self.sums) + list(sums)
    self.depth = depth
    z = self.sums[depth - 1]
    if z is None:  # Untied head.
      z = self._untied_fn(self.variables["params"][models.exit_name(depth)],
                          self.acts[depth - 1], width)
    return z / width if self.model.head_reduction == "mean" else z

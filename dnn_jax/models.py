"""Channel-causal doubly nested ResNet (DNNet) in Flax Linen.

Every layer's channels are split into `num_groups` ordered groups; group i of stage s
holds channels [i * cpg_s, (i + 1) * cpg_s). A channel-causal conv computes output
group i only from input groups 1..i (a block-lower-triangular mask on the kernel's
(C_in, C_out) axes). With an exit after the stem and after every residual block, and a
per-group classifier whose partial logits are summed cumulatively over groups, one
forward pass yields the logits of every (depth, width) sub-network: `logits_BxLxGxK`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HEAD_REDUCTIONS = ("sum", "mean")
# model.exit_head: "shared" (the paper's: per-group maps summed cumulatively, so width c
# reuses widths < c's maps) | "untied" (every width its own map of its c groups).
EXIT_HEADS = ("shared", "untied")
SHORTCUTS = ("projection", "pad")
BN_EPSILON = 1e-5

# The parameter tree's top-level names, owned here: the stem conv and its BN feed exit 1;
# block i feeds exit i + 1; exit d is the head of depth d.
STEM, STEM_BN = "stem", "stem_bn"


def block_name(index: int) -> str:
  return f"block_{index}"


def exit_name(depth: int) -> str:
  return f"exit_{depth}"


def module_index(name: str) -> int | None:
  """i of `block_<i>` / `exit_<i>`; None for the stem."""
  kind, _, index = name.partition("_")
  return int(index) if kind in ("block", "exit") and index.isdigit() else None


def is_block(name: str) -> bool:
  return name.startswith("block_") and module_index(name) is not None


def is_exit(name: str) -> bool:
  return name.startswith("exit_") and module_index(name) is not None


def first_exit(name: str) -> int:
  """The shallowest exit (1-based depth) that reads the top-level module `name`."""
  if is_block(name):
    return module_index(name) + 1
  if is_exit(name):
    return module_index(name)
  return 1  # stem, stem_bn


def output_groups(names: Sequence[str], shape, num_groups: int) -> np.ndarray:
  """The width group of every element of parameter `names` (its path), as an int array that
  broadcasts against it: heads by their first axis (the group of a shared head's kernel
  G x D x K and bias G x K; the width of an untied head's kernel G x G x D x K and bias
  G x K); conv kernels (HWIO) and per-channel BN variables by output channel (last axis)."""
  if is_exit(names[0]):
    return np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
  return np.arange(shape[-1]) // (shape[-1] // num_groups)


def is_untied_head(exit_params) -> bool:
  """Whether an exit's parameters are an untied head's (kernel G x G x D x K)."""
  return np.ndim(exit_params["kernel"]) == 4


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Shape of residual block `index` (1-based): channels per group in and out, stride and
  shortcut kind (identity | projection | pad)."""
  index: int
  cpg_in: int
  cpg_out: int
  stride: int
  shortcut: str

  @property
  def name(self) -> str:
    return block_name(self.index)


def block_layout(channels_per_group: Sequence[int], blocks_per_stage: Sequence[int],
                 shortcut: str = "projection") -> list[BlockLayout]:
  """Every residual block in order: stride 2 at the first block of every stage but the first;
  a shortcut other than identity wherever the shape changes."""
  blocks, cpg_prev = [], channels_per_group[0]
  for stage, (cpg, n) in enumerate(zip(channels_per_group, blocks_per_stage)):
    for b in range(n):
      stride = 2 if (stage > 0 and b == 0) else 1
      kind = shortcut if (stride != 1 or cpg != cpg_prev) else "identity"
      blocks.append(BlockLayout(len(blocks) + 1, cpg_prev, cpg, stride, kind))
      cpg_prev = cpg
  return blocks


def exit_channels_per_group(channels_per_group: Sequence[int],
                            blocks_per_stage: Sequence[int]) -> list[int]:
  """Channels per group of the activation each exit (1..depths) reads."""
  return [channels_per_group[0]] + [b.cpg_out for b in block_layout(channels_per_group,
                                                                     blocks_per_stage)]


def group_mask(cin: int, cout: int, num_groups: int, *, grouped_input: bool = True,
               causal: bool = True) -> np.ndarray:
  """Bool (C_in, C_out) mask: True where output channel may read input channel."""
  if not causal or not grouped_input:
    return np.ones((cin, cout), bool)
  g_in = np.arange(cin) // (cin // num_groups)
  g_out = np.arange(cout) // (cout // num_groups)
  return g_in[:, None] <= g_out[None, :]


def conv_kernel_mask(layer: str, kernel_shape, num_groups: int, causal: bool = True
                     ) -> np.ndarray:
  """Bool (C_in, C_out) mask of an HWIO kernel of top-level module `layer`: the stem's groups
  all read the whole image; every other conv is channel-causal."""
  return group_mask(kernel_shape[2], kernel_shape[3], num_groups,
                    grouped_input=layer != STEM, causal=causal)


def masked_he_normal(mask: np.ndarray):
  """He-normal init using each output channel's *visible* fan-in; masked taps are zero."""

  def init(key, shape, dtype=jnp.float32):
    kh, kw, cin, cout = shape
    fan_in = kh * kw * mask.sum(axis=0)  # (C_out,)
    std = np.sqrt(2.0 / fan_in).astype(np.float32)
    w = jax.random.normal(key, shape, jnp.float32) * std
    return (w * mask).astype(dtype)

  return init


def _masked(kernel: jax.Array, mask: np.ndarray) -> jax.Array:
  """kernel * mask; on CPU behind an optimization barrier, which the gradient inherits.

  Without the barrier, XLA:CPU fuses the kernel-gradient convolution with the mask multiply
  that follows it, and such a fusion goes to YNNPACK whatever `xla_flags` asks for: its
  kernel gradients cost 3x Eigen's (BENCHMARKS.md). The barrier changes no value.
  """
  masked = kernel * jnp.asarray(mask, kernel.dtype)
  return jax.lax.optimization_barrier(masked) if jax.default_backend() == "cpu" else masked


def conv(x_BxHxWxC: jax.Array, kernel_HxWxIxO: jax.Array, strides: int = 1,
         dtype: Any = jnp.float32) -> jax.Array:
  """The network's convolution: SAME padding of a square odd kernel, NHWC / HWIO."""
  pad = kernel_HxWxIxO.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x_BxHxWxC.astype(dtype), kernel_HxWxIxO.astype(dtype), window_strides=(strides,) * 2,
      padding=((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def batch_norm(train: bool, momentum: float, dtype: Any, name: str, **kwargs) -> nn.BatchNorm:
  """The network's BatchNorm (per channel, so it respects group boundaries)."""
  return nn.BatchNorm(not train, momentum=momentum, epsilon=BN_EPSILON, dtype=dtype, name=name,
                      **kwargs)


def partial_logits(x_BxHxWxC: jax.Array, kernel_GxDxK: jax.Array, bias_GxK: jax.Array
                   ) -> jax.Array:
  """Per-group partial logits P_k = W_k f_k + b_k of an exit, f_k the pooled group k:
  B x G x K (G = the groups `kernel_GxDxK` holds)."""
  b, c = x_BxHxWxC.shape[0], x_BxHxWxC.shape[-1]
  g = kernel_GxDxK.shape[0]
  f_BxGxD = jnp.mean(x_BxHxWxC, axis=(1, 2)).reshape(b, g, c // g)
  return jnp.einsum("bgd,gdk->bgk", f_BxGxD.astype(jnp.float32), kernel_GxDxK) + bias_GxK


class CausalConv(nn.Module):
  """Conv whose output group i reads only input groups 1..i (no bias: BN follows)."""
  features: int
  kernel_size: int
  strides: int = 1
  num_groups: int = 1
  grouped_input: bool = True  # False for the image: every group sees all its channels.
  causal: bool = True
  apply_mask: bool = True  # False for inference on kernels already masked (exported nets).
  form: str = "masked"  # masked (one dense conv) | blocks:S (S convs over input prefixes)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    cin, k = x_BxHxWxC.shape[-1], self.kernel_size
    mask = group_mask(cin, self.features, self.num_groups,
                      grouped_input=self.grouped_input, causal=self.causal)
    kernel = self.param("kernel", masked_he_normal(mask), (k, k, cin, self.features))
    run = lambda x, w: conv(x, w, self.strides, self.dtype)
    if mask.all():
      return run(x_BxHxWxC, kernel)
    if self.form == "masked":
      # Multiplying by the mask in the forward pass also zeroes the masked taps' gradients,
      # so they stay exactly zero (weight decay keeps zero at zero).
      return run(x_BxHxWxC, _masked(kernel, mask) if self.apply_mask else kernel)
    # blocks:S -- output groups in S consecutive blocks; block j reads only the input groups
    # up to its last group, skipping the zero blocks above the diagonal that "masked" computes.
    g = self.num_groups
    bounds = np.linspace(0, g, int(self.form.split(":")[1]) + 1).round().astype(int)
    cpg_in, cpg_out = cin // g, self.features // g
    outs = []
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
      if g1 == g0:
        continue
      c_in, o0, o1 = g1 * cpg_in, g0 * cpg_out, g1 * cpg_out
      w = kernel[:, :, :c_in, o0:o1]
      if self.apply_mask:
        w = _masked(w, mask[:c_in, o0:o1])
      outs.append(run(x_BxHxWxC[..., :c_in], w))
    return jnp.concatenate(outs, axis=-1)


def group_pad_shortcut(x_BxHxWxC: jax.Array, features: int, num_groups: int,
                       strides: int) -> jax.Array:
  """Parameter-free shortcut: subsample, then zero-pad *each group* to its new width.

  Padding per group (not at the end of the channel axis) keeps old group k in new group k.
  """
  # Strided slices rather than x[:, ::s, ::s]: with a symbolic batch (exported programs) the
  # indexing form lowers to a dynamic gather, which IREE does not compile.
  x = jax.lax.slice_in_dim(x_BxHxWxC, 0, None, stride=strides, axis=1)
  x = jax.lax.slice_in_dim(x, 0, None, stride=strides, axis=2)
  cin = x.shape[-1] // num_groups
  extra = features // num_groups - cin
  # Group by group rather than through a B x H x W x G x C/G reshape, which becomes a dynamic
  # reshape under a symbolic batch (IREE does not compile it either).
  return jnp.concatenate(
      [jnp.pad(jax.lax.slice_in_dim(x, k * cin, (k + 1) * cin, axis=3),
               ((0, 0),) * 3 + ((0, extra),)) for k in range(num_groups)], axis=3)


class ResidualBlock(nn.Module):
  """Post-activation basic block (He et al. CIFAR ResNet) made channel-causal."""
  features: int
  strides: int
  num_groups: int
  causal: bool = True
  shortcut: str = "projection"
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  apply_mask: bool = True
  conv_form: str = "masked"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = lambda s, k, name: CausalConv(self.features, k, s, self.num_groups,
                                         causal=self.causal, apply_mask=self.apply_mask,
                                         form=self.conv_form, dtype=self.dtype, name=name)
    norm = lambda name, **kw: batch_norm(train, self.bn_momentum, self.dtype, name, **kw)
    y = nn.relu(norm("bn1")(conv(self.strides, 3, "conv1")(x)))
    y = conv(1, 3, "conv2")(y)
    y = norm("bn2", scale_init=(nn.initializers.zeros if self.zero_init_residual
                                else nn.initializers.ones))(y)
    if self.strides != 1 or x.shape[-1] != self.features:
      if self.shortcut == "projection":
        x = norm("proj_bn")(conv(self.strides, 1, "proj")(x))
      else:
        x = group_pad_shortcut(x, self.features, self.num_groups, self.strides)
    return nn.relu(y + x)


class ExitHead(nn.Module):
  """Output stage of one depth: logits_BxGxK where [:, c - 1] is the width-c sub-network's.

  Shared (the paper's): per-group linear maps, cumulative over groups,
  Z_c = sum_{k <= c} W_k f_k + b_k. Untied: width c has its own map of its c groups,
  Z_c = sum_{k <= c} U_{c,k} f_k + b_c (kernel G x G x D x K, block-lower-triangular in
  (c, k)). Either way divided by c when reduction == 'mean'.
  """
  num_groups: int
  num_classes: int
  reduction: str = "sum"
  dtype: Any = jnp.float32
  # True: only the widest logits, logits_BxK, as one dense map of the pooled features (no
  # cumulative sum, no indexing: a deployed sub-network's graph that IREE and LiteRT compile
  # with a dynamic batch; the same parameters and values).
  widest_only: bool = False
  untied: bool = False

  @nn.compact
  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    c, g, k = x_BxHxWxC.shape[-1], self.num_groups, self.num_classes
    if self.untied:
      kernel_GxGxDxK, bias_GxK = self._untied_params(c)
      if self.widest_only:
        z_BxK = _pooled(x_BxHxWxC) @ kernel_GxGxDxK[-1].reshape(c, k) + bias_GxK[-1]
        return z_BxK / g if self.reduction == "mean" else z_BxK
      f_BxGxD = _pooled(x_BxHxWxC).reshape(-1, g, c // g)
      mask = jnp.asarray(np.tril(np.ones((g, g), np.float32)))[:, :, None, None]
      z_BxGxK = jnp.einsum("bjd,cjdk->bck", f_BxGxD, kernel_GxGxDxK * mask) + bias_GxK
    else:
      # LeCun-normal over the full width's C inputs: the widest exit starts as a standard
      # dense classifier. (Zero init, as in big_vision, starves the backbone of gradient at
      # the start when the loss is spread over many exits: measured to learn far slower.)
      w_GxDxK = self.param("kernel", nn.initializers.normal(1.0 / np.sqrt(c)),
                           (g, c // g, k))
      b_GxK = self.param("bias", nn.initializers.zeros, (g, k))
      if self.widest_only:
        z_BxK = _pooled(x_BxHxWxC) @ w_GxDxK.reshape(c, k) + b_GxK.sum(axis=0)
        return z_BxK / g if self.reduction == "mean" else z_BxK
      z_BxGxK = jnp.cumsum(partial_logits(x_BxHxWxC, w_GxDxK, b_GxK), axis=1)
    if self.reduction == "mean":
      z_BxGxK = z_BxGxK / jnp.arange(1, g + 1, dtype=z_BxGxK.dtype)[None, :, None]
    return z_BxGxK

  def _untied_params(self, c: int):
    g, k = self.num_groups, self.num_classes

    def init(key, shape, dtype=jnp.float32):  # LeCun-normal over each width's own c*D inputs.
      std = 1.0 / np.sqrt(np.arange(1, g + 1) * (c // g))
      w = jax.random.normal(key, shape, jnp.float32) * std[:, None, None, None]
      return (w * np.tril(np.ones((g, g), np.float32))[:, :, None, None]).astype(dtype)

    return (self.param("kernel", init, (g, g, c // g, k)),
            self.param("bias", nn.initializers.zeros, (g, k)))


def _pooled(x_BxHxWxC: jax.Array) -> jax.Array:
  """Global average pooling, in float32: B x C."""
  return jnp.mean(x_BxHxWxC, axis=(1, 2)).astype(jnp.float32)


class DNNet(nn.Module):
  """Doubly nested ResNet: returns logits_BxLxGxK for all L depths and G widths.

  `depth` < the full number of exits builds only the first `depth` exits (the blocks
  they need and their heads): the depth-sliced sub-network. `only_last_exit` builds only the
  head of the deepest exit and returns its widest logits, logits_BxK: a deployable
  sub-network with no other exits.
  """
  num_classes: int
  num_groups: int
  channels_per_group: Sequence[int]  # per stage
  blocks_per_stage: Sequence[int]
  depth: int | None = None
  only_last_exit: bool = False
  causal: bool = True
  shortcut: str = "projection"
  head_reduction: str = "sum"
  exit_head: str = "shared"  # EXIT_HEADS
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  input_mean: Sequence[float] = (127.5,)
  input_std: Sequence[float] = (64.0,)
  apply_masks: bool = True  # False: kernels are already masked (see subnetwork.extract)
  conv_form: str = "masked"  # causal conv form, see CausalConv.form
  dtype: Any = jnp.float32

  @property
  def num_exits(self) -> int:
    return 1 + sum(self.blocks_per_stage)

  @nn.compact
  def __call__(self, images_BxHxWxC: jax.Array, train: bool = False) -> jax.Array:
    depth = self.num_exits if self.depth is None else self.depth
    g = self.num_groups
    x = (images_BxHxWxC.astype(jnp.float32) - jnp.asarray(self.input_mean)) / jnp.asarray(
        self.input_std)
    x = CausalConv(g * self.channels_per_group[0], 3, 1, g, grouped_input=False,
                   causal=self.causal, apply_mask=self.apply_masks, dtype=self.dtype,
                   name=STEM)(x)
    x = nn.relu(batch_norm(train, self.bn_momentum, self.dtype, STEM_BN)(x))
    head = lambda i: ExitHead(g, self.num_classes, self.head_reduction, self.dtype,
                              widest_only=self.only_last_exit,
                              untied=self.exit_head == "untied", name=exit_name(i))
    logits = [] if self.only_last_exit and depth > 1 else [head(1)(x)]
    for blk in block_layout(self.channels_per_group, self.blocks_per_stage, self.shortcut):
      if blk.index >= depth:
        break
      x = ResidualBlock(g * blk.cpg_out, blk.stride, g, self.causal, self.shortcut,
                        self.zero_init_residual, self.bn_momentum, self.apply_masks,
                        self.conv_form, self.dtype, name=blk.name)(x, train)
      if not self.only_last_exit or blk.index + 1 == depth:
        logits.append(head(blk.index + 1)(x))
    if self.only_last_exit:
      return logits[0]
    return jnp.stack(logits, axis=1)


# The causal conv form per backend: the fastest measured train step and forward pass, fixed per
# backend so that a run's numerics do not depend on the machine's load (BENCHMARKS.md, "Causal
# conv forms"; TPU not measured: masked keeps one dense conv, the MXU's best case). blocks:S,
# which skips the masked blocks' FLOPs, lost every comparison so far; it stays an option as
# the comparison to rerun on a new backend.
CONV_FORM_BY_BACKEND = {"cpu": "masked", "gpu": "masked", "tpu": "masked"}


def resolve_conv_form(form: str, backend: str | None = None) -> str:
  """The conv form to run: `form` itself, or for "auto" the backend's fastest measured form."""
  if form != "auto":
    return form
  return CONV_FORM_BY_BACKEND.get(backend or jax.default_backend(), "masked")


def create_model(model_config, num_classes: int, *, depth: int | None = None,
                 num_groups: int | None = None, input_mean=None, input_std=None) -> DNNet:
  """Builds the DNNet a config describes; `depth`/`num_groups` give a sliced sub-network."""
  return DNNet(
      num_classes=num_classes,
      num_groups=num_groups or model_config.num_groups,
      channels_per_group=channels_per_group(model_config),
      blocks_per_stage=tuple(model_config.blocks_per_stage),
      depth=depth,
      causal=model_config.causal,
      shortcut=model_config.shortcut,
      head_reduction=model_config.head_reduction,
      exit_head=model_config.exit_head,
      zero_init_residual=model_config.zero_init_residual,
      bn_momentum=model_config.bn_momentum,
      input_mean=tuple(input_mean) if input_mean is not None else (127.5,),
      input_std=tuple(input_std) if input_std is not None else (64.0,),
      conv_form=resolve_conv_form(model_config.conv_form),
      dtype=jnp.dtype(model_config.dtype))


def channels_per_group(model_config) -> tuple[int, ...]:
  """Channels per group of each stage (from `stage_channels` when that is set)."""
  if model_config.stage_channels:
    return tuple(c // model_config.num_groups for c in model_config.stage_channels)
  return tuple(model_config.channels_per_group)


def grid_shape(model_config) -> tuple[int, int]:
  """(depths, widths) of the exit grid a model config defines."""
  return 1 + sum(model_config.blocks_per_stage), model_config.num_groups


def kernel_masks(params, model_config) -> dict:
  """Bool masks (same tree as `params`) of the weights that can be non-zero."""
  g, causal = model_config.num_groups, model_config.causal

  def mask(path, leaf):
    names = [getattr(p, "key", str(p)) for p in path]
    if is_exit(names[0]):  # An untied head's kernel: width c reads groups 1..c.
      if leaf.ndim == 4:
        return np.broadcast_to(np.tril(np.ones(leaf.shape[:2], bool))[:, :, None, None],
                               leaf.shape)
    elif names[-1] == "kernel" and leaf.ndim == 4:
      m = conv_kernel_mask(names[0], leaf.shape, g, causal)
      return np.broadcast_to(m, leaf.shape)
    return np.ones(leaf.shape, bool)

  return jax.tree_util.tree_map_with_path(mask, params)


def count_params(params, model_config=None) -> int:
  """Number of parameters; with `model_config`, only those the causal masks keep."""
  if model_config is None:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
  return int(sum(m.sum() for m in jax.tree_util.tree_leaves(kernel_masks(params, model_config))))

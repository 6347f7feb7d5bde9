"""Exact slicing: sub-network (depth d, width c) as real, smaller arrays."""

from __future__ import annotations

import re

import jax

from dnn_jax import models


def _names(path) -> list[str]:
  return [getattr(p, "key", str(p)) for p in path]


def slice_variables(variables: dict, num_groups: int, depth: int, width: int, *,
                    only_last_exit: bool = False) -> dict:
  """Keeps blocks < depth, exits <= depth and, in every layer, the channels of groups 1..width.

  Works on any variable collection (params, batch_stats) of a full DNNet. With
  `only_last_exit`, keeps only the head of exit `depth` (for `subnetwork_model(...,
  only_last_exit=True)`).
  """
  if not 1 <= width <= num_groups:
    raise ValueError(f"width {width} is outside 1..{num_groups}")

  def keep(name: str) -> bool:
    if models.is_exit(name):
      return models.first_exit(name) == depth if only_last_exit else \
          models.first_exit(name) <= depth
    return models.first_exit(name) <= depth  # Blocks feeding exits up to `depth`; the stem.

  def cut(path, x):
    names = _names(path)
    top = names[0]
    if models.is_exit(top):
      # Shared kernel G x D x K, bias G x K; untied kernel G (widths) x G (groups) x D x K.
      return x[:width, :width] if x.ndim == 4 else x[:width]
    if names[-1] == "kernel" and x.ndim == 4:  # HWIO conv kernel
      cin = x.shape[2] if top == models.STEM else x.shape[2] * width // num_groups
      return x[:, :, :cin, :x.shape[3] * width // num_groups]
    return x[:x.shape[0] * width // num_groups]  # per-channel BN scale/bias/mean/var

  sliced = {}
  for collection, tree in variables.items():
    kept = {k: v for k, v in tree.items() if keep(k)}
    sliced[collection] = jax.tree_util.tree_map_with_path(cut, kept)
  return sliced


def subnetwork_model(full_model: models.DNNet, depth: int, width: int, *,
                     only_last_exit: bool = False) -> models.DNNet:
  """The standalone DNNet of sub-network (depth, width); its last exit is the (d, c) cell."""
  if not 1 <= depth <= full_model.num_exits:
    raise ValueError(f"depth {depth} is outside 1..{full_model.num_exits}")
  if not 1 <= width <= full_model.num_groups:
    raise ValueError(f"width {width} is outside 1..{full_model.num_groups}")
  return full_model.clone(depth=depth, num_groups=width, only_last_exit=only_last_exit)


def extract(full_model: models.DNNet, variables: dict, depth: int, width: int
            ) -> tuple[models.DNNet, dict]:
  """Deployable sub-network (depth, width): its model (logits_BxK) and its smaller variables.

  The causal masks are multiplied into the sliced kernels once, here, so the returned model
  skips the per-call mask multiply (and its temporary kernel copies).
  """
  model = subnetwork_model(full_model, depth, width, only_last_exit=True).clone(
      apply_masks=False)
  sliced = slice_variables(variables, full_model.num_groups, depth, width, only_last_exit=True)

  def premask(path, x):
    names = _names(path)
    if names[-1] == "kernel" and x.ndim == 4 and not models.is_exit(names[0]):
      return x * models.conv_kernel_mask(names[0], x.shape, width, full_model.causal).astype(
          x.dtype)
    return x

  sliced["params"] = jax.tree_util.tree_map_with_path(premask, sliced["params"])
  return model, sliced


def subnet_id(depth: int, width: int) -> str:
  return f"D{depth}W{width}"


def parse_subnet_id(text: str) -> tuple[int, int]:
  """'D14W12' -> (14, 12)."""
  match = re.fullmatch(r"[dD](\d+)[wW](\d+)", text.strip())
  if not match:
    raise ValueError(f"sub-network id {text!r} is not of the form D<depth>W<width>, e.g. D14W12")
  return int(match.group(1)), int(match.group(2))

"""Exact slicing: sub-network (depth d, width c) as real, smaller arrays."""

from __future__ import annotations

import jax

from dnn_jax import models


def _names(path) -> list[str]:
  return [getattr(p, "key", str(p)) for p in path]


def _index(name: str) -> int:
  return int(name.rsplit("_", 1)[1])


def slice_variables(variables: dict, num_groups: int, depth: int, width: int) -> dict:
  """Keeps blocks < depth, exits <= depth and, in every layer, the channels of groups 1..width.

  Works on any variable collection (params, batch_stats) of a full DNNet.
  """
  if not 1 <= width <= num_groups:
    raise ValueError(f"width {width} is outside 1..{num_groups}")

  def keep(name: str) -> bool:
    if name.startswith("block_"):
      return _index(name) < depth
    if name.startswith("exit_"):
      return _index(name) <= depth
    return True

  def cut(path, x):
    names = _names(path)
    top = names[0]
    if top.startswith("exit_"):
      return x[:width]  # kernel G x D x K, bias G x K
    if names[-1] == "kernel" and x.ndim == 4:  # HWIO conv kernel
      cin = x.shape[2] if top == "stem" else x.shape[2] * width // num_groups
      return x[:, :, :cin, :x.shape[3] * width // num_groups]
    return x[:x.shape[0] * width // num_groups]  # per-channel BN scale/bias/mean/var

  sliced = {}
  for collection, tree in variables.items():
    kept = {k: v for k, v in tree.items() if keep(k)}
    sliced[collection] = jax.tree_util.tree_map_with_path(cut, kept)
  return sliced


def subnetwork_model(full_model: models.DNNet, depth: int, width: int) -> models.DNNet:
  """The standalone DNNet of sub-network (depth, width); its last exit is the (d, c) cell."""
  if not 1 <= depth <= full_model.num_exits:
    raise ValueError(f"depth {depth} is outside 1..{full_model.num_exits}")
  return full_model.clone(depth=depth, num_groups=width)

"""An extracted sub-network (`subnetwork.extract`) as an ONNX graph, built with `onnx.helper`.

The graph is written from the sub-network's structure (stem, residual blocks, the last exit's
head) and its arrays, with every BatchNorm folded into the conv before it: images NHWC on the
0-255 scale in, logits out, the batch dimension dynamic. `export` checks it against the JAX
sub-network in onnxruntime before anything is written, so a divergence from `models.DNNet`
fails the export. (jax2onnx, which traces the JAX function instead, pins orbax-checkpoint
below the version this library needs, and its graphs need their shape annotations repaired
before onnxruntime loads them.)
"""

from __future__ import annotations

import numpy as np

from dnn_jax import models

OPSET = 17  # onnxruntime, and the ONNX runtimes on phones, run opset 17.
INPUT, OUTPUT = "images", "logits"


def build(model: models.DNNet, variables: dict, image_shape) -> "onnx.ModelProto":
  """The ONNX model of `model` (a `subnetwork.extract` model: premasked kernels, only the
  last exit) with `variables`; `image_shape` = (H, W, C)."""
  import onnx
  from onnx import helper, numpy_helper

  params, stats = variables["params"], variables["batch_stats"]
  nodes, inits = [], []
  counter = iter(range(10**6))

  def const(array, name) -> str:
    name = f"{name}_{next(counter)}"
    inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
    return name

  def ints(values, name) -> str:
    name = f"{name}_{next(counter)}"
    inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name

  def op(kind, inputs, **attrs) -> str:
    out = f"{kind.lower()}_{next(counter)}"
    nodes.append(helper.make_node(kind, inputs, [out], **attrs))
    return out

  def conv_bn(x, conv_params, bn_params, bn_stats, stride, name) -> str:
    kernel = np.asarray(conv_params["kernel"], np.float32)  # HWIO, masks already applied
    scale = np.asarray(bn_params["scale"]) / np.sqrt(np.asarray(bn_stats["var"]) +
                                                     models.BN_EPSILON)
    weight = kernel.transpose(3, 2, 0, 1) * scale[:, None, None, None]  # OIHW
    bias = np.asarray(bn_params["bias"]) - np.asarray(bn_stats["mean"]) * scale
    pad = kernel.shape[0] // 2
    return op("Conv", [x, const(weight, name + "_w"), const(bias, name + "_b")],
              kernel_shape=list(kernel.shape[:2]), strides=[stride, stride],
              pads=[pad] * 4)

  h, w, c = image_shape
  x = op("Transpose", [INPUT], perm=[0, 3, 1, 2])  # NHWC -> NCHW
  mean = np.broadcast_to(np.asarray(model.input_mean, np.float32), (c,))
  std = np.broadcast_to(np.asarray(model.input_std, np.float32), (c,))
  x = op("Sub", [x, const(mean.reshape(1, c, 1, 1), "input_mean")])
  x = op("Div", [x, const(std.reshape(1, c, 1, 1), "input_std")])
  x = op("Relu", [conv_bn(x, params[models.STEM], params[models.STEM_BN],
                          stats[models.STEM_BN], 1, models.STEM)])
  g, depth = model.num_groups, model.depth or model.num_exits
  for blk in models.block_layout(model.channels_per_group, model.blocks_per_stage,
                                 model.shortcut):
    if blk.index >= depth:
      break
    p, s = params[blk.name], stats[blk.name]
    y = op("Relu", [conv_bn(x, p["conv1"], p["bn1"], s["bn1"], blk.stride, blk.name + "_1")])
    y = conv_bn(y, p["conv2"], p["bn2"], s["bn2"], 1, blk.name + "_2")
    if blk.shortcut == "projection":
      x = conv_bn(x, p["proj"], p["proj_bn"], s["proj_bn"], blk.stride, blk.name + "_proj")
    elif blk.shortcut == "pad":  # models.group_pad_shortcut: subsample, pad every group
      h, w = -(-h // blk.stride), -(-w // blk.stride)
      x = op("Slice", [x, ints([0, 0], "starts"), ints([2**62] * 2, "ends"),
                       ints([2, 3], "axes"), ints([blk.stride] * 2, "steps")])
      x = op("Reshape", [x, ints([0, g, blk.cpg_in, h, w], "shape")])  # 0: keep the batch
      pads = [0] * 10
      pads[7] = blk.cpg_out - blk.cpg_in  # the end of axis 2 (channels within a group)
      x = op("Pad", [x, ints(pads, "pads")])
      x = op("Reshape", [x, ints([0, g * blk.cpg_out, h, w], "shape")])
    if blk.stride != 1 and blk.shortcut != "pad":
      h, w = -(-h // blk.stride), -(-w // blk.stride)
    x = op("Relu", [op("Add", [y, x])])
  head = params[models.exit_name(depth)]
  kernel = np.asarray(head["kernel"], np.float32)  # G x D x K, or untied G x G x D x K
  if models.is_untied_head(head):  # The widest width's own map and bias.
    kernel, bias = kernel[-1], np.asarray(head["bias"], np.float32)[-1]
  else:
    bias = np.asarray(head["bias"], np.float32).sum(axis=0)
  weight = kernel.reshape(-1, kernel.shape[-1])
  if model.head_reduction == "mean":
    weight, bias = weight / g, bias / g
  x = op("Flatten", [op("GlobalAveragePool", [x])], axis=1)
  logits = op("Add", [op("MatMul", [x, const(weight, "head_w")]), const(bias, "head_b")])
  nodes.append(helper.make_node("Identity", [logits], [OUTPUT]))
  graph = helper.make_graph(
      nodes, "dnn_jax_subnetwork",
      [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT,
                                     ["batch"] + list(image_shape))],
      [helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                     ["batch", int(kernel.shape[-1])])],
      initializer=inits)
  onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 producer_name="dnn_jax")
  onnx_model.ir_version = 8  # the IR of opset 17: loadable by onnxruntime >= 1.14
  onnx.checker.check_model(onnx_model, full_check=True)
  return onnx_model


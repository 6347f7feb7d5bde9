"""Every config field with its default; files in `configs/` start from `base_config()`."""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Fixes init, data order and augmentation (carved splits use a fixed seed of 0).

  c.data = d = ml_collections.ConfigDict()
  d.source = "digits"  # digits | tfds | image_folder
  d.name = ""  # tfds: cifar10 | svhn_cropped
  d.tfds_data_dir = ""  # tfds: prepared data dir ("" = TFDS_DATA_DIR or ~/tensorflow_datasets)
  d.root = ""  # image_folder: a folder with train/<class>/* and optionally test/<class>/*
  d.image_size = 0  # image_folder: expected height = width (0: take the first image's)
  d.eval_split = "test"  # test | validation (carved from train)
  d.validation_fraction = 0.1  # share of train held out when eval_split = validation
  d.augment = "crop_flip"  # crop_flip | crop | none (crop: pad + random crop)
  d.crop_padding = 4  # zero padding (pixels) before the random crop
  d.mean = (125.3, 123.0, 113.9)  # per-channel input mean on the 0-255 scale
  d.std = (63.0, 62.1, 66.7)  # per-channel input std on the 0-255 scale

  c.model = m = ml_collections.ConfigDict()
  m.num_groups = 22  # G: channel groups = width exits
  m.channels_per_group = (1, 2, 4)  # per stage; stage channels = G * this
  m.stage_channels = ()  # alternative: channels per stage (each divisible by num_groups)
  m.blocks_per_stage = (5, 5, 5)  # residual blocks per stage; exits = 1 + sum
  m.causal = True  # False: a plain network (baselines) with the same layout
  m.shortcut = "projection"  # projection (causal 1x1 + BN) | pad (per-group zero pad)
  m.head_reduction = "sum"  # sum | mean: Z_c = sum_{k<=c} P_k (or divided by c)
  # Exit heads: shared (the paper's: width c sums the per-group maps W_1..W_c, so widths share
  # them) | untied (width c has its own map U_c of its c groups; same MACs and parameters per
  # sub-network, G(G+1)/2 instead of G maps per depth in the whole model).
  m.exit_head = "shared"
  m.zero_init_residual = False  # zero-init the last BN scale of each block
  m.bn_momentum = 0.9  # running-average decay of BatchNorm statistics
  m.dtype = "float32"  # compute dtype: float32 | bfloat16
  # Causal conv form: masked (one dense conv with a masked kernel) | blocks:S (S convs, each
  # over only the input prefix its output groups read) | auto (the fastest measured on the
  # backend: models.CONV_FORM_BY_BACKEND). Same numbers and parameters; see BENCHMARKS.md.
  m.conv_form = "auto"

  c.loss = l = ml_collections.ConfigDict()
  # Weights lambda(l, c) of the joint loss (paper eq. 2): uniform | linear (l * c) |
  # anchored (uniform, the full exit carrying half the total) |
  # final (full exit only: plain training) | full_width (depth-only anytime) |
  # full_depth (width-only) | sandwich (every depth alike; in it widths 1 and G a quarter
  # each, the rest spread) | anchored_row (full exit half, the rest of the full-depth row a
  # quarter, shallower exits a quarter) | row_half (full-depth row half, shallower exits
  # half) | row_share (full-depth row 1 - shallow_share, shallower exits shallow_share) |
  # explicit (lambda_grid). Table: losses.LAMBDA_SCHEMES.
  l.lambda_scheme = "uniform"
  l.lambda_grid = ()  # explicit: depths x widths nested list of non-negative weights
  l.shallow_share = 0.5  # row_share: the shallower exits' share of the total, in [0, 1)
  l.label_smoothing = 0.0
  # Gradient of each head group: sum (as the joint loss gives it: 1/sum(lambda)-scaled) or
  # mean (rescaled to the lambda-weighted mean over the exits that read it); see
  # losses.head_gradient_scale.
  l.head_gradient = "sum"
  # The same for every trunk parameter (conv kernels and BN, by output group and block):
  # sum | mean (gradient equilibrium over the exits that read it; losses.trunk_gradient_scale).
  l.trunk_gradient = "sum"
  l.distill_weight = 0.0  # a: student exits learn (1 - a) CE + a KL(teacher || exit)
  l.distill_temperature = 1.0  # T of that distillation
  # The teacher: full_exit (students: every other exit) | widest_at_depth | next_wider
  # (students: every exit but the widest of its depth); a = 1 replaces the label (US-Nets).
  l.distill_teacher = "full_exit"
  # Width c learns CE(P_c + stop_gradient(Z_{c-1})): the narrower widths' logits held fixed.
  l.boosted = False
  # Adaptive loss balancing: m > 0 scales each lambda(d, c) by (1 - m) + m * mean / running
  # mean of exit (d, c)'s loss (losses.adaptive_lambda); its running mean decays by:
  l.adaptive_weight = 0.0
  l.adaptive_decay = 0.99

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 128  # global batch, split over all devices
  t.num_epochs = 180.0
  t.num_steps = 0  # > 0 overrides num_epochs
  t.learning_rate = 0.1
  t.schedule = "cosine"  # cosine | step (x0.1 at 50% and 75%) | constant
  t.warmup_epochs = 1.0
  t.optimizer = "sgd"  # sgd | adamw | lamb (optimizer.OPTIMIZERS)
  t.momentum = 0.9  # sgd momentum; Adam's beta1 for adamw / lamb
  t.nesterov = True
  # On conv and head kernels only: L2 added to the gradient for sgd, decoupled (times the
  # learning rate) for adamw / lamb.
  t.weight_decay = 5e-4
  t.log_every_steps = 50
  t.eval_every_steps = 0  # 0: evaluate only at the end
  # Also log the gradient norm of every width group, trunk and heads (metrics.jsonl).
  t.log_group_grad_norms = False

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 500  # padded and masked: no example is dropped

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 1000
  k.max_to_keep = 3

  c.resources = r = ml_collections.ConfigDict()  # --mode=resources
  r.measure = True  # also compile every sub-network: XLA peak memory and latency
  r.latency = True  # time every sub-network (else memory only)
  r.batch_size = 128  # the second latency batch (the first is 1)
  r.warmup = 2  # untimed runs before timing
  r.repeats = 5  # timed runs; the median is reported
  # The runtime the latency grid is timed in: jax | onnxruntime | iree | litert (runtimes.py;
  # all but jax need their export extra). --mode=select's budget.latency_ms ranks by it.
  r.runtime = "jax"

  c.budget = b = ml_collections.ConfigDict()  # --mode=select / --mode=trace; unset = no limit
  b.macs = config_dict.placeholder(float)  # multiply-accumulates per image
  b.params = config_dict.placeholder(float)  # parameters of the sliced sub-network
  b.activation_bytes = config_dict.placeholder(float)  # XLA peak temp memory, batch 1
  b.latency_ms = config_dict.placeholder(float)  # median latency, batch 1
  b.trace = ""  # --mode=trace: JSON list of {limit: value} or CSV with limit columns
  b.compare_workdir = ""  # a depth-only network's workdir to compare with ("" = full-width column)

  c.anytime = a = ml_collections.ConfigDict()  # --mode=anytime (anytime.py)
  a.budgets = 12  # average-MAC budgets, geometric from the smallest to the full network
  a.path = "area"  # area | greedy: how the path through the grid is fitted (anytime.py)
  a.timing_images = 16  # images timed one by one through the Refiner (0: no timing check)

  c.export = e = ml_collections.ConfigDict()  # --mode=export
  e.subnet = ""  # e.g. "D14W12"; or set depth and width
  e.depth = 0
  e.width = 0
  e.format = "stablehlo"  # comma-separated: stablehlo, onnx, tflite (export.py)
  e.tflite_batch_sizes = "1"  # tflite: one static-batch file per size, e.g. "1,32"
  e.dir = ""  # "" = DIR/export/<id>
  return c


def load_config_file(sibling_of: str, name: str):
  """The `get_config` of configs/<name>.py next to `sibling_of`, loaded by path (works from
  any working directory, unlike `from configs import ...`)."""
  path = os.path.join(os.path.dirname(os.path.abspath(sibling_of)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"_dnn_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config

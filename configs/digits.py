"""The offline default: scikit-learn's bundled 8x8 digits, a 4-group DNNet, under a minute.

  python -m dnn_jax.main --config=configs/digits.py --workdir=/tmp/dnn_digits

Expected: about 99.2% test accuracy at the full-depth, full-width exit on CPU with the
command line's default XLA flags (98.6% with JAX's own, DNN_JAX_XLA_DEFAULTS=0; 98.3% on an
H100, whose TF32 convolutions take another trajectory; test = a fixed 20% of the 1,797
digits), and DIR/eval/grid.json + accuracy.png for all 4 x 4 sub-networks.
"""

from dnn_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = "digits"
  c.data.augment = "crop"  # No flips for digits; 1-pixel shifts.
  c.data.crop_padding = 1
  c.data.mean = (127.5,)
  c.data.std = (100.0,)
  c.model.num_groups = 4
  c.model.channels_per_group = (4, 8, 16)  # 16 / 32 / 64 channels at 8x8 / 4x4 / 2x2
  c.model.blocks_per_stage = (1, 1, 1)  # 4 exits
  c.train.batch_size = 64
  c.train.num_epochs = 30
  c.train.learning_rate = 0.2
  c.train.log_every_steps = 50
  c.eval.batch_size = 200
  c.checkpoint.every_steps = 200
  return c

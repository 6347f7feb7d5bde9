"""Tiny config for tests: digits, 2 groups, 2 stages of 1 block (3 x 2 exits), a few steps.

  python -m dnn_jax.main --config=configs/tiny.py --workdir=/tmp/dnn_tiny
"""

from dnn_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = "digits"
  c.data.augment = "crop"
  c.data.crop_padding = 1
  c.data.mean = (127.5,)
  c.data.std = (100.0,)
  c.model.num_groups = 2
  c.model.channels_per_group = (4, 8)
  c.model.blocks_per_stage = (1, 1)
  c.train.batch_size = 32
  c.train.num_steps = 20
  c.train.learning_rate = 0.3
  c.train.warmup_epochs = 0.0
  c.train.log_every_steps = 10
  c.eval.batch_size = 64
  c.checkpoint.every_steps = 5
  c.checkpoint.max_to_keep = 10
  return c

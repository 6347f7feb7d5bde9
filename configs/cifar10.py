"""Paper scale on CIFAR-10 (for GPU/TPU): 22 groups x ResNet-32 depth = 16 x 22 sub-networks.

  python -m dnn_jax.main --config=configs/cifar10.py --workdir=runs/dnn_cifar10 \
      --config.data.tfds_data_dir=/data/tensorflow_datasets

The workdir may be a local path or gs://BUCKET/PATH (the `gcs` extra; README, "Workdirs in
Cloud Storage"), as launch/tpu_run.sh gives it. On Cloud TPU: launch/README.md.

Data: tfds `cifar10` prepared once (`tfds build cifar10 --file_format=array_record`).
Model (the paper's ResNet-32 shape): 22 groups, 1/2/4 channels per group (22/44/88 channels), 5 blocks
per stage, causal 1x1 projections at stage changes: 68,485,120 MACs at D16W22, the cost of a
standard ResNet-32 (68,861,952); 556,512 effective parameters in the whole model with the
untied exit heads below (473,352 with the paper's shared head; each sub-network's parameters
and MACs are the same with either head).
Recipe (the paper gives none): the standard CIFAR ResNet recipe (SGD nesterov 0.9, batch 128,
lr 0.1, 1 warm-up epoch then cosine decay, 180 epochs, weight decay 5e-4 on kernels,
4-pixel pad + random crop + flip). With it a standard ResNet-32 reaches about 92.5% on the
CIFAR-10 test set; that is the reference for the DNNet's full exit. The joint loss is the open
part of the recipe: uniform lambda trained far worse than the alternatives in a reduced-scale
sweep (results/cifar10_cpu/README.md), so this config uses the best recipe measured there:
the row_share weighting (the full-depth exits 0.65 of the loss, the shallower exits 0.35;
`loss.shallow_share` = 0.35; at reduced scale, two seeds at 15 epochs, width 1 at full depth
within 3.2 / 4.9 points of a network trained alone, the grid mean 1.1 / 2.0 points above a
share of 0.25 with the full-depth row unchanged on average), gradient equilibrium over heads
and trunk (head and trunk gradients rescaled to the lambda-weighted mean over the exits that
read them) and untied exit heads (each width its own map of its groups: +5.7 to +5.8 points
at width 1 over the shared head); it is not yet validated at this scale, where 330 exits
share the shallower 0.35.
Not yet run at this scale by this project: no accuracy is claimed here.
Cost: on one H100 a train step of this model (all 352 exits, fp32, batch 128) took 7.7 ms
(BENCHMARKS.md), so the 70,200 steps of 180 epochs (390 per epoch) are about 9 minutes of
steps, plus compilation, evaluation and input (measured input wait: 2.8% of a step). On this
project's 2-core CPU it trains at about 127 images/s (batch 32 or 128, BENCHMARKS.md): about
20 hours for 180 epochs.
"""

from dnn_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = "tfds"
  c.data.name = "cifar10"
  c.data.augment = "crop_flip"
  c.model.num_groups = 22
  c.model.channels_per_group = (1, 2, 4)
  c.model.blocks_per_stage = (5, 5, 5)
  c.loss.lambda_scheme = "row_share"
  c.loss.shallow_share = 0.35
  c.loss.head_gradient = "mean"
  c.loss.trunk_gradient = "mean"
  c.model.exit_head = "untied"
  c.train.batch_size = 128
  c.train.num_epochs = 180
  c.train.learning_rate = 0.1
  c.train.weight_decay = 5e-4
  c.train.log_every_steps = 200
  c.checkpoint.every_steps = 2000
  return c

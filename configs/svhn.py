"""Paper scale on SVHN (cropped digits, for GPU/TPU): the CIFAR-10 model, no flips.

  python -m dnn_jax.main --config=configs/svhn.py --workdir=runs/dnn_svhn \
      --config.data.tfds_data_dir=/data/tensorflow_datasets

The workdir may be a local path or gs://BUCKET/PATH (the `gcs` extra; README, "Workdirs in
Cloud Storage"), as launch/tpu_run.sh gives it. On Cloud TPU: launch/README.md.

Data: tfds `svhn_cropped` (73,257 train / 26,032 test; `extra` unused), prepared once.
Recipe: as configs/cifar10.py but 40 epochs (SVHN has more images and converges faster;
the usual ResNet recipes use 20-40) and pad + random crop without horizontal flips
(digits are not mirror-symmetric). A standard ResNet-32 reaches about 96% on SVHN test.
Not yet run at this scale by this project: no accuracy is claimed here.
"""

from dnn_jax.config_base import load_config_file


def get_config():
  c = load_config_file(__file__, "cifar10")()
  c.data.name = "svhn_cropped"
  c.data.augment = "crop"
  c.data.mean = (111.6, 113.2, 120.6)
  c.data.std = (50.5, 51.3, 50.2)
  c.train.num_epochs = 40
  return c

"""dnn_jax: doubly nested networks (channel-causal anytime CNNs) in JAX/Flax."""

import os

# gs:// paths (files.py, Orbax) go through etils.epath. With TensorFlow importable (the tflite
# export extra installs it) epath would route them through tf.io.gfile; training must not load
# TensorFlow, so epath uses gcsfs (fsspec) unless the user set EPATH_USE_TF. Set before epath
# is first asked about a gs:// path.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"

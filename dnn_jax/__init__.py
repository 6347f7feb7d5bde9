"""dnn_jax: doubly nested networks (channel-causal anytime CNNs) in JAX/Flax."""

__version__ = "0.1.0"

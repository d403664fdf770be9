"""ddnn-jax: distributed deep neural networks with learned offloading, in JAX and Flax."""

__version__ = "0.1.0"

"""The JAX backend (Flax NNX + Optax); the registry loads `BACKEND`."""
import os

# JAX takes 75% of a GPU's memory when its GPU client starts, and TensorFlow maps the rest:
# one process (a pytest run, a comparison script) that loads both would then starve one of
# them. Allocate as needed instead; a user's own setting wins. Read when the GPU client is made
# (`XLA_PYTHON_CLIENT_PREALLOCATE`, JAX's GPU memory allocation notes), so before first use.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from backends.jax.backend import JaxBackend  # noqa: E402

BACKEND = JaxBackend

__all__ = ["BACKEND", "JaxBackend"]

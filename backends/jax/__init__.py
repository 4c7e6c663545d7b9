"""The JAX backend (Flax NNX + Optax); the registry loads `BACKEND`."""
from backends.jax.backend import JaxBackend

BACKEND = JaxBackend

__all__ = ["BACKEND", "JaxBackend"]

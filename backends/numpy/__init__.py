"""The NumPy reference backend (the parity oracle); the registry loads `BACKEND`."""
from backends.numpy.backend import NumpyBackend

BACKEND = NumpyBackend

__all__ = ["BACKEND", "NumpyBackend"]

"""Registry: the only place a backend name becomes a framework import.

Stdlib only at import time, so listing backends or checking which are installed never
imports a framework (tested).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from common.errors import BackendUnavailableError, UnknownBackendError

if TYPE_CHECKING:
    from backends.base import Backend

# name -> (framework modules that must be importable, how to install them, environment).
# The environment is the Makefile's: "main" is .venv, "mxnet" is .venv-mxnet (old numpy).
_REGISTRY: dict[str, tuple[tuple[str, ...], str, str]] = {
    "numpy": (("numpy",), "pip install -e .", "main"),
    "torch": (("torch",), "pip install -e '.[torch]'  (or: make train)", "main"),
    # jaxlib is a separate distribution that `import jax` loads: it belongs to this backend.
    "jax": (("jax", "jaxlib", "flax", "optax"), "pip install -e '.[jax]'  (or: make test)",
            "main"),
    # The chapter step's layers and Adam are Keras 3's, which TensorFlow installs.
    "tf": (("tensorflow", "keras"), "pip install -e '.[tf]'  (or: make test)", "main"),
    "mxnet": (("mxnet",), "make test builds .venv-mxnet (mxnet 1.9.1 needs numpy<1.24): "
              "pip install -e '.[mxnet]' there", "mxnet"),
}
ALIASES = {"pytorch": "torch", "np": "numpy", "reference": "numpy",
           "tensorflow": "tf", "gluon": "mxnet", "flax": "jax"}


def names() -> list[str]:
    """Every backend the registry knows, in a stable order."""
    return list(_REGISTRY)


def canonical(name: str) -> str:
    """Resolve aliases; raise `UnknownBackendError` listing the valid names."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UnknownBackendError(
            f"unknown backend {name!r}: choose one of {', '.join(names())}")
    return key


def environment(name: str) -> str:
    """The Makefile environment that hosts `name`: "main" (.venv) or "mxnet" (.venv-mxnet)."""
    return _REGISTRY[canonical(name)][2]


def missing(name: str) -> str | None:
    """Why `name` cannot load here (its install command), or None; imports nothing."""
    key = canonical(name)
    modules, install, _ = _REGISTRY[key]
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if absent:
        return f"backend {key!r} needs {', '.join(absent)}, which is not installed: {install}"
    return None


def load(name: str) -> "type[Backend]":
    """Import the backend's module and return its Backend class."""
    key = canonical(name)
    reason = missing(key)
    if reason:
        raise BackendUnavailableError(reason)
    module = importlib.import_module(f"backends.{key}")
    return module.BACKEND

"""The TensorFlow backend; the registry loads `BACKEND`.

TensorFlow and Keras are imported here first, quietly and alone: the CLI's output should be
the run's, not TensorFlow's start-up log, and choosing this backend should import no other
framework (tests/test_isolation.py).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile
from typing import Iterator

# absl's format ("I0000 00:00:17... port.cc:153] ...") and TF's older one
# ("2025-01-01 12:00:00.000: I tensorflow/...").
_LOG_LINE = re.compile(r"^(?:[IWEF]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"
# Optional imports inside `import tensorflow` and `import keras` that this backend never uses:
# TFLite's converter helpers try `from jax import jit`, TensorFlow loads Keras 3's optimisers to
# register them for SavedModel, and Keras' Orbax checkpoint callback patches jax if it can.
# All are in try/except ImportError, so hiding them is safe. It keeps jax out of a TensorFlow
# process; Keras (the chapter step's layers and Adam) is imported next, on its own.
_NOT_FOR_TENSORFLOW = ("jax", "keras")
_NOT_FOR_KERAS = ("jax",)


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Hold back the native log lines TensorFlow prints while it starts up.

    TF_CPP_MIN_LOG_LEVEL (3 here unless set: the CLI reports its own errors) silences what
    TensorFlow logs once running. It cannot reach what is logged while the shared libraries
    load, before absl::InitializeLog() (the oneDNN notice, "Could not find cuda drivers";
    tensorflow/tensorflow#100442), and jax, when imported first, sets it to 1, which lets
    cuInit's error through on every machine without a GPU. So file descriptor 2 is captured
    around the start-up steps (the import, the first device query) and written back minus its
    log lines; TF_CPP_MIN_LOG_LEVEL=0 keeps them all, for debugging an installation.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keep_logs = os.environ["TF_CPP_MIN_LOG_LEVEL"].strip() == "0"
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if keep_logs or not _is_log_line(line)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")


def _import_tensorflow() -> None:
    """`import tensorflow`, then `import keras` on TensorFlow, quietly, without other frameworks.

    Keras 3 picks its backend once, at import, from KERAS_BACKEND (or ~/.keras/keras.json):
    this process's Keras must run on TensorFlow, so that is set for it.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    # TensorFlow maps nearly all of a GPU's memory when it first uses it, which would starve
    # JAX or torch in the same process (a pytest run loads all three). Grow as needed instead;
    # a user's own setting wins. Read when the GPUs are initialised, after this import.
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    with quiet_native_logs():
        for module, hidden_names in (("tensorflow", _NOT_FOR_TENSORFLOW),
                                     ("keras", _NOT_FOR_KERAS)):
            # A None entry in sys.modules makes `import name` raise ImportError (importlib docs).
            hidden = [name for name in hidden_names if name not in sys.modules]
            try:
                sys.modules.update(dict.fromkeys(hidden))
                importlib.import_module(module)
            finally:
                for name in hidden:
                    if sys.modules.get(name, 0) is None:
                        del sys.modules[name]


def _is_log_line(line: str) -> bool:
    """Whether a captured stderr line is absl's or TensorFlow's C++ logging."""
    return line.startswith(_ABSL_PREAMBLE) or bool(_LOG_LINE.match(line))


_import_tensorflow()
if sys.modules["keras"].backend.backend() != "tensorflow":
    from common.errors import BackendUnavailableError

    raise BackendUnavailableError(
        f"Keras was imported on {sys.modules['keras'].backend.backend()} before the tf backend "
        "loaded; the tf backend needs Keras on TensorFlow (KERAS_BACKEND=tensorflow)")

from backends.tf.backend import TFBackend  # noqa: E402  (after the quiet import)

BACKEND = TFBackend

__all__ = ["BACKEND", "TFBackend"]

"""The MXNet (Gluon) backend; the registry loads `BACKEND`. Runs in `.venv-mxnet` (numpy<1.24).

MXNet is imported here first, quietly, so that `model.py` and `backend.py` find it configured:
its engine reads `MXNET_*` variables once, at import, and importing MXNet 1.9.1 on NumPy 1.23
raises a dozen DeprecationWarnings from MXNet's own modules (`np.bool`, `LooseVersion`, the
NEP 32 financial functions) that say nothing about this program.
"""
import os
import warnings

# A user's own setting wins (setdefault). Storage fallbacks (sparse -> dense) cannot happen
# here (both embeddings have dense gradients), but their log lines would be noise if they did.
os.environ.setdefault("MXNET_STORAGE_FALLBACK_LOG_VERBOSE", "0")
# Two engine threads for CPU operators instead of MXNet's one. MXNet runs each operator on one
# OpenMP thread where it guesses hyperthreads (it halves the CPU count: 1 on a 2-core machine),
# so with one worker the second core idled. The training step is two independent chains (the
# centre and the context table: gradient product, then Adam), which two workers run side by
# side; the engine reads this once, when it starts.
os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "2")
# Every extension-library operator (the native Adam kernel, `kernels.py`) asks for MXNet's
# parallel random resource, whose one default copy is written by each such call: the two
# tables' Adam updates would wait for each other. Two copies let them run side by side.
os.environ.setdefault("MXNET_CPU_PARALLEL_RAND_COPY", "2")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mxnet  # noqa: F401  (configured and imported once, before the modules below)

from backends.mxnet.backend import MXNetBackend  # noqa: E402

BACKEND = MXNetBackend

__all__ = ["BACKEND", "MXNetBackend"]

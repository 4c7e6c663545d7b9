"""`--threads N`: the CPU threads a run or a benchmark may use, applied the same way for every
backend (each backend adds its framework's own settings, `Backend.set_threads`)."""
from __future__ import annotations

import os

from common.errors import ConfigError

# Thread-pool variables that OpenMP, OpenBLAS and MKL read when they start (a framework that
# starts later in the process picks them up).
POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check(threads: object) -> int:
    """`threads` as a valid count (0 = the framework's default), else a one-line ConfigError."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"--threads must be a non-negative integer (0: every CPU), "
                          f"got {threads!r}")
    return threads


def effective(threads: int) -> int:
    """The thread count a run with `--threads threads` records: 0 means every CPU."""
    return threads if threads > 0 else available_cpus()


def limit_cpus(threads: int) -> str:
    """Pin this process to its first `threads` CPUs and size the native pools to match.

    Returns what was done, for the record. Pinning works for every framework, including those
    with no thread setting of their own (JAX) and pools that have already started.
    """
    check(threads)
    if threads == 0:
        return "framework defaults"
    for name in POOL_VARIABLES:
        os.environ[name] = str(threads)
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return f"{'/'.join(POOL_VARIABLES)}={threads}"
    if threads < len(cpus):
        os.sched_setaffinity(0, cpus[:threads])
        return f"pinned to {threads} of {len(cpus)} CPUs"
    return f"all {len(cpus)} CPUs (asked {threads})"

"""The MXNet backend's native kernels, built into one library and loaded on first use.

MXNet 1.9.1's CPU wheel runs `adam_update` one float at a time; `adam_kernel.cc` is the same
arithmetic as an extension-library operator (`w2v_adam_update`, MXNet's C++ extension API) that
the compiler vectorizes. `gradient_kernel.cc` (`w2v_dense_gradients`) writes both tables' dense
gradients from the batch's pairs, what `fast.dense_gradients` does with two sparse products and
their zero-fills. The first process that needs them compiles both sources with the system C++
compiler (`$CXX`, else g++, else c++) together with the wheel's `lib_api.cc` into
`$XDG_CACHE_HOME/w2v-multi/mxnet-kernels/<hash>.so` (`~/.cache/...` without XDG_CACHE_HOME),
under a file lock and by an atomic rename; every process then loads it once with
`mx.library.load`. The hash covers the sources, MXNet's version, the compiler, its flags and
the CPU (`-march=native`), so a change to any of them builds a new library.

`W2V_MXNET_KERNEL` chooses for both operators: `auto` (default) uses the kernels and, when they
cannot be built or loaded, MXNet's `adam_update` and `sparse.dot` with a one-line notice on stderr;
`native` makes that failure a one-line error; `builtin` uses MXNet's operators (with the notice).
"""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import mxnet as mx

from common.corpus import cache_dir as project_cache_dir
from common.errors import ConfigError, W2VError

ENV = "W2V_MXNET_KERNEL"
MODES = ("auto", "native", "builtin")
OP_NAME = "w2v_adam_update"
GRADIENT_OP_NAME = "w2v_dense_gradients"
SOURCES = tuple(Path(__file__).with_name(name)
                for name in ("adam_kernel.cc", "gradient_kernel.cc"))
# No -ffast-math: the kernel must round as MXNet's does. -ffp-contract=off keeps g++ from
# fusing a multiply and an add into one FMA (one rounding instead of two), which the SSE3
# wheel cannot do, so each operation rounds as in MXNet's `adam_update`.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-std=c++17",
         "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 300


class KernelError(W2VError):
    """The native kernel could not be built or loaded (fatal only with W2V_MXNET_KERNEL=native)."""

    exit_code = 1


def kernel_mode() -> str:
    """`W2V_MXNET_KERNEL` (auto, native or builtin; unset or empty means auto)."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in MODES:
        raise ConfigError(f"{ENV} must be one of {', '.join(MODES)}, got {value!r}")
    return value


def cache_dir() -> Path:
    """Where built kernels live: `$XDG_CACHE_HOME/w2v-multi/mxnet-kernels` or ~/.cache/..."""
    return project_cache_dir() / "mxnet-kernels"


def _mxnet_sources() -> tuple[Path, Path]:
    """The wheel's extension API: its include folder and `src/lib_api.cc`."""
    root = Path(mx.__file__).resolve().parent
    return root / "include", root / "src" / "lib_api.cc"


def compiler() -> list[str]:
    """The C++ compiler command: `$CXX` (may carry flags), else g++, else c++."""
    given = shlex.split(os.environ.get("CXX", ""))
    if given:
        found = shutil.which(given[0])
        if found is None:
            raise KernelError(f"the C++ compiler CXX={given[0]!r} was not found")
        return [found, *given[1:]]
    for name in ("g++", "c++"):
        found = shutil.which(name)
        if found:
            return [found]
    raise KernelError("no C++ compiler found (set CXX, or install g++)")


def _cpu_signature() -> str:
    """What `-march=native` compiles for: the CPU's model and feature flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(wanted)}))


def library_path(command: list[str]) -> Path:
    """The cached library for these sources, MXNet, compiler command, flags and CPU."""
    include, lib_api = _mxnet_sources()
    digest = hashlib.sha256()
    for part in (*(source.read_bytes() for source in SOURCES), lib_api.read_bytes(),
                 (include / "mxnet" / "lib_api.h").read_bytes(), mx.__version__.encode(),
                 "\0".join([*command, *FLAGS]).encode(), _cpu_signature().encode()):
        digest.update(hashlib.sha256(part).digest())
    return cache_dir() / f"kernels-{digest.hexdigest()[:24]}.so"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created), held for the block; none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still keeps the file whole
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _first_error(output: str) -> str:
    """The compiler's first line that mentions an error (else its first line), shortened."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no output"])[0]
    return line if len(line) <= 200 else line[:197] + "..."


def build() -> tuple[Path, float]:
    """Compile the kernel unless cached; its path and the seconds spent compiling (0 if cached).

    Raises KernelError (one line) when there is no compiler or the compilation fails.
    """
    command = compiler()
    target = library_path(command)
    if target.exists():
        return target, 0.0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(target.with_suffix(".lock")):
            if target.exists():  # another process built it while this one waited
                return target, 0.0
            start = time.perf_counter()
            _compile(command, target)
            return target, time.perf_counter() - start
    except OSError as error:  # an unwritable cache, a full disk
        raise KernelError(f"cannot write the kernel cache {target.parent}: "
                          f"{error.strerror or error}") from None


def _compile(command: list[str], target: Path) -> None:
    """Compile into a private file next to `target`, then rename it into place (atomic)."""
    include, lib_api = _mxnet_sources()
    partial = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    name = Path(command[0]).name
    try:
        try:
            done = subprocess.run([*command, *FLAGS, "-I", str(include),
                                   *(str(source) for source in SOURCES), str(lib_api),
                                   "-o", str(partial)],
                                  capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        except OSError as error:  # not executable, not a program
            raise KernelError(f"{name} could not run: {error.strerror or error}") from None
        except subprocess.SubprocessError as error:  # the timeout
            raise KernelError(f"{name} did not finish: {error}") from None
        if done.returncode != 0 or not partial.exists():
            raise KernelError(f"{name} failed (exit {done.returncode}): "
                              f"{_first_error(done.stderr + done.stdout)}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


_loaded: Path | None = None          # the library this process loaded
_failure: KernelError | None = None  # why it could not be, once known
_noticed = False


def load() -> Path:
    """Build (if needed) and load the kernel into this process, once; its path.

    Raises KernelError, the same one on every call after a failure.
    """
    global _loaded, _failure
    if _loaded is not None:
        return _loaded
    if _failure is not None:
        raise _failure
    try:
        path, _ = build()
        with warnings.catch_warnings():  # the op modules are regenerated: MXNet's own noise
            warnings.simplefilter("ignore", DeprecationWarning)
            mx.library.load(str(path), verbose=False)
        for name in (OP_NAME, GRADIENT_OP_NAME):
            if not hasattr(mx.nd, name):
                raise KernelError(f"{path} loaded but registered no {name} operator")
    except KernelError as error:
        _failure = error
        raise
    except mx.base.MXNetError as error:
        _failure = KernelError(f"MXNet could not load {path.name}: "
                               f"{_first_error(str(error))}")
        raise _failure from None
    _loaded = path
    return path


def _notice(reason: str) -> None:
    """Say once per process, on one stderr line, that MXNet's own operators are used."""
    global _noticed
    if not _noticed:
        _noticed = True
        print(f"w2v: mxnet uses MXNet's adam_update and sparse dot, not the native kernels: "
              f"{reason}", file=sys.stderr, flush=True)


def adam_update(mode: str | None = None) -> Callable[..., Any] | None:
    """The native `w2v_adam_update` operator, or None where MXNet's `adam_update` is to be used.

    `mode` defaults to `W2V_MXNET_KERNEL`. auto falls back (with a notice, once) when the
    kernels cannot be built or loaded; native raises KernelError; builtin returns None (with
    the notice when the environment chose it).
    """
    return _operator(OP_NAME, mode)


def dense_gradients(mode: str | None = None) -> Callable[..., Any] | None:
    """The native `w2v_dense_gradients` operator, or None where `fast.dense_gradients` (two
    `mx.nd.sparse.dot` products) is to be used; `mode` as for `adam_update`, the same switch."""
    return _operator(GRADIENT_OP_NAME, mode)


def _operator(name: str, mode: str | None) -> Callable[..., Any] | None:
    """The library's operator `name` (built and loaded once), or None for MXNet's own."""
    chosen = kernel_mode() if mode is None else mode
    if chosen == "builtin":
        if mode is None:
            _notice(f"{ENV}=builtin")
        return None
    try:
        load()
    except KernelError as error:
        if chosen == "native":
            raise KernelError(f"the native kernels ({ENV}=native) are unavailable: "
                              f"{error}") from None
        _notice(f"{error} (set {ENV}=builtin to skip the build)")
        return None
    return getattr(mx.nd, name)

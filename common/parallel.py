"""Data parallelism, the framework-neutral half: shards, ranks, and the local launcher.

`--data-parallel N` trains N replicas of one model. Every replica reads the same
deterministic (seed, epoch) batch stream and takes its share of each global batch (`shard`);
the framework's own collective sums the replicas' gradients (the objective is a sum), and
every replica applies the same optimiser update, so N replicas train as one to float32
summation order. The engines are framework-specific (`backends/<fw>/distributed.py`); two
kinds exist:
- "processes": one process per replica, launched as `torchrun` launches them (RANK,
  WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). `w2v train` without those variables
  starts the N processes itself on this host (`launch`) and supervises them: a replica that
  dies takes the others down within seconds, with one line naming it.
- "devices": N devices in one process (JAX host devices, TensorFlow logical devices, MXNet
  contexts); nothing to launch, and no replica that can die alone.
Exactly one replica (rank 0) writes the run folder.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

from common.config import TrainConfig, fields
from common.errors import ConfigError, W2VError

# Set in the replicas that `launch` starts: the launcher, not each replica, reports a lost peer.
LAUNCHED_ENV = "W2V_LAUNCHED_REPLICA"
# Seconds a collective waits for a silent peer before failing (gloo's and TF's defaults wait
# 30 minutes); a peer that dies outright is noticed at once, by its closed sockets.
COLLECTIVE_TIMEOUT_ENV = "W2V_COLLECTIVE_TIMEOUT_S"
COLLECTIVE_TIMEOUT_S = 45.0
# Seconds the launcher lets the other replicas end on their own after one ends in error,
# and then between SIGTERM and SIGKILL.
GRACE_S = 10.0


class ReplicaLost(W2VError):
    """A collective failed because another replica died or stopped answering."""

    exit_code = 75  # EX_TEMPFAIL: the launcher names the replica that caused it


def replica_lost(rank: int, peer: int | None, detail: str, unit: str = "replica"
                 ) -> ReplicaLost:
    """The one line of replica `rank`, whose collective failed because replica `peer` (None:
    the framework does not say which) went away; `detail` is the framework's own word.
    `unit` "process" numbers processes that hold several replicas each."""
    who = f"{unit} {peer} went away" if peer is not None else f"another {unit} went away"
    return ReplicaLost(f"{who} ({detail}); {unit} {rank} stopped, and the last checkpoint in "
                       f"the run folder is intact: continue with `w2v train --resume RUN`")


class ReplicasFailed(W2VError):
    """A launched replica failed; `reported` when that replica already printed its line."""

    def __init__(self, message: str, exit_code: int, reported: bool = False) -> None:
        super().__init__(message)
        self.exit_code, self.reported = exit_code, reported


def collective_timeout() -> float:
    """The collectives' timeout in seconds (W2V_COLLECTIVE_TIMEOUT_S, default 45)."""
    text = os.environ.get(COLLECTIVE_TIMEOUT_ENV, "")
    try:
        value = float(text) if text else COLLECTIVE_TIMEOUT_S
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{COLLECTIVE_TIMEOUT_ENV}={text!r} is not a positive number of "
                          f"seconds")
    return value


class CollectiveWatch:
    """A bound on collectives that the framework itself would wait on for ever.

    MXNet's parameter server (`dist_sync`) blocks a worker in C, where no exception can
    reach it, when another worker, a server or the scheduler went away: a daemon thread ends
    this process with one line (exit 75) when a wait armed by `waiting` passes the
    collective timeout. The framework does not say who went away, so neither does the line.
    """

    def __init__(self, who: str, what: str) -> None:
        import threading

        self.who, self.what, self.timeout = who, what, collective_timeout()
        self._deadline: float | None = None
        threading.Thread(target=self._watch, daemon=True, name="w2v-collective-watch").start()

    @contextlib.contextmanager
    def waiting(self) -> Any:
        """Arm the bound for the waits inside (nested uses keep the outer deadline)."""
        outer = self._deadline
        self._deadline = outer or time.monotonic() + self.timeout
        try:
            yield
        finally:
            self._deadline = outer

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            deadline = self._deadline
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(
                    f"w2v: error: {self.who} waited {self.timeout:g} s "
                    f"({COLLECTIVE_TIMEOUT_ENV}) for the others at {self.what}: another "
                    f"replica or a server went away; the last checkpoint in the run folder is "
                    f"intact: continue with `w2v train --resume RUN`\n")
                sys.stderr.flush()
                os._exit(ReplicaLost.exit_code)  # the waiting thread cannot be interrupted


# -- shards -------------------------------------------------------------------------------
# A chapter's `Batch` or a combination's `common.variants.VariantBatch`: row-wise arrays,
# whose all-zero rows count 0 (their masks are 0).
Rows = TypeVar("Rows", bound=tuple)


def pad_rows(batch: Rows, multiple: int) -> Rows:
    """`batch` with all-padding rows (mask 0, counting 0) up to a multiple of `multiple`."""
    rows = len(batch[0])
    extra = -rows % multiple
    if not extra:
        return batch
    return type(batch)(*(np.concatenate([array, np.zeros((extra, *array.shape[1:]),
                                                         array.dtype)])
                         for array in batch))


def shard(batch: Rows, replicas: int, index: int) -> Rows:
    """Replica `index`'s share of a global batch: a contiguous block of rows.

    Rows are split as evenly as they go (`np.array_split`), so the shares of one batch are
    its rows in order, and their summed objectives are the batch's.
    """
    rows = len(batch[0])
    bounds = [rows * part // replicas for part in range(replicas + 1)]
    start, stop = bounds[index], bounds[index + 1]
    return type(batch)(*(array[start:stop] for array in batch))


def shards(batch: Rows, replicas: int) -> list[Rows]:
    """Every replica's equal share, padded first: what one process feeding N devices needs."""
    batch = pad_rows(batch, replicas)
    return [shard(batch, replicas, index) for index in range(replicas)]


def bytes_all_reduced(vocab_size: int, embed_size: int) -> int:
    """Bytes of dense float32 gradients every replica all-reduces per step: 2 V E 4."""
    return 2 * vocab_size * embed_size * 4


# -- ranks --------------------------------------------------------------------------------
def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None:
        return None
    if not text.strip().isdigit():
        raise ConfigError(f"{name}={text!r} is not a non-negative integer (set by torchrun or "
                          f"`w2v train`)")
    return int(text)


def replica_rank(config: TrainConfig, backend_class: Any) -> int | None:
    """This process's replica number, or None when it must launch the replicas itself.

    "processes" engines: from torchrun's RANK and WORLD_SIZE, whose size must be
    `--data-parallel`. "devices" engines run their replicas here, or, joined to other
    processes by the framework's own runtime, are its process number (0 writes).
    """
    if config.data_parallel == 1:
        return 0
    if backend_class.data_parallel != "processes":
        return backend_class.process_index()
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None and world is None:
        return None
    if world != config.data_parallel or rank is None or rank >= config.data_parallel:
        raise ConfigError(f"this process is replica RANK={rank} of WORLD_SIZE={world}, but "
                          f"--data-parallel is {config.data_parallel}: launch exactly "
                          f"--data-parallel processes (torchrun --nproc-per-node x --nnodes)")
    return rank


def check_engine(backend_class: Any, replicas: int) -> None:
    """Refuse `--data-parallel N > 1` in one line where the backend has no engine for it."""
    if replicas > 1 and not backend_class.data_parallel:
        raise ConfigError(f"the {backend_class.name} backend has no distributed engine (the "
                          f"NumPy oracle runs on one CPU): use --data-parallel 1, or torch, "
                          f"jax, tf or mxnet")


def backend_options(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments every backend's constructor takes from `config`."""
    return dict(lr=config.learning_rate, device=config.device, seed=config.seed,
                optimizer=config.optimizer, step=config.step)


def make_backend(backend_class: Any, config: TrainConfig, vocab_size: int,
                 **variant: Any) -> Any:
    """The backend for `config`: one replica, or the framework's data-parallel engine.

    `variant` (model, loss, ...: `common.session.make_backend`'s) asks for one of the other
    combinations: the framework's `variants.VariantBackend`, or its `DataParallelVariant`,
    the same engine around that model.
    """
    import importlib

    kwargs = dict(backend_options(config), **variant)
    if config.data_parallel == 1:
        if not variant:
            return backend_class(vocab_size, config.embed_size, **kwargs)
        module = importlib.import_module(f"backends.{backend_class.name}.variants")
        return module.VariantBackend(vocab_size, config.embed_size, **kwargs)
    check_engine(backend_class, config.data_parallel)
    module = importlib.import_module(f"backends.{backend_class.name}.distributed")
    engine = module.DataParallelVariant if variant else module.DataParallelBackend
    return engine(vocab_size, config.embed_size, replicas=config.data_parallel, **kwargs)


# -- the local launcher ---------------------------------------------------------------------
def config_argv(config: TrainConfig) -> list[str]:
    """`w2v train` flags that rebuild `config` (floats print exactly: repr round-trips)."""
    argv: list[str] = []
    for field in fields():
        value = getattr(config, field.name)
        if value is not None:
            argv += ["--" + field.name.replace("_", "-"), repr(value) if isinstance(value, float)
                     else str(value)]
    return argv


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def master_port(address: str) -> int:
    """MASTER_PORT when set (refused in one line when taken), else a free port."""
    port = _env_int("MASTER_PORT")
    if port is None:
        return _free_port(address)
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            raise ConfigError(f"port {port} on {address} (MASTER_PORT) is in use: choose a "
                              f"free one, or unset MASTER_PORT to let w2v pick one") from None
    return port


def launch(argv: Sequence[str], replicas: int, run: Path) -> None:
    """Run `w2v <argv>` as `replicas` processes on this host, as torchrun would; supervise.

    Returns when all end well. A stop signal sent here is passed once to every replica (they
    agree on one batch boundary, rank 0 checkpoints, all exit 130/143). When a replica ends
    in error the others get `GRACE_S` to follow, then SIGTERM and SIGKILL; a replica killed
    by a signal is named in one line, with the state of the last checkpoint.
    """
    address = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = master_port(address)
    # The cores shared out, as torchrun does (it sets 1): N replicas each running a thread
    # per core would oversubscribe them.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // replicas))
    children: list[subprocess.Popen[bytes]] = []
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, forward) for signum in handled
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        for rank in range(replicas):
            env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank),
                       WORLD_SIZE=str(replicas), LOCAL_WORLD_SIZE=str(replicas),
                       MASTER_ADDR=address, MASTER_PORT=str(port), OMP_NUM_THREADS=threads,
                       **{LAUNCHED_ENV: "1"})
            # Their own sessions: a terminal's Ctrl-C reaches this process alone, which passes
            # it on once (twice would abort the replicas' checkpoint).
            children.append(subprocess.Popen([sys.executable, "-m", "common.cli", *argv],
                                             env=env, start_new_session=True))
        codes, first = _supervise(children, forwarded)
    finally:
        for child in children:  # never leave one behind
            if child.poll() is None:
                child.kill()
                child.wait()
        for signum, old in previous.items():
            signal.signal(signum, old)
    _raise_for(codes, first, children, run, forwarded)


def _supervise(children: list[subprocess.Popen[bytes]],
               forwarded: list[int]) -> tuple[list[int], int | None]:
    """Wait for every child; once one ends in error (or dies), bound the wait for the rest.

    Returns every exit code and the rank that failed first (None: none did), before this
    launcher stopped any: what happened after is its own doing.
    """
    deadline: float | None = None
    terminated, first = False, None
    while True:
        codes = [child.poll() for child in children]
        if all(code is not None for code in codes):
            return [int(code) for code in codes], first  # type: ignore[arg-type]
        failed = [code for code in codes if code not in (None, 0)]
        now = time.monotonic()
        if failed and deadline is None:
            first = next(rank for rank, code in enumerate(codes) if code not in (None, 0))
            # A replica killed outright cannot answer a collective: stop the others now.
            # One that ended in an error or an interrupt lets the others finish theirs.
            died = any(code < 0 for code in failed) and not forwarded
            deadline = now + (0.0 if died else GRACE_S * (6 if forwarded else 1))
        if deadline is not None and now >= deadline:
            for child in children:
                if child.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGKILL if terminated else signal.SIGTERM)
            terminated, deadline = True, now + GRACE_S
        time.sleep(0.05)


def _raise_for(codes: list[int], first: int | None, children: list[subprocess.Popen[bytes]],
               run: Path, forwarded: list[int]) -> None:
    """Nothing when every replica succeeded; else the one line that says what happened."""
    from common import runs

    if all(code == 0 for code in codes):
        return
    if first is not None and codes[first] < 0 and not forwarded:
        rank, signum = first, -codes[first]
        checkpoint = run / runs.CHECKPOINT
        after = (f"the last checkpoint, {checkpoint}, is intact: continue with "
                 f"`w2v train --resume {run}`" if checkpoint.is_file() else
                 "no checkpoint was written yet: train again")
        raise ReplicasFailed(f"replica {rank} (pid {children[rank].pid}) was killed by "
                             f"{signal.Signals(signum).name}; the other replicas stopped and "
                             f"{after}", 1)
    # Rank 0 first: it reports the run (the interrupt's resume line, an input error).
    for code in codes:
        if code not in (0, ReplicaLost.exit_code) and code > 0:
            raise ReplicasFailed("", code, reported=True)
    rank = next(rank for rank, code in enumerate(codes) if code != 0)
    raise ReplicasFailed(f"replica {rank} lost contact with the others (exit {codes[rank]}): "
                         f"the last checkpoint in {run} is intact; `w2v train --resume {run}`",
                         1)


def is_launched_replica() -> bool:
    """Whether `launch` started this process (which then leaves lost-peer reports to it)."""
    return os.environ.get(LAUNCHED_ENV) == "1"

"""JAX data parallelism: a `jax.sharding.Mesh` over N devices, the batch sharded along it.

The step is the single-device one (`backend.make_train_step`) around a gradient that
`jax.shard_map` runs on each device's share of the batch and sums with `jax.lax.psum` over the
mesh's "batch" axis: the parameters and Adam's state are replicated (`PartitionSpec()`), the
batch split by rows (`PartitionSpec("batch")`), and the whole step is one `jit` program in
which XLA inserts the all-reduce. Every device then applies the same Adam update to its copy.
Both steps run this way (the fast step's chunked gradient runs per shard). On a CPU the N
devices are host devices (`jax_num_cpu_devices`, as `--xla_force_host_platform_device_count`),
which must be asked for before JAX starts its backends: `prepare_replicas` does, and fails in
one line when JAX started without them. Several processes or hosts join one mesh through
`jax.distributed.initialize` (README, "Data-parallel"), gloo carrying the collectives; one
process has no replica that can die alone. There, a process that went away fails the others'
next collective: gloo sees its sockets close, or gives up after W2V_COLLECTIVE_TIMEOUT_S
(`xla_cpu_collective_timeout_seconds`, below the coordination service's heartbeat timeout,
whose expiry would abort the process). That is one line naming the lost process (`_collective`),
and the exit skips `jax.distributed`'s shutdown barrier, which would wait for the dead process
and then abort. The other combinations (`DataParallelVariant`) take the same mesh around their
`value_and_grad`.
"""
from __future__ import annotations


import atexit
import contextlib
import os
import re
import sys
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax._src import xla_bridge
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from backends.base import Params
from backends.jax.backend import JaxBackend, make_train_step
from backends.jax.variants import VariantBackend, host_batch
from common import parallel
from common.batching import Batch
from common.errors import ConfigError
from common.parallel import Rows
from common.variants import VariantBatch

AXIS = "batch"
TERMINATE_FLAG, STARVED_DEVICE_S = "xla_cpu_collective_call_terminate_timeout_seconds", 600
# How long gloo waits for another process at a collective before it fails (XLA's default: 30
# minutes); the coordination service's heartbeat timeout is HEARTBEAT_FACTOR times it, so that
# a silent process ends the others' collectives in our line before the service aborts them.
GLOO_TIMEOUT_FLAG, HEARTBEAT_FACTOR = "xla_cpu_collective_timeout_seconds", 2
# gloo's failure as XLA raises it: "Gloo all-reduce failed: [file:line] Read error ...".
GLOO_FAILED = re.compile(r"(Gloo [\w-]+ failed): (?:\[[^]]*\] )?(.*)")
# Several processes (README, "Data-parallel"): JAX reads the coordinator's address itself.
COORDINATOR_ENV, PROCESSES_ENV, PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
                                               "JAX_PROCESS_ID")


def _env_count(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    if not text.isdigit():
        raise ConfigError(f"{name}={text!r} is not a non-negative integer")
    return int(text)


def reserve_host_devices(replicas: int) -> None:
    """Ask for the CPU devices `replicas` need before JAX starts; one line if it started.

    With JAX_COORDINATOR_ADDRESS set, this process is one of JAX_NUM_PROCESSES (its number
    JAX_PROCESS_ID): it joins the others through `jax.distributed.initialize`, with
    `replicas / JAX_NUM_PROCESSES` host devices of its own and gloo for the collectives.
    """
    processes = _env_count(PROCESSES_ENV, 1) if os.environ.get(COORDINATOR_ENV) else 1
    if replicas % processes:
        raise ConfigError(f"--data-parallel {replicas} does not split over "
                          f"{PROCESSES_ENV}={processes} processes: give a multiple of it")
    local = replicas // processes
    timeout = max(1, round(parallel.collective_timeout()))
    if not xla_bridge.backends_are_initialized():
        # XLA aborts the process when a host device waits 40 s for the others at a collective;
        # on a loaded 2-core machine a device's thread can be starved that long (seen on PTB).
        flags = [f"--{TERMINATE_FLAG}={STARVED_DEVICE_S}"]
        if processes > 1:
            flags.append(f"--{GLOO_TIMEOUT_FLAG}={timeout}")
        os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()
    try:
        if jax.config.jax_num_cpu_devices < local:
            jax.config.update("jax_num_cpu_devices", local)
        if processes > 1 and not jax.distributed.is_initialized():
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            # TPU preemption notices: none here, and its poll of a dead coordinator logs errors.
            jax.config.update("jax_enable_preemption_service", False)
            jax.distributed.initialize(num_processes=processes,
                                       process_id=_env_count(PROCESS_ENV, 0),
                                       initialization_timeout=timeout,
                                       heartbeat_timeout_seconds=HEARTBEAT_FACTOR * timeout)
    except RuntimeError:  # JAX's backends are up: only what they already have is available
        count = len(jax.devices("cpu"))
        if count < replicas:
            raise ConfigError(
                f"JAX started with {count} CPU device(s) before --data-parallel {replicas} could "
                f"ask for more: run it in a fresh process (`w2v train` does), or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas}") from None


def _exit_before_the_shutdown_barrier() -> None:
    """End this process right after `main` reports, skipping `jax.distributed.shutdown`.

    JAX's own exit hook waits at a barrier for every process, the dead one too, until the
    service's heartbeat timeout, and then aborts with XLA's log and SIGABRT. Registered last,
    this hook runs first; the run folder's files are written and closed by then.
    """
    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(parallel.ReplicaLost.exit_code)

    atexit.register(leave)


@contextlib.contextmanager
def _collective(rank: int) -> Iterator[None]:
    """A collective across processes that gloo failed (a process went away, or stayed silent
    past W2V_COLLECTIVE_TIMEOUT_S) as one line naming the lost process (`ReplicaLost`)."""
    try:
        yield
    except (jax.errors.JaxRuntimeError, ValueError) as error:  # the step's; process_allgather's
        failed = GLOO_FAILED.search(str(error))
        if failed is None or jax.process_count() == 1:
            raise
        _exit_before_the_shutdown_barrier()
        # gloo names the peer's address, not its process; of two processes it is the other.
        peer = 1 - rank if jax.process_count() == 2 else None
        unit = "replica" if jax.local_device_count() == 1 else "process"
        raise parallel.replica_lost(rank, peer, ": ".join(failed.groups()), unit) from None


class MeshReplicas:
    """The engine, whatever the model: a mesh of `replicas` devices, the batch split by rows
    over it, a gradient summed by `psum`. Put it first in the bases, before the
    single-device backend it distributes (whose `jax_device` it then replaces by the mesh's
    replicated sharding, so every `device_put` of that backend replicates)."""

    def _join_mesh(self, replicas: int) -> None:
        platform = self.jax_device.platform  # type: ignore[attr-defined]
        devices = jax.devices(platform)
        if len(devices) < replicas:
            raise ConfigError(f"--data-parallel {replicas} needs {replicas} {platform} devices; "
                              f"JAX has {len(devices)}")
        self.mesh = Mesh(np.array(devices[:replicas]), (AXIS,))
        self.replicas, self.rank = self.mesh.size, jax.process_index()
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        self.jax_device = NamedSharding(self.mesh, PartitionSpec())

    def _summed(self, gradients: Callable) -> Callable:
        """`gradients` (params, batch) -> (loss, grads) run on each device's share of the
        batch and summed over the mesh: one program in which XLA inserts the all-reduce."""
        def summed(params: Any, batch: Any) -> Any:
            return jax.lax.psum(gradients(params, batch), AXIS)  # this shard's, summed

        return jax.shard_map(summed, mesh=self.mesh,
                             in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                             out_specs=(PartitionSpec(), PartitionSpec()),
                             # The fast step's `lax.scan` starts from unsharded zeros.
                             check_vma=False)

    def _split(self, batch: Rows) -> Rows:
        """A host batch padded to a multiple of the replicas and split by rows over the mesh;
        each process places the rows of its own devices (every process reads the same
        stream)."""
        batch = parallel.pad_rows(batch, self.replicas)
        return type(batch)(*(jax.make_array_from_callback(array.shape, self._batch_sharding,
                                                          lambda index, array=array: array[index])
                             for array in batch))

    def train_step(self, batch: Any) -> jax.Array:
        # One collective program at a time: XLA's CPU client may start two queued programs
        # in different orders on the two device threads, whose all-reduces then wait for each
        # other (seen on PTB); a step is milliseconds, the wait costs little.
        with _collective(self.rank):
            return super().train_step(batch).block_until_ready()  # type: ignore[misc]

    def agree_to_stop(self, signum: int) -> int:
        if jax.process_count() == 1:
            return signum
        from jax.experimental import multihost_utils

        with _collective(self.rank):
            return int(np.max(multihost_utils.process_allgather(np.int32(signum))))


class DataParallelBackend(MeshReplicas, JaxBackend):
    """`JaxBackend` over a mesh of `replicas` devices: batch sharded, parameters replicated."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        self._join_mesh(replicas)
        gradients = self._summed(self._gradients)
        self._train_step = make_train_step(gradients, self._optimizer)
        self._loss_and_grads = jax.jit(gradients)
        self.init_params(seed)  # again, replicated over the mesh

    def _host_batch(self, batch: Batch) -> Batch:  # type: ignore[override]
        return self._split(JaxBackend._host_batch(batch))

    def eval_loss(self, batch: Batch) -> jax.Array:
        """The whole batch on every device: no collective, so none to order."""
        return self._eval_loss(self._params, JaxBackend._host_batch(batch)).block_until_ready()

    def set_params(self, params: Params) -> None:
        super().set_params(params)
        self._opt_state = jax.device_put(self._opt_state, self.jax_device)


class DataParallelVariant(MeshReplicas, VariantBackend):
    """The other combinations (`variants.VariantBackend`) on the same mesh: their
    `value_and_grad` summed over it, their stock optimiser on every device's copy."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int,
                 **options: Any) -> None:
        super().__init__(vocab_size, embed_size, **options)
        self._join_mesh(replicas)
        self.use_gradients(self._summed(jax.value_and_grad(self._eval_fn)))
        self.init_params(self.seed)  # again, replicated over the mesh

    def _device_batch(self, batch: VariantBatch) -> VariantBatch:
        return self._split(host_batch(batch))

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        super().set_tables(tables)
        self._opt_state = jax.device_put(self._opt_state, self.jax_device)

    def variant_eval(self, batch: VariantBatch) -> jax.Array:
        """The whole batch on every device: no collective, so none to order."""
        return self._eval(self._params, host_batch(batch)).block_until_ready()

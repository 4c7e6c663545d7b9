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
`jax.distributed.initialize` (README, "Data-parallel"); one process has no replica that can
die alone.
"""
from __future__ import annotations


import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from backends.base import Params
from backends.jax.backend import JaxBackend, make_train_step
from backends.jax.fast import Tables
from common import parallel
from common.batching import Batch
from common.errors import ConfigError

AXIS = "batch"


def reserve_host_devices(replicas: int) -> None:
    """Ask for `replicas` CPU devices before JAX starts; one line if it already started."""
    try:
        if jax.config.jax_num_cpu_devices < replicas:
            jax.config.update("jax_num_cpu_devices", replicas)
    except RuntimeError:  # JAX's backends are up: only what they already have is available
        count = len(jax.devices("cpu"))
        if count < replicas:
            raise ConfigError(
                f"JAX started with {count} CPU device(s) before --data-parallel {replicas} could "
                f"ask for more: run it in a fresh process (`w2v train` does), or set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={replicas}") from None


class DataParallelBackend(JaxBackend):
    """`JaxBackend` over a mesh of `replicas` devices: batch sharded, parameters replicated."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        devices = jax.devices(self.jax_device.platform)
        if len(devices) < replicas:
            raise ConfigError(f"--data-parallel {replicas} needs {replicas} "
                              f"{self.jax_device.platform} devices; JAX has {len(devices)}")
        self.mesh = Mesh(np.array(devices[:replicas]), (AXIS,))
        self.replicas = self.mesh.size
        self._batch_sharding = NamedSharding(self.mesh, PartitionSpec(AXIS))
        # Every `device_put` of the shell (parameters, moments, counts) now replicates.
        self.jax_device = NamedSharding(self.mesh, PartitionSpec())

        def summed(params: Tables, batch: Batch) -> tuple[jax.Array, Tables]:
            return jax.lax.psum(self._gradients(params, batch), AXIS)  # this shard's, summed

        gradients = jax.shard_map(summed, mesh=self.mesh,
                                  in_specs=(PartitionSpec(), PartitionSpec(AXIS)),
                                  out_specs=(PartitionSpec(), PartitionSpec()),
                                  # The fast step's `lax.scan` starts from unsharded zeros.
                                  check_vma=False)
        self._train_step = make_train_step(gradients, self._optimizer)
        self._loss_and_grads = jax.jit(gradients)
        self.init_params(seed)  # again, replicated over the mesh

    def _host_batch(self, batch: Batch) -> Batch:  # type: ignore[override]
        """The batch padded to a multiple of the replicas and split by rows over the mesh."""
        batch = parallel.pad_rows(JaxBackend._host_batch(batch), self.replicas)
        return Batch(*jax.device_put(tuple(batch), self._batch_sharding))

    def set_params(self, params: Params) -> None:
        super().set_params(params)
        self._opt_state = jax.device_put(self._opt_state, self.jax_device)



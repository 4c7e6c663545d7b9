"""TensorFlow data parallelism: `tf.distribute.MirroredStrategy` over N devices.

The model, Keras' Adam and the fast step's Adam are built in the strategy's scope, so every
variable is a `MirroredVariable` with one copy per device. Each global batch is split into N
equal shares (`experimental_distribute_values_from_function`), and `strategy.run` runs the
replica's part on its device:
- chapter step: the chapter's tape and `optimizer.apply_gradients`, whose Keras
  implementation all-reduces the replicas' gradients with `ReduceOp.SUM` before the update
  (the objective is a sum, so nothing is rescaled);
- fast step (and sparse_adam, which the config refuses with replicas for now): the blocked gradient per replica, `strategy.reduce(SUM)`, then
  the written-out Adam updates every copy alike. One step per call: the fast step's
  several-steps XLA program is single-device.
On a CPU the devices are logical CPUs, which must be configured before TensorFlow starts
(`prepare_replicas`). `MultiWorkerMirroredStrategy` (TF_CONFIG) is the same code over
several processes or hosts (README, "Data-parallel"); one process has no replica that can
die alone. Under TF_CONFIG a worker that went away fails the others' collectives
(`UnavailableError`, or `DeadlineExceededError` after W2V_COLLECTIVE_TIMEOUT_S): that
becomes one line naming the worker TensorFlow reports, instead of a traceback. The other
combinations (`DataParallelVariant`) run the chapter step's way under the same strategy:
their tape and stock Keras optimiser on every replica.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any, Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from backends.base import Params, normalize_device
from backends.tf import model
from backends.tf.backend import TFBackend
from backends.tf.variants import DTYPES, VariantBackend
from common import parallel
from common.batching import Batch
from common.errors import ConfigError
from common.variants import VariantBatch

BATCH_DTYPES = (np.int32, np.int32, np.float32, np.float32)  # the chapter's batch
SUM = tf.distribute.ReduceOp.SUM
# The strategy of a TF_CONFIG cluster, made once by `reserve_logical_cpus`.
_STRATEGY: tf.distribute.Strategy | None = None


def cluster() -> tuple[int, int]:
    """(workers, this worker's index) from TF_CONFIG; (1, 0) without it."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return 1, 0
    try:
        config = json.loads(text)
        return len(config["cluster"]["worker"]), int(config["task"]["index"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError("TF_CONFIG is not {\"cluster\": {\"worker\": [host:port, ...]}, "
                          "\"task\": {\"type\": \"worker\", \"index\": i}}") from None


def reserve_logical_cpus(replicas: int) -> None:
    """Split the CPU into this process's share of `replicas` logical devices before
    TensorFlow starts (one line when it started with fewer). Under TF_CONFIG, join the other
    workers (`MultiWorkerMirroredStrategy` must exist before TensorFlow runs anything)."""
    global _STRATEGY
    workers, _ = cluster()
    if replicas % workers:
        raise ConfigError(f"--data-parallel {replicas} does not split over the {workers} "
                          f"workers of TF_CONFIG: give a multiple of it")
    local = replicas // workers
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        if len(tf.config.get_logical_device_configuration(cpu) or ()) < local:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(local)])
        if workers > 1 and _STRATEGY is None:
            timeout = parallel.collective_timeout()
            _STRATEGY = tf.distribute.MultiWorkerMirroredStrategy(
                communication_options=tf.distribute.experimental.CommunicationOptions(
                    timeout_seconds=timeout))
    except RuntimeError:  # "Virtual devices cannot be modified after being initialized"
        count = len(tf.config.list_logical_devices("CPU"))
        if count < local:
            raise ConfigError(f"TensorFlow started with {count} logical CPU(s) before "
                              f"--data-parallel {replicas} could ask for more: run it in a "
                              f"fresh process (`w2v train` does)") from None


@contextlib.contextmanager
def _collective(rank: int) -> Iterator[None]:
    """A collective that failed because a worker went away, as one line (`ReplicaLost`)."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as error:
        text = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message).strip()
        # gRPC names the worker it lost: "remote target /job:worker/replica:0/task:1".
        peer = re.search(r"remote target /job:worker/replica:\d+/task:(\d+)", error.message)
        raise parallel.replica_lost(rank, int(peer.group(1)) if peer else None,
                                    text.splitlines()[0] if text else type(error).__name__
                                    ) from None


class MirroredReplicas:
    """The engine, whatever the model: a `MirroredStrategy` over `replicas` devices, each
    global batch split into their shares, gradients summed by the strategy. Put it first in
    the bases, before the single-device backend it distributes, and build that backend in
    `self.strategy.scope()`."""

    steps_per_call = 1

    def _mirror(self, replicas: int, device: str) -> None:
        kind, _ = normalize_device(device)
        kind = kind.upper()
        workers, self.rank = cluster()
        local = replicas // workers
        found = len(tf.config.list_logical_devices(kind))
        if found < local:
            raise ConfigError(f"--data-parallel {replicas} needs {local} {kind} devices here; "
                              f"TensorFlow has {found}")
        self.strategy = _STRATEGY or tf.distribute.MirroredStrategy(
            [f"/{kind}:{index}" for index in range(replicas)])
        self.replicas = self.strategy.num_replicas_in_sync
        if self.replicas != replicas:
            raise ConfigError(f"--data-parallel is {replicas} but the TF_CONFIG cluster has "
                              f"{self.replicas} replicas: launch one worker per share")

    def _distribute(self, batch: Any, dtypes: Sequence[Any]) -> tuple[Any, ...]:
        """A global batch -> per-replica tensors, replica r's share on device r."""
        shares = parallel.shards(batch, self.replicas)

        def share(index: int) -> Any:
            return self.strategy.experimental_distribute_values_from_function(
                lambda context: tf.constant(np.asarray(
                    shares[context.replica_id_in_sync_group][index], dtype=dtypes[index])))

        return tuple(share(index) for index in range(len(dtypes)))

    def _summed(self, gradients_of: Callable, batch: tuple[Any, ...]
                ) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """`gradients_of` (a replica's share -> its loss and dense gradients) on every
        replica, the results summed."""
        loss, gradients = self.strategy.run(gradients_of, args=batch)
        # One reduction each: MultiWorkerMirroredStrategy cannot pack tensors of mixed ranks.
        return (self.strategy.reduce(SUM, loss, axis=None),
                [self.strategy.reduce(SUM, gradient, axis=None) for gradient in gradients])

    def _apply(self, optimizer: keras.optimizers.Optimizer, gradients_of: Callable,
               variables: list[Any], batch: tuple[Any, ...], lr: tf.Tensor) -> tf.Tensor:
        """The chapter's tape and `optimizer.apply_gradients` on every replica's share; Keras
        sums the replicas' gradients (all-reduce SUM) before it updates each copy."""
        optimizer.learning_rate = lr
        if isinstance(optimizer, keras.optimizers.Adam):
            optimizer.epsilon.assign(model.torch_epsilon(optimizer.iterations + 1))

        def replica(*share: tf.Tensor) -> tf.Tensor:
            loss, gradients = gradients_of(*share)
            optimizer.apply_gradients(zip(gradients, variables))
            return loss

        return self.strategy.reduce(SUM, self.strategy.run(replica, args=batch), axis=None)

    def agree_to_stop(self, signum: int) -> int:
        if _STRATEGY is None:
            return signum
        # ReduceOp has SUM and MEAN only: the largest signal from the sum of one-hot flags.
        flags = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.one_hot(signum, 65, dtype=tf.int32))
        with _collective(self.rank):
            asked = np.flatnonzero(self.strategy.reduce(SUM, flags, axis=None).numpy()[1:])
        return int(asked[-1]) + 1 if len(asked) else 0

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        with _collective(self.rank):  # the losses of steps that may have failed
            return super().stack_losses(losses)  # type: ignore[misc]

    def train_steps(self, batches: Sequence[Any]) -> list[tf.Tensor]:
        return [self.train_step(batch) for batch in batches]  # type: ignore[attr-defined]


class DataParallelBackend(MirroredReplicas, TFBackend):
    """`TFBackend` under a `MirroredStrategy` of `replicas` devices."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        self._mirror(replicas, device)
        with self.strategy.scope():
            super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                             optimizer=optimizer, step=step)
        self.steps_per_call = 1
        self._replicated_step = tf.function(self._step_graph)
        self._replicated_grads = tf.function(self._grads_graph)

    def _replica_gradients(self, *batch: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        """One replica's share: its summed objective and dense gradients."""
        if self.step == "chapter":
            return model.objective_and_gradients(self.model, *batch)
        loss, gradients = self.trainer._gradients(*batch)
        return loss, list(gradients)

    def _grads_graph(self, *batch: Any) -> tuple[tf.Tensor, list[tf.Tensor]]:
        return self._summed(self._replica_gradients, batch)

    def _step_graph(self, centers: Any, contexts_negatives: Any, masks: Any, labels: Any,
                    lr: tf.Tensor, rows: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        batch = (centers, contexts_negatives, masks, labels)
        if self.step == "chapter":
            return self._apply(self.trainer.optimizer,
                               lambda *share: model.objective_and_gradients(self.model, *share),
                               self.model.trainable_variables, batch, lr)
        loss, gradients = self._grads_graph(*batch)
        tables = self.model.tables
        if self.trainer.sparse:  # the rows of the global batch, which every worker has
            self.trainer.adam.apply_rows(tuple(gradients), rows, tables, lr)
        else:
            self.trainer.adam.apply(tuple(gradients), tables, lr)
        return loss

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        loss, gradients = self._replicated_grads(*self._distribute(batch, BATCH_DTYPES))
        return float(loss), Params(*(np.asarray(g) for g in gradients))

    def train_step(self, batch: Batch) -> tf.Tensor:
        lr = tf.constant(self.next_lr(), tf.float32)
        batch = parallel.pad_rows(batch, self.replicas)  # as the shares are
        rows = tuple(tf.constant(np.asarray(ids, np.int32).reshape(-1))
                     for ids in (batch.centers, batch.contexts_negatives))
        with _collective(self.rank):
            return self._replicated_step(*self._distribute(batch, BATCH_DTYPES), lr, rows)


class DataParallelVariant(MirroredReplicas, VariantBackend):
    """The other combinations (`variants.VariantBackend`) under the same strategy: their
    tape and stock Keras optimiser on every replica's share (not XLA-compiled here: the
    strategy's all-reduce runs between the tape and the update)."""

    def __init__(self, vocab_size: int, embed_size: int, *, replicas: int, device: str = "cpu",
                 **options: Any) -> None:
        self._mirror(replicas, device)
        with self.strategy.scope():
            super().__init__(vocab_size, embed_size, device=device, **options)
        self._replicated_step = tf.function(self._step_on_replicas)
        self._replicated_grads = tf.function(
            lambda *batch: self._summed(self._gradients_graph, batch))

    def _step_on_replicas(self, *batch_and_lr: Any) -> tf.Tensor:
        *batch, lr = batch_and_lr
        return self._apply(self.keras_optimizer, self._gradients_graph,
                           list(self.weights_by_name.values()), tuple(batch), lr)

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        loss, gradients = self._replicated_grads(*self._distribute(batch, DTYPES))
        return float(loss), {name: np.asarray(g) for name, g in zip(self.table_names, gradients)}

    def variant_step(self, batch: VariantBatch, lr: float) -> tf.Tensor:
        with _collective(self.rank):
            return self._replicated_step(*self._distribute(batch, DTYPES),
                                         tf.constant(lr, tf.float32))

"""The TensorFlow 2 backend: the shell that joins the chosen step to `backends/base.py`.

`--step chapter` (`model.py`): Keras' `Embedding` pair, one `tf.GradientTape` over the whole
batch and Keras' Adam, one step per `tf.function` call. `--step fast` (`fast.py`): the same
objective and update, with autodiff over cache-sized blocks, several steps per call and Adam
written out. Every compiled function has a fixed input signature, so it is traced once, and
`jit_compile=True` (XLA); `fixed_shapes` makes the pipeline pad every batch to the same
(B, L), so XLA compiles it once too.

Optimisers (`optimizer=`):
- "adam" (default): the chapter's dense Adam with torch's semantics. The lookups'
  `tf.IndexedSlices` gradients are summed into dense (V, E) tensors, so every row's moments
  decay at every step, as in the chapter.
- "sparse_adam" (torch's SparseAdam) and "sgd" (word2vec's), `optim.RowOptimizer`: only the
  touched rows move. The chapter step keeps the tape's `tf.IndexedSlices` and updates the
  rows they name (a graph without XLA: `tf.unique` has a data-dependent shape); the fast
  step runs on a local batch of the rows it looks up (see `fast.py`).
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Any, ClassVar, Sequence

import numpy as np
import tensorflow as tf

from backends.base import PADDED, AdamState, Backend, Params, Work
from backends.tf import fast, model, optim, quiet_native_logs
from common.batching import Batch, stack_local

# Batch tensors as the compiled functions take them: ids int32 (what XLA's gather wants on
# every device), masks and labels float32. None dimensions: one trace serves any (B, L).
BATCH_DTYPES = (np.int32, np.int32, np.float32, np.float32)
BATCH_SIGNATURE = (tf.TensorSpec([None, 1], tf.int32, name="centers"),
                   tf.TensorSpec([None, None], tf.int32, name="contexts_negatives"),
                   tf.TensorSpec([None, None], tf.float32, name="masks"),
                   tf.TensorSpec([None, None], tf.float32, name="labels"))
SIGNATURES = {
    "batch": BATCH_SIGNATURE,
    # A batch and its step's learning rate (an argument, so a schedule never retraces).
    "step": (*BATCH_SIGNATURE, tf.TensorSpec([], tf.float32, name="lr")),
    # G batches stacked, (G, B, 1) ... (G, B, L), how many of them to train on, and each
    # step's learning rate (G,).
    "steps": (*(tf.TensorSpec([None, *spec.shape], spec.dtype, name=spec.name)
                for spec in BATCH_SIGNATURE),
              tf.TensorSpec([], tf.int32, name="count"),
              tf.TensorSpec([None], tf.float32, name="lrs")),
    # The sparse optimisers' fast step: a local batch (ids index `rows`), its rows (n,) and
    # which of them each table's update touches (2, n); stacked (G, ...) for the group.
    "local_batch": (*BATCH_SIGNATURE, tf.TensorSpec([None], tf.int32, name="rows")),
    "local_step": (*BATCH_SIGNATURE, tf.TensorSpec([None], tf.int32, name="rows"),
                   tf.TensorSpec([2, None], tf.float32, name="touched"),
                   tf.TensorSpec([], tf.float32, name="lr")),
    "local_steps": (*(tf.TensorSpec([None, *spec.shape], spec.dtype, name=spec.name)
                      for spec in BATCH_SIGNATURE),
                    tf.TensorSpec([None, None], tf.int32, name="rows"),
                    tf.TensorSpec([None, 2, None], tf.float32, name="touched"),
                    tf.TensorSpec([], tf.int32, name="count"),
                    tf.TensorSpec([None], tf.float32, name="lrs")),
}



class ChapterStep:
    """The chapter's step: `model.train_step` (one tape, Keras' Adam), one step per call."""

    def __init__(self, net: model.SkipGramModel, lr: float, traces: Counter[str]) -> None:
        self.net, self.traces = net, traces
        self.optimizer = model.adam(lr)
        self.optimizer.build(net.trainable_variables)  # its variables exist before tracing
        # Keras names each slot `<variable path with _>_<momentum|velocity>`.
        slots = {variable.name: variable.value for variable in self.optimizer.variables}
        self.moments = tuple(
            tuple(slots[f"{table.path.replace('/', '_')}_{kind}"]
                  for table in net.trainable_variables)
            for kind in ("momentum", "velocity"))
        self.step_count = self.optimizer.iterations.value
        self.train_step = tf.function(self._train_step, input_signature=SIGNATURES["step"],
                                      jit_compile=True)
        self.loss_and_grads = tf.function(self._loss_and_grads,
                                          input_signature=SIGNATURES["batch"], jit_compile=True)

    def _train_step(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                    labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        self.traces["train_step"] += 1  # Python side effects run only while tracing
        return model.train_step(self.net, self.optimizer, centers, contexts_negatives, masks,
                                labels, lr)

    def _loss_and_grads(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                        masks: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, list]:
        self.traces["loss_and_grads"] += 1
        return model.objective_and_gradients(self.net, centers, contexts_negatives, masks,
                                             labels)

    def reset(self) -> None:
        """Forget all state, as a fresh optimiser (the compiled step keeps its variables)."""
        self.step_count.assign(0)
        for moment in (*self.moments[0], *self.moments[1]):
            moment.assign(tf.zeros_like(moment))


class ChapterSparseStep:
    """The chapter's step with `--optimizer sparse_adam` or `sgd`: one tape, whose lookups'
    gradients stay `tf.IndexedSlices`, and `optim.RowOptimizer` on the rows they name."""

    def __init__(self, net: model.SkipGramModel, optimizer: str, traces: Counter[str]) -> None:
        self.net, self.traces = net, traces
        self.optimizer = optim.RowOptimizer(optimizer, net.tables)
        self.train_step = tf.function(self._train_step, input_signature=SIGNATURES["step"])
        self.loss_and_grads = tf.function(self._loss_and_grads,
                                          input_signature=SIGNATURES["batch"], jit_compile=True)

    def _train_step(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                    labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        self.traces["train_step"] += 1
        with tf.GradientTape() as tape:
            loss = self.net.objective(centers, contexts_negatives, masks, labels)
        slices = tape.gradient(loss, self.net.trainable_variables)
        self.optimizer.apply_slices(slices, self.net.tables, lr)
        return loss

    def _loss_and_grads(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                        masks: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, list]:
        self.traces["loss_and_grads"] += 1
        return model.objective_and_gradients(self.net, centers, contexts_negatives, masks,
                                             labels)

    @property
    def step_count(self) -> tf.Variable:
        return self.optimizer.step

    @property
    def moments(self) -> tuple[tuple[tf.Variable, ...], tuple[tf.Variable, ...]]:
        return self.optimizer.exp_avg, self.optimizer.exp_avg_sq

    def reset(self) -> None:
        self.optimizer.reset()


@functools.cache
def _gpu_count() -> int:
    """GPUs TensorFlow sees; the first query initialises CUDA, which may log (held back)."""
    with quiet_native_logs():
        return len(tf.config.list_physical_devices("GPU"))


class TFBackend(Backend):
    """TensorFlow 2 with XLA on CPU or GPU: `--device cpu`, `gpu`, `gpu:N`."""

    name: ClassVar[str] = "tf"
    framework: ClassVar[str] = "tensorflow"
    fixed_shapes: ClassVar[bool] = True  # XLA compiles one program per input shape
    # The fast step's steps per compiled call; the chapter step sets 1 on its instance.
    steps_per_call: ClassVar[int] = fast.STEPS_PER_CALL
    data_parallel: ClassVar[str] = "devices"  # distributed.py: MirroredStrategy

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        kind, index = self.check_device(device)
        self.tf_device = "/CPU:0" if kind == "cpu" else f"/GPU:{index}"
        # Python side effects run only while tracing: this counts traces per function.
        self.traces: Counter[str] = Counter()
        with tf.device(self.tf_device):
            self.model = model.SkipGramModel(vocab_size, embed_size)
            if step == "chapter":
                self.steps_per_call = 1
                self.trainer: ChapterStep | ChapterSparseStep | fast.FastStep = \
                    ChapterStep(self.model, lr, self.traces) if optimizer == "adam" else \
                    ChapterSparseStep(self.model, optimizer, self.traces)
            else:
                # Examples per autodiff block: cache-sized on a CPU, the whole batch on a GPU.
                block_rows = fast.CPU_BLOCK_ROWS if kind == "cpu" else None
                self.trainer = fast.FastStep(self.model, SIGNATURES,
                                             optimizer=optimizer,
                                             block_rows=block_rows, traces=self.traces)
        self._eval_loss = tf.function(self._eval_loss_graph, input_signature=BATCH_SIGNATURE,
                                      jit_compile=True)
        self.init_params(seed)

    # -- disclosure -------------------------------------------------------------------------
    def work(self) -> Work:
        if self.optimizer != "adam":
            how = "IndexedSlices" if self.step == "chapter" else "local rows"
            return Work(PADDED, "none", 1 if self.step == "chapter" else self.steps_per_call,
                        f"tf.function (XLA), GradientTape, {how}, {self.optimizer} on the "
                        "touched rows")
        if self.step == "chapter":
            return Work(PADDED, "none", 1, "tf.function (XLA), GradientTape, Keras Adam")
        return Work(PADDED, "none", self.steps_per_call,
                    "tf.function (XLA), GradientTape by blocks, Adam written out")

    @classmethod
    def set_threads(cls, threads: int) -> str:
        """Pin the CPUs, then TensorFlow's intra-op and inter-op pools (settable until its
        runtime starts, at the first operation)."""
        how = super().set_threads(threads)
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
                how += f"; tf intra-op and inter-op threads {threads}"
            except RuntimeError:
                how += " (TensorFlow's runtime had started: its pools keep their size)"
        return how

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> tf.Tensor:
        with tf.device(self.tf_device):
            return tf.convert_to_tensor(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def stack_losses(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        return tf.stack(losses).numpy()

    def _batch_tensors(self, batch: Batch) -> tuple[tf.Tensor, ...]:
        """Batch -> (B, 1), (B, L) int32 ids and (B, L) float32 masks, labels on the device."""
        with tf.device(self.tf_device):
            return tuple(tf.convert_to_tensor(np.asarray(array, dtype=dtype))
                         for array, dtype in zip(batch, BATCH_DTYPES))

    @property
    def _local(self) -> bool:
        """The fast step with a sparse optimiser: batches go in as local batches."""
        return self.step == "fast" and self.optimizer != "adam"

    def _stacked_tensors(self, batches: Sequence[Batch]) -> tuple[tf.Tensor, ...]:
        """Up to G = `steps_per_call` batches -> (G, B, 1), (G, B, L) ... on the device.

        Batches narrower or shorter than the widest are padded (id 0, mask 0), which changes
        no loss or gradient; slots past the last batch stay zero and are never trained on.
        G is always `steps_per_call`, so that every group, short or not, runs one program.
        """
        rows = max(batch.contexts_negatives.shape[0] for batch in batches)
        slots = max(batch.contexts_negatives.shape[1] for batch in batches)
        stacked = [np.zeros((self.steps_per_call, rows, width), dtype)
                   for width, dtype in zip((1, slots, slots, slots), BATCH_DTYPES)]
        for index, batch in enumerate(batches):
            for target, array in zip(stacked, batch):
                target[index, :array.shape[0], :array.shape[1]] = array
        with tf.device(self.tf_device):
            return tuple(tf.convert_to_tensor(array) for array in stacked)

    # -- the model --------------------------------------------------------------------------
    def embed(self, table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
        return model.embed(table, ids)

    def skip_gram(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                  center_table: tf.Tensor, context_table: tf.Tensor) -> tf.Tensor:
        return model.skip_gram(centers, contexts_negatives, center_table, context_table)

    def masked_bce(self, logits: tf.Tensor, labels: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        return model.masked_bce(logits, labels, masks)

    # -- parameters -------------------------------------------------------------------------

    def get_params(self) -> Params:
        # .numpy() of a CPU variable may share its buffer; the copy keeps training out of it.
        return Params(*(np.array(table.numpy()) for table in self.model.tables))

    def set_params(self, params: Params) -> None:
        self._check_params(params)
        for table, values in zip(self.model.tables, params):
            table.assign(np.asarray(values, dtype=np.float32))
        self.trainer.reset()
        self.adam_steps = 0

    # -- training ---------------------------------------------------------------------------
    def _eval_loss_graph(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                         masks: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        self.traces["eval_loss"] += 1
        return self.model.objective(centers, contexts_negatives, masks, labels)

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        if self._local:
            (local,), rows, _ = stack_local([batch])
            with tf.device(self.tf_device):
                loss, gradients = self.trainer.loss_and_grads(*self._batch_tensors(local),
                                                              tf.constant(rows[0]))
            dense = np.zeros((2, self.vocab_size, self.embed_size), np.float32)
            for table, gradient in zip(dense, gradients):
                np.add.at(table, rows[0], gradient.numpy())  # repeated 0s add padding's 0s
                table[0] = 0  # the padding row: no gradient reaches it
            return float(loss), Params(*dense)
        with tf.device(self.tf_device):
            loss, gradients = self.trainer.loss_and_grads(*self._batch_tensors(batch))
        return float(loss), Params(*(g.numpy() for g in gradients))

    def eval_loss(self, batch: Batch) -> tf.Tensor:
        """The forward alone, compiled by XLA (traced once); no variable is assigned."""
        with tf.device(self.tf_device):
            return self._eval_loss(*self._batch_tensors(batch))

    def train_step(self, batch: Batch) -> tf.Tensor:
        if self._local:
            (local,), rows, touched = stack_local([batch])
            with tf.device(self.tf_device):
                lr = tf.constant(self.next_lr(), tf.float32)
                return self.trainer.train_step(*self._batch_tensors(local),
                                               tf.constant(rows[0]), tf.constant(touched[0]), lr)
        with tf.device(self.tf_device):
            lr = tf.constant(self.next_lr(), tf.float32)
            return self.trainer.train_step(*self._batch_tensors(batch), lr)  # no sync

    def train_steps(self, batches: Sequence[Batch]) -> list[tf.Tensor]:
        """The fast step: `steps_per_call` batches per compiled call (a `tf.range` loop inside
        the program). The chapter step: one call per batch."""
        if self.step == "chapter":
            return super().train_steps(batches)
        losses: list[tf.Tensor] = []
        for start in range(0, len(batches), self.steps_per_call):
            group = batches[start:start + self.steps_per_call]
            lrs = np.zeros(self.steps_per_call, np.float32)
            lrs[:len(group)] = [self.next_lr() for _ in group]
            local: tuple[tf.Tensor, ...] = ()
            if self._local:
                group, rows, touched = stack_local(group)
                missing = self.steps_per_call - len(group)  # slots past the group: never run
                local = (tf.constant(np.pad(rows, [(0, missing), (0, 0)])),
                         tf.constant(np.pad(touched, [(0, missing), (0, 0), (0, 0)])))
            with tf.device(self.tf_device):
                group_losses = self.trainer.train_steps(*self._stacked_tensors(group), *local,
                                                        tf.constant(len(group), tf.int32),
                                                        tf.constant(lrs))
                losses.extend(tf.unstack(group_losses)[:len(group)])
        return losses

    def optimizer_state(self) -> AdamState:
        exp_avg, exp_avg_sq = self.trainer.moments
        return AdamState(int(self.trainer.step_count.numpy()),
                         Params(*(np.array(m.numpy()) for m in exp_avg)),
                         Params(*(np.array(v.numpy()) for v in exp_avg_sq)))

    def load_optimizer_state(self, state: AdamState) -> None:
        self._check_adam_state(state)
        self.trainer.step_count.assign(int(state.step))
        self.adam_steps = int(state.step)
        for variables, values in zip(self.trainer.moments, (state.exp_avg, state.exp_avg_sq)):
            for variable, table in zip(variables, values):
                variable.assign(np.asarray(table, dtype=np.float32))

    def synchronize(self) -> None:
        # TensorFlow runs ops eagerly but may queue GPU kernels; reading a value waits for
        # everything before it on that device.
        self.trainer.step_count.numpy()

    @classmethod
    def prepare_replicas(cls, replicas: int) -> None:
        from backends.tf.distributed import reserve_logical_cpus

        reserve_logical_cpus(replicas)

    @classmethod
    def process_index(cls) -> int:
        from backends.tf.distributed import cluster

        return cluster()[1]

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"] + [f"gpu:{index}" for index in range(_gpu_count())]

    @classmethod
    def gpu_unavailable(cls) -> str:
        if not tf.test.is_built_with_cuda():
            return (f"tensorflow {tf.__version__} is built without CUDA; install "
                    f"tensorflow[and-cuda]: make env-gpu (README: GPUs)")
        return (f"tensorflow {tf.__version__} is built with CUDA but sees no GPU (no NVIDIA "
                f"driver, CUDA libraries it cannot load, or CUDA_VISIBLE_DEVICES hides them)")

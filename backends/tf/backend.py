"""The TensorFlow 2 backend: the chapter's model under `tf.function`, compiled by XLA.

The training step (forward, `tf.GradientTape`, the Adam update) is a `tf.function` with
`jit_compile=True` and a fixed input signature, so it is traced once; `fixed_shapes` makes the
pipeline pad every batch to the same (B, L), so XLA compiles it once too. `train_steps` runs
`steps_per_call` steps in one call, a loop inside the compiled program.

CPU time per PTB step on the 2-core development machine (shared with other jobs, so ranges):
the plain `tf.function` step 18 ms; with XLA (`jit_compile`) 8 to 9.5 ms; with autodiff in
cache-sized blocks (`model.objective_and_gradients`) 5.5 to 7 ms; with 8 steps per call 3.7
to 5 ms, about 120,000 centre words/s.

Optimisers (`optimizer=`):
- "adam" (default): the chapter's dense Adam with torch's semantics (`model.Adam`). The
  lookups' `tf.IndexedSlices` gradients are summed into dense (V, E) tensors, so every row's
  moments decay at every step, as in the chapter.
- "sparse_adam": torch's SparseAdam (`model.LazyAdam`): only the rows a batch looks up move.
  A different optimiser (its losses differ from the chapter's), offered so that the flag
  means the same everywhere; under XLA it is no faster here. Its state has the same meaning,
  so it checkpoints through `AdamState`.
"""
from __future__ import annotations

import functools
from collections import Counter
from typing import Any, ClassVar, Sequence

import numpy as np
import tensorflow as tf

from backends.base import AdamState, Backend, Params
from backends.tf import model, quiet_native_logs
from common.batching import Batch
from common.errors import ConfigError

OPTIMIZERS = ("adam", "sparse_adam")

# Examples per autodiff block on a CPU: 32 examples' context vectors (32 * 60 * 100 floats,
# 750 KB) fit a core's L2 cache. Blocks of 16 to 128 measured alike on the development
# machine; one block of the whole batch (512, 12 MB) took 1.3 to 1.7x the CPU time per step.
CPU_BLOCK_ROWS = 32
# Batch tensors as the compiled functions take them: ids int32 (what XLA's gather wants on
# every device), masks and labels float32. None dimensions: one trace serves any (B, L).
BATCH_DTYPES = (np.int32, np.int32, np.float32, np.float32)
BATCH_SIGNATURE = (tf.TensorSpec([None, 1], tf.int32, name="centers"),
                   tf.TensorSpec([None, None], tf.int32, name="contexts_negatives"),
                   tf.TensorSpec([None, None], tf.float32, name="masks"),
                   tf.TensorSpec([None, None], tf.float32, name="labels"))
# `train_step`: a batch and its step's learning rate (an argument, so a schedule never retraces).
STEP_SIGNATURE = (*BATCH_SIGNATURE, tf.TensorSpec([], tf.float32, name="lr"))
# `train_steps`: G batches stacked, (G, B, 1) ... (G, B, L), how many of them to train on, and
# each step's learning rate (G,).
STACKED_SIGNATURE = (*(tf.TensorSpec([None, *spec.shape], spec.dtype, name=spec.name)
                       for spec in BATCH_SIGNATURE),
                     tf.TensorSpec([], tf.int32, name="count"),
                     tf.TensorSpec([None], tf.float32, name="lrs"))


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
    # Steps per compiled call in `train_steps` (a loop inside the program): 8 took 1.5 to 2.5 ms
    # of CPU time off each step on the development machine; 4 and 16 measured alike.
    steps_per_call: ClassVar[int] = 8

    def __init__(self, vocab_size: int, embed_size: int, *, lr: float = 0.002,
                 device: str = "cpu", seed: int = 0, optimizer: str = "adam",
                 step: str = "fast") -> None:
        super().__init__(vocab_size, embed_size, lr=lr, device=device, seed=seed,
                         optimizer=optimizer, step=step)
        kind, index = self.check_device(device)
        self.tf_device = "/CPU:0" if kind == "cpu" else f"/GPU:{index}"
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"the tf backend offers --optimizer {' or '.join(OPTIMIZERS)}, "
                              f"got {optimizer!r}")
        self.sparse = optimizer == "sparse_adam"
        # Examples per autodiff block (model.objective_and_gradients): cache-sized on a CPU.
        self.block_rows = CPU_BLOCK_ROWS if kind == "cpu" else None
        with tf.device(self.tf_device):
            self.model = model.SkipGram(vocab_size, embed_size, seed)
            adam_class = model.LazyAdam if self.sparse else model.Adam
            self._adam = adam_class(self.model.tables)
        # Python side effects run only while tracing: this counts traces per function.
        self.traces: Counter[str] = Counter()
        self._train_step = tf.function(self._train_step_graph, input_signature=STEP_SIGNATURE,
                                       jit_compile=True)
        self._train_steps = tf.function(self._train_steps_graph,
                                        input_signature=STACKED_SIGNATURE, jit_compile=True)
        self._loss_and_grads = tf.function(self._loss_and_grads_graph,
                                           input_signature=BATCH_SIGNATURE, jit_compile=True)
        self._eval_loss = tf.function(self._eval_loss_graph, input_signature=BATCH_SIGNATURE,
                                      jit_compile=True)
        self.init_params(seed)

    # -- arrays ---------------------------------------------------------------------------
    def asarray(self, x: np.ndarray) -> tf.Tensor:
        with tf.device(self.tf_device):
            return tf.convert_to_tensor(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)

    def losses_to_numpy(self, losses: list[Any]) -> np.ndarray:
        """One stack and one device -> host copy for all pending losses (one sync)."""
        if not losses:
            return np.zeros(0, dtype=np.float64)
        return tf.stack(losses).numpy().astype(np.float64)

    def _batch_tensors(self, batch: Batch) -> tuple[tf.Tensor, ...]:
        """Batch -> (B, 1), (B, L) int32 ids and (B, L) float32 masks, labels on the device."""
        with tf.device(self.tf_device):
            return tuple(tf.convert_to_tensor(np.asarray(array, dtype=dtype))
                         for array, dtype in zip(batch, BATCH_DTYPES))

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
        return tf.nn.embedding_lookup(table, ids)

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
        for values in params:
            self._check_shape(values, "parameter table")
        for table, values in zip(self.model.tables, params):
            table.assign(np.asarray(values, dtype=np.float32))
        self._adam.reset()
        self.adam_steps = 0

    # -- training ---------------------------------------------------------------------------
    def _gradients(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                   labels: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
        """The summed objective (0-d) and its dense (V, E) gradients, for both tables."""
        return model.objective_and_gradients(self.model, centers, contexts_negatives, masks,
                                             labels, self.block_rows)

    def _loss_and_grads_graph(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                              masks: tf.Tensor,
                              labels: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        self.traces["loss_and_grads"] += 1
        return self._gradients(centers, contexts_negatives, masks, labels)

    def _eval_loss_graph(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                         masks: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        self.traces["eval_loss"] += 1
        return self.model.objective(centers, contexts_negatives, masks, labels)

    def _train_step_graph(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                          masks: tf.Tensor, labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        self.traces["train_step"] += 1
        return self._step(centers, contexts_negatives, masks, labels, lr)

    def _train_steps_graph(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                           masks: tf.Tensor, labels: tf.Tensor, count: tf.Tensor,
                           lrs: tf.Tensor) -> tf.Tensor:
        """Steps on the first `count` of G stacked batches, in order -> (G,) losses."""
        self.traces["train_steps"] += 1
        # A loop in the program, not in Python: one dispatch for G steps. G is static once XLA
        # sees the shapes, `count` is not, so one compiled program serves every group.
        losses = tf.zeros(tf.shape(centers)[:1])
        for step in tf.range(count):
            loss = self._step(centers[step], contexts_negatives[step], masks[step], labels[step],
                              lrs[step])
            losses = tf.tensor_scatter_nd_update(losses, [[step]], [loss])
        return losses

    def _step(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
              labels: tf.Tensor, lr: tf.Tensor) -> tf.Tensor:
        """One optimiser step (in a graph); returns the summed objective."""
        loss, gradients = self._gradients(centers, contexts_negatives, masks, labels)
        if self.sparse:
            rows = (tf.reshape(centers, [-1]), tf.reshape(contexts_negatives, [-1]))
            self._adam.apply_rows(gradients, rows, self.model.tables, lr)
        else:
            self._adam.apply(gradients, self.model.tables, lr)
        return loss

    def loss_and_grads(self, batch: Batch) -> tuple[float, Params]:
        with tf.device(self.tf_device):
            loss, gradients = self._loss_and_grads(*self._batch_tensors(batch))
        return float(loss), Params(*(g.numpy() for g in gradients))

    def eval_loss(self, batch: Batch) -> tf.Tensor:
        """The forward alone, compiled by XLA (traced once); no variable is assigned."""
        with tf.device(self.tf_device):
            return self._eval_loss(*self._batch_tensors(batch))

    def train_step(self, batch: Batch) -> tf.Tensor:
        with tf.device(self.tf_device):
            lr = tf.constant(self.next_lr(), tf.float32)
            return self._train_step(*self._batch_tensors(batch), lr)  # no .numpy(): no sync

    def train_steps(self, batches: Sequence[Batch]) -> list[tf.Tensor]:
        """`steps_per_call` batches per compiled call: a `tf.range` loop inside the program."""
        losses: list[tf.Tensor] = []
        for start in range(0, len(batches), self.steps_per_call):
            group = batches[start:start + self.steps_per_call]
            lrs = np.zeros(self.steps_per_call, np.float32)
            lrs[:len(group)] = [self.next_lr() for _ in group]
            with tf.device(self.tf_device):
                group_losses = self._train_steps(*self._stacked_tensors(group),
                                                 tf.constant(len(group), tf.int32),
                                                 tf.constant(lrs))
                losses.extend(tf.unstack(group_losses)[:len(group)])
        return losses

    def optimizer_state(self) -> AdamState:
        adam = self._adam
        return AdamState(int(adam.step.numpy()),
                         Params(*(np.array(m.numpy()) for m in adam.exp_avg)),
                         Params(*(np.array(v.numpy()) for v in adam.exp_avg_sq)))

    def load_optimizer_state(self, state: AdamState) -> None:
        for table in (*state.exp_avg, *state.exp_avg_sq):
            self._check_shape(table, "optimizer state")
        adam = self._adam
        adam.step.assign(int(state.step))
        self.adam_steps = int(state.step)
        for variables, values in ((adam.exp_avg, state.exp_avg),
                                  (adam.exp_avg_sq, state.exp_avg_sq)):
            for variable, table in zip(variables, values):
                variable.assign(np.asarray(table, dtype=np.float32))

    def synchronize(self) -> None:
        # TensorFlow runs ops eagerly but may queue GPU kernels; reading a value waits for
        # everything before it on that device.
        self._adam.step.numpy()

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

    # -- use ------------------------------------------------------------------------------
    def similar(self, query_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The chapter's `get_similar_tokens` for Q queries at once: (Q,) -> (Q, k), (Q, k)."""
        with tf.device(self.tf_device):
            table = self.model.center                                           # (V, E)
            ids = tf.convert_to_tensor(np.asarray(query_ids, dtype=np.int32))
            queries = tf.gather(table, ids)                                     # (Q, E)
            norms = (tf.reduce_sum(table * table, axis=1)[None, :]
                     * tf.reduce_sum(queries * queries, axis=1)[:, None])
            cos = tf.matmul(queries, table, transpose_b=True) / tf.sqrt(norms + 1e-9)
            # The chapter takes top k+1 and drops the first, assuming it is the query; masking
            # the query is exact even when another word ties with it.
            query_cells = tf.stack([tf.range(tf.size(ids)), ids], axis=1)
            cos = tf.tensor_scatter_nd_update(
                cos, query_cells, tf.fill(tf.shape(ids), -np.inf))
            values, top = tf.math.top_k(cos, k=min(k, self.vocab_size))
        return top.numpy().astype(np.int64), values.numpy()

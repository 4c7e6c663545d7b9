"""The tf backend's tuned step (`--step fast`): the chapter's objective and gradient, faster.

Three changes, each giving the same numbers (benchmarks/README.md has the measurements):
- autodiff over cache-sized blocks of the batch (`objective_and_gradients`), summed: on a CPU
  a whole batch's (B, L, E) context rows stream through memory three times per step;
- several steps per compiled call (`FastStep.train_steps`, a `tf.range` loop in the program):
  one dispatch per group instead of one per step;
- torch's Adam written out (`Adam`) in the same XLA program.
`--optimizer sparse_adam` and `sgd` (`optim.RowOptimizer`) run on a local batch instead: the
host renumbers each batch to the rows it looks up (`common.batching.localize`), the program
gathers those rows, differentiates with respect to them and scatters the update back, so a
step costs what the batch touches, not V.
"""
from __future__ import annotations

from collections import Counter

import tensorflow as tf

from backends.base import ADAM_BETAS, ADAM_EPS
from backends.tf.model import SkipGramModel, per_example_objective, skip_gram
from backends.tf.optim import RowOptimizer

# Examples per autodiff block on a CPU: 32 examples' context vectors (32 * 60 * 100 floats,
# 750 KB) fit a core's L2 cache, where the whole batch's (512, 12 MB) does not.
CPU_BLOCK_ROWS = 32
# Steps per compiled call in `FastStep.train_steps`.
STEPS_PER_CALL = 8


def add_gradient(total: tf.Tensor, gradient: tf.IndexedSlices | tf.Tensor) -> tf.Tensor:
    """`total` (V, E) plus a lookup's gradient, repeated ids summed.

    `tape.gradient` returns a gather's gradient as `tf.IndexedSlices`: one row per id looked
    up (B * L for the context table), not summed. The chapter's dense Adam needs all V rows.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.tensor_scatter_nd_add(total, gradient.indices[:, None], gradient.values)
    return total + gradient


def objective_and_gradients(tables: tuple[tf.Variable | tf.Tensor, ...], centers: tf.Tensor,
                            contexts_negatives: tf.Tensor, masks: tf.Tensor, labels: tf.Tensor,
                            block_rows: int | None
                            ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """The summed objective (0-d) and its dense (V, E) gradients for both `tables` (the
    model's variables, or a local batch's gathered rows).

    (B, 1), (B, L) ids, (B, L) masks and labels. With `block_rows`, autodiff runs over blocks
    of that many examples in a `tf.range` loop and the blocks' gradients are added up. The
    objective is a sum over examples, so this is the batch's gradient (summed in another
    order). Why: a batch of 512 looks up B * L * E floats = 12 MB of context vectors, and the
    forward, the backward and the gradient rows each stream that much through memory; a block
    of 32 (750 KB) stays in a CPU core's L2 cache. A GPU wants the opposite (few large
    kernels): there `block_rows` is None, one block.
    """
    tensors = (centers, contexts_negatives, masks, labels)
    if block_rows is None:
        blocks, num_blocks = [t[None] for t in tensors], 1
    else:
        rows = tf.shape(centers)[0]
        num_blocks = (rows + block_rows - 1) // block_rows
        # Padding rows (id 0, mask 0) add exactly zero to the loss and the gradients.
        padding = [[0, num_blocks * block_rows - rows], [0, 0]]
        blocks = [tf.reshape(tf.pad(t, padding), [num_blocks, block_rows, -1])
                  for t in tensors]                                # (blocks, rows, ...)
    loss = tf.zeros([], tables[0].dtype)
    gradients = tuple(tf.zeros_like(table) for table in tables)
    for block in tf.range(num_blocks):  # AutoGraph: a tf.while_loop, XLA keeps it a loop
        with tf.GradientTape() as tape:
            tape.watch(tables)  # gathered rows are tensors, not variables
            block_centers, block_contexts, block_masks, block_labels = (b[block] for b in blocks)
            logits = tf.reshape(skip_gram(block_centers, block_contexts, *tables),
                                tf.shape(block_labels))
            block_loss = tf.reduce_sum(per_example_objective(logits, block_labels, block_masks))
        block_gradients = tape.gradient(block_loss, tables)
        gradients = tuple(add_gradient(total, gradient)
                          for total, gradient in zip(gradients, block_gradients))
        loss += block_loss
    return loss, gradients


class Adam(tf.Module):
    """torch.optim.Adam, dense: every row's moments decay at every step, touched or not.

        m = m + (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The chapter step gets the same update from Keras' Adam (`model.torch_epsilon`); written
    out, it compiles into the grouped-steps program with the blocks' gradient, and
    the chapter step's Keras Adam shares its state.
    """

    def __init__(self, tables: tuple[tf.Variable, ...]) -> None:
        super().__init__(name="adam")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.exp_avg = tuple(tf.Variable(tf.zeros_like(t), trainable=False, name="exp_avg")
                             for t in tables)
        self.exp_avg_sq = tuple(tf.Variable(tf.zeros_like(t), trainable=False,
                                            name="exp_avg_sq") for t in tables)

    def reset(self) -> None:
        """Forget all state, as a fresh optimiser."""
        self.step.assign(0)
        for moment in (*self.exp_avg, *self.exp_avg_sq):
            moment.assign(tf.zeros_like(moment))

    def _bias_corrections(self) -> tuple[tf.Tensor, tf.Tensor]:
        """(1 - beta1^t, sqrt(1 - beta2^t)) for the step just counted, as float32."""
        beta1, beta2 = ADAM_BETAS
        # float64, as torch's Python floats: in float32, 1 - 0.999^t loses digits to
        # cancellation (1e-5 relative at t = 1).
        step = tf.cast(self.step, tf.float64)
        return (tf.cast(1 - beta1 ** step, tf.float32),
                tf.cast(tf.sqrt(1 - beta2 ** step), tf.float32))

    def apply(self, gradients: tuple[tf.Tensor, ...], tables: tuple[tf.Variable, ...],
              lr: tf.Tensor) -> None:
        """One step of rate `lr` on dense (V, E) gradients, in place."""
        beta1, beta2 = ADAM_BETAS
        self.step.assign_add(1)
        bias_correction1, bias_correction2_sqrt = self._bias_corrections()
        step_size = lr / bias_correction1
        for table, gradient, exp_avg, exp_avg_sq in zip(tables, gradients, self.exp_avg,
                                                        self.exp_avg_sq):
            exp_avg.assign_add((gradient - exp_avg) * (1 - beta1))  # torch's lerp
            exp_avg_sq.assign(exp_avg_sq * beta2 + gradient * gradient * (1 - beta2))
            denominator = tf.sqrt(exp_avg_sq) / bias_correction2_sqrt + ADAM_EPS
            table.assign_sub(step_size * exp_avg / denominator)


class FastStep:
    """The tuned step's compiled functions and optimiser state, over `net`'s two tables."""

    def __init__(self, net: SkipGramModel, signatures: dict, *, optimizer: str,
                 block_rows: int | None, traces: Counter[str]) -> None:
        self.net, self.block_rows, self.traces = net, block_rows, traces
        # sparse: every input carries the local batch's rows (n,) and touched flags (2, n).
        self.sparse = optimizer != "adam"
        self.adam = RowOptimizer(optimizer, net.tables) if self.sparse else Adam(net.tables)
        kind = "local_" if self.sparse else ""
        compiled = dict(jit_compile=True)
        self.train_step = tf.function(self._train_step,
                                      input_signature=signatures[kind + "step"], **compiled)
        self.train_steps = tf.function(self._train_steps,
                                       input_signature=signatures[kind + "steps"], **compiled)
        self.loss_and_grads = tf.function(self._loss_and_grads,
                                          input_signature=signatures[kind + "batch"], **compiled)

    def _gradients(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                   labels: tf.Tensor, *local: tf.Tensor
                   ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
        """Over the tables, or (sparse) over their rows `local[0]`, gathered."""
        tables = tuple(tf.gather(t, local[0]) for t in self.net.tables) if local else \
            self.net.tables
        return objective_and_gradients(tables, centers, contexts_negatives, masks, labels,
                                       self.block_rows)

    def _loss_and_grads(self, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                        masks: tf.Tensor, labels: tf.Tensor,
                        *local: tf.Tensor) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
        self.traces["loss_and_grads"] += 1  # Python side effects run only while tracing
        return self._gradients(centers, contexts_negatives, masks, labels, *local)

    def _train_step(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                    labels: tf.Tensor, *rest: tf.Tensor) -> tf.Tensor:
        self.traces["train_step"] += 1
        return self._step(centers, contexts_negatives, masks, labels, *rest)

    def _train_steps(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                     labels: tf.Tensor, *rest: tf.Tensor) -> tf.Tensor:
        """Steps on the first `count` of G stacked batches, in order -> (G,) losses.

        `rest`: (sparse: the rows (G, n) and touched flags (G, 2, n),) count, lrs (G,)."""
        self.traces["train_steps"] += 1
        *local, count, lrs = rest
        # A loop in the program, not in Python: one dispatch for G steps. G is static once XLA
        # sees the shapes, `count` is not, so one compiled program serves every group.
        losses = tf.zeros(tf.shape(centers)[:1])
        for step in tf.range(count):
            loss = self._step(centers[step], contexts_negatives[step], masks[step], labels[step],
                              *(t[step] for t in local), lrs[step])
            losses = tf.tensor_scatter_nd_update(losses, [[step]], [loss])
        return losses

    def _step(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
              labels: tf.Tensor, *rest: tf.Tensor) -> tf.Tensor:
        """One optimiser step (in a graph); returns the summed objective.

        `rest`: (sparse: the local batch's rows (n,) and touched flags (2, n),) the rate."""
        *local, lr = rest
        loss, gradients = self._gradients(centers, contexts_negatives, masks, labels,
                                          *local[:1])
        if self.sparse:
            self.adam.apply_local(*local, gradients, self.net.tables, lr)
        else:
            self.adam.apply(gradients, self.net.tables, lr)
        return loss

    # -- the optimiser's state, as the backend exchanges it ---------------------------------
    @property
    def step_count(self) -> tf.Variable:
        return self.adam.step

    @property
    def moments(self) -> tuple[tuple[tf.Variable, ...], tuple[tf.Variable, ...]]:
        """(first moments, second moments), each (centre, context)."""
        return self.adam.exp_avg, self.adam.exp_avg_sq

    def reset(self) -> None:
        self.adam.reset()

"""The chapter's model in TensorFlow 2: the embedding pair, `skip_gram` by batched `matmul`,
the masked loss, and the two Adam updates the backend compiles into its step.

The tables are plain `tf.Variable`s read with `tf.nn.embedding_lookup`, gathered in a
`tf.Module`, rather than `tf.keras.layers.Embedding`: nothing here uses Keras' training loop,
and its Adam would have to be replaced anyway (eps placement, below). A Keras 3 layer would
add a backend-neutral variable wrapper and a Keras import (about a second) around the same
gather. Either way the gradient of a lookup is a `tf.IndexedSlices` (rows, ids), which
`add_gradient` sums into a dense (V, E) tensor.
"""
from __future__ import annotations

import tensorflow as tf

from backends.base import ADAM_BETAS, ADAM_EPS


def glorot_uniform(vocab_size: int, embed_size: int, seed: tuple[int, int]) -> tf.Tensor:
    """Keras' `glorot_uniform` (= torch's `xavier_uniform_`, gain 1) for a (V, E) table.

    U(-b, b) with b = sqrt(6 / (fan_in + fan_out)); for a 2-D table the fans are its two
    dimensions. Stateless, so the same `seed` draws the same table.
    """
    bound = (6.0 / (vocab_size + embed_size)) ** 0.5
    return tf.random.stateless_uniform((vocab_size, embed_size), seed, -bound, bound)


def skip_gram(centers: tf.Tensor, contexts_negatives: tf.Tensor, center_table: tf.Tensor,
              context_table: tf.Tensor) -> tf.Tensor:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), the chapter's `bmm(v, u^T)`.
    """
    v = tf.nn.embedding_lookup(center_table, centers)              # (B, 1, E)
    u = tf.nn.embedding_lookup(context_table, contexts_negatives)  # (B, L, E)
    return tf.matmul(v, u, transpose_b=True)


def masked_bce(logits: tf.Tensor, labels: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """The chapter's `SigmoidBCELoss`: (B, L) logits, labels, masks -> (B,) mean over L."""
    # sigmoid_cross_entropy_with_logits wants labels of the logits' dtype; the chapter's
    # example passes integer masks.
    labels = tf.cast(labels, logits.dtype)
    masks = tf.cast(masks, logits.dtype)
    losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(masks * losses, axis=1)


def per_example_objective(logits: tf.Tensor, labels: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the max(., 1) makes the all-padding rows of a
    padded last batch count 0 instead of 0/0.
    """
    slots = tf.cast(tf.shape(masks)[1], logits.dtype)
    real = tf.maximum(tf.reduce_sum(tf.cast(masks, logits.dtype), axis=1), 1.0)
    return masked_bce(logits, labels, masks) * slots / real


class SkipGram(tf.Module):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1])."""

    def __init__(self, vocab_size: int, embed_size: int, seed: int = 0) -> None:
        super().__init__(name="skip_gram")
        # Xavier-uniform, as the chapter's `init_weights`. The backend then overwrites both
        # tables from `init_params_numpy`, so that a seed means the same tables everywhere;
        # this keeps the module right when used on its own.
        self.center = tf.Variable(glorot_uniform(vocab_size, embed_size, (seed, 0)),
                                  name="center")
        self.context = tf.Variable(glorot_uniform(vocab_size, embed_size, (seed, 1)),
                                   name="context")

    @property
    def tables(self) -> tuple[tf.Variable, tf.Variable]:
        return self.center, self.context

    def __call__(self, centers: tf.Tensor, contexts_negatives: tf.Tensor) -> tf.Tensor:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        return skip_gram(centers, contexts_negatives, self.center, self.context)

    def objective(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                  labels: tf.Tensor) -> tf.Tensor:
        """The optimised quantity, the chapter's `l.sum()`: a 0-d tensor."""
        logits = tf.reshape(self(centers, contexts_negatives), tf.shape(labels))
        return tf.reduce_sum(per_example_objective(logits, labels, masks))


def add_gradient(total: tf.Tensor, gradient: tf.IndexedSlices | tf.Tensor) -> tf.Tensor:
    """`total` (V, E) plus a lookup's gradient, repeated ids summed.

    `tape.gradient` returns a gather's gradient as `tf.IndexedSlices`: one row per id looked
    up (B * L for the context table), not summed. The chapter's dense Adam needs all V rows.
    """
    if isinstance(gradient, tf.IndexedSlices):
        return tf.tensor_scatter_nd_add(total, gradient.indices[:, None], gradient.values)
    return total + gradient


def objective_and_gradients(net: SkipGram, centers: tf.Tensor, contexts_negatives: tf.Tensor,
                            masks: tf.Tensor, labels: tf.Tensor, block_rows: int | None
                            ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor]]:
    """The summed objective (0-d) and its dense (V, E) gradients for both tables.

    (B, 1), (B, L) ids, (B, L) masks and labels. With `block_rows`, autodiff runs over blocks
    of that many examples in a `tf.range` loop and the blocks' gradients are added up. The
    objective is a sum over examples, so this is the batch's gradient (summed in another
    order). Why: a batch of 512 looks up B * L * E floats = 12 MB of context vectors, and the
    forward, the backward and the gradient rows each stream that much through memory. A block
    of 32 (750 KB) stays in a CPU core's L2 cache: the step took 25 to 40% less CPU time.
    A GPU wants the opposite (few large kernels): there `block_rows` is None, one block.
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
    loss = tf.zeros([], net.center.dtype)
    gradients = (tf.zeros_like(net.center), tf.zeros_like(net.context))
    for block in tf.range(num_blocks):  # AutoGraph: a tf.while_loop, XLA keeps it a loop
        with tf.GradientTape() as tape:
            block_loss = net.objective(*(b[block] for b in blocks))
        block_gradients = tape.gradient(block_loss, net.tables)
        gradients = tuple(add_gradient(total, gradient)
                          for total, gradient in zip(gradients, block_gradients))
        loss += block_loss
    return loss, gradients


class Adam(tf.Module):
    """torch.optim.Adam, dense: every row's moments decay at every step, touched or not.

        m = m + (1 - beta1) (g - m);  v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    Not `tf.keras.optimizers.Adam`: Keras folds the bias corrections into the learning rate,
    lr_t = lr sqrt(1 - beta2^t) / (1 - beta1^t), and adds eps to the *uncorrected* sqrt(v),
    p -= lr_t m / (sqrt(v) + eps), with eps 1e-7 by default. That equals torch's update only
    with eps_keras = eps sqrt(1 - beta2^t), which changes every step, so Keras cannot be
    configured into torch's Adam; early steps (small t, where sqrt(1 - beta2^t) ~ 0.03) differ
    most. Written out, the update also compiles into the same XLA program as the gradient.
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


class LazyAdam(Adam):
    """torch.optim.SparseAdam: only the rows a batch looks up move; the others' moments wait.

    A different optimiser from the chapter's: a row skipped by a step keeps its moments
    instead of decaying them. Its update is SparseAdam's, with eps added to the uncorrected
    sqrt(v) (step size lr sqrt(1 - beta2^t) / (1 - beta1^t)), so `--optimizer sparse_adam`
    means the same in every backend. Padding slots look up row 0 (`<unk>`), so row 0 counts
    as touched, as in torch.

    XLA needs static shapes and the set of touched rows changes every batch, so the update is
    a masked pass over all rows (`tf.where`), not a gather and scatter of the touched ones.
    So on PTB it is no faster than the dense Adam (a step took 20 to 30% more CPU time);
    gathering and scattering every looked-up row (B * L of them, repeats included) took 3x.
    """

    def apply_rows(self, gradients: tuple[tf.Tensor, ...], ids: tuple[tf.Tensor, ...],
                   tables: tuple[tf.Variable, ...], lr: tf.Tensor) -> None:
        """One step of rate `lr` on the rows named in `ids` (n,) of each table; `gradients`
        dense (V, E)."""
        beta1, beta2 = ADAM_BETAS
        self.step.assign_add(1)
        bias_correction1, bias_correction2_sqrt = self._bias_corrections()
        step_size = lr * bias_correction2_sqrt / bias_correction1
        for table, gradient, rows, exp_avg, exp_avg_sq in zip(tables, gradients, ids,
                                                              self.exp_avg, self.exp_avg_sq):
            looked_up = tf.scatter_nd(rows[:, None], tf.ones_like(rows), tf.shape(table)[:1])
            touched = (looked_up > 0)[:, None]                                   # (V, 1)
            new_exp_avg = exp_avg + (gradient - exp_avg) * (1 - beta1)
            new_exp_avg_sq = exp_avg_sq + (gradient * gradient - exp_avg_sq) * (1 - beta2)
            update = step_size * new_exp_avg / (tf.sqrt(new_exp_avg_sq) + ADAM_EPS)
            exp_avg.assign(tf.where(touched, new_exp_avg, exp_avg))
            exp_avg_sq.assign(tf.where(touched, new_exp_avg_sq, exp_avg_sq))
            table.assign_sub(tf.where(touched, update, tf.zeros_like(update)))

"""The chapter's model in TensorFlow/Keras: the embedding pair, `skip_gram` by batched `matmul`,
the masked loss, and the chapter's step: one `GradientTape` over the batch, Keras' Adam.

The tables are two `keras.layers.Embedding`s in a `keras.Model`, with Keras' `glorot_uniform`
(= torch's `xavier_uniform_`); a lookup's gradient is a `tf.IndexedSlices` (one row per id
looked up), which the step sums into a dense (V, E) gradient, so that Adam decays every row's
moments at every step as the chapter's dense `torch.optim.Adam` does.

Keras' Adam places eps elsewhere than torch's (see `torch_epsilon`); with eps set per step it
is torch's update, so the chapter step trains with the stock optimiser.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from backends.base import ADAM_BETAS, ADAM_EPS


def embed(table: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Rows of `table` (V, E) at `ids` (...) -> (..., E); what `keras.layers.Embedding` computes."""
    return tf.nn.embedding_lookup(table, ids)


def skip_gram(centers: tf.Tensor, contexts_negatives: tf.Tensor, center_table: tf.Tensor,
              context_table: tf.Tensor) -> tf.Tensor:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), the chapter's `bmm(v, u^T)`.
    """
    v = embed(center_table, centers)              # (B, 1, E)
    u = embed(context_table, contexts_negatives)  # (B, L, E)
    return tf.linalg.matmul(v, u, transpose_b=True)


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


class SkipGramModel(keras.Model):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1]).

    Xavier-uniform (Keras' `glorot_uniform`), as the chapter's `init_weights`. The backend then
    overwrites both tables from `init_params_numpy`, so that a seed means the same tables in
    every backend; this keeps the model right when used on its own.
    """

    def __init__(self, vocab_size: int, embed_size: int) -> None:
        super().__init__(name="skip_gram")
        self.center = keras.layers.Embedding(vocab_size, embed_size, name="center",
                                             embeddings_initializer="glorot_uniform")
        self.context = keras.layers.Embedding(vocab_size, embed_size, name="context",
                                              embeddings_initializer="glorot_uniform")
        self.center.build()
        self.context.build()

    @property
    def tables(self) -> tuple[tf.Variable, tf.Variable]:
        """The two (V, E) tables as TensorFlow variables (Keras wraps each one)."""
        return self.center.embeddings.value, self.context.embeddings.value

    def call(self, centers: tf.Tensor, contexts_negatives: tf.Tensor) -> tf.Tensor:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        return skip_gram(centers, contexts_negatives, *self.tables)

    def objective(self, centers: tf.Tensor, contexts_negatives: tf.Tensor, masks: tf.Tensor,
                  labels: tf.Tensor) -> tf.Tensor:
        """The optimised quantity, the chapter's `l.sum()`: a 0-d tensor."""
        logits = tf.reshape(self(centers, contexts_negatives), tf.shape(labels))
        return tf.reduce_sum(per_example_objective(logits, labels, masks))


def dense(gradient: tf.IndexedSlices | tf.Tensor) -> tf.Tensor:
    """A lookup's gradient as a dense (V, E) tensor, repeated ids summed (rows not looked up 0)."""
    return tf.convert_to_tensor(gradient)


def objective_and_gradients(net: SkipGramModel, centers: tf.Tensor,
                            contexts_negatives: tf.Tensor, masks: tf.Tensor, labels: tf.Tensor
                            ) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """The summed objective (0-d) and its dense (V, E) gradients, by one tape over the batch."""
    with tf.GradientTape() as tape:
        loss = net.objective(centers, contexts_negatives, masks, labels)
    return loss, [dense(g) for g in tape.gradient(loss, net.trainable_variables)]


def adam(learning_rate: float) -> keras.optimizers.Adam:
    """Keras' Adam with torch's betas, its eps a variable that `train_step` sets per step."""
    beta1, beta2 = ADAM_BETAS
    return keras.optimizers.Adam(learning_rate, beta_1=beta1, beta_2=beta2,
                                 epsilon=tf.Variable(ADAM_EPS, trainable=False, name="epsilon"))


def torch_epsilon(step: tf.Tensor) -> tf.Tensor:
    """The eps that makes Keras' Adam step `step` (1, 2, ...) equal torch's: eps sqrt(1 - b2^t).

    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    Keras:  p -= lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    (keras/src/optimizers/adam.py, `update_step`). Multiplying torch's numerator and
    denominator by sqrt(1 - b2^t) gives Keras' form with eps sqrt(1 - b2^t): Keras' eps sits
    outside the second bias correction. With a constant eps the early steps (sqrt(1 - b2^t)
    ~ 0.03 at t = 1) differ most, wherever sqrt(v) is not far above eps. Computed in float64:
    in float32, 1 - 0.999^t loses digits to cancellation.
    """
    beta2 = ADAM_BETAS[1]
    step = tf.cast(step, tf.float64)
    return tf.cast(ADAM_EPS * tf.sqrt(1 - tf.constant(beta2, tf.float64) ** step), tf.float32)


def train_step(net: SkipGramModel, optimizer: keras.optimizers.Adam, centers: tf.Tensor,
               contexts_negatives: tf.Tensor, masks: tf.Tensor, labels: tf.Tensor,
               learning_rate: tf.Tensor) -> tf.Tensor:
    """The chapter's loop body: one tape, one Adam step of rate `learning_rate`; the 0-d loss."""
    loss, gradients = objective_and_gradients(net, centers, contexts_negatives, masks, labels)
    optimizer.learning_rate = learning_rate
    optimizer.epsilon.assign(torch_epsilon(optimizer.iterations + 1))
    optimizer.apply_gradients(zip(gradients, net.trainable_variables))
    return loss


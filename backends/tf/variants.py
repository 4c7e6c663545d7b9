"""word2vec's four combinations in TensorFlow/Keras: `keras.layers.Embedding` tables, CBOW's
context mean, hierarchical softmax's inner-node table, one `tf.GradientTape` and Keras' Adam
(given torch's eps placement, `model.torch_epsilon`) or SGD in an XLA-compiled `tf.function`.

The shapes and the objective are `common.variants'`; the oracle is
`backends/numpy/variants.py`. Both steps run this autodiff step (no tuned one).
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from backends.tf import model as chapter
from backends.tf.backend import TFBackend
from backends.variant_base import VariantMixin, VariantState
from common.variants import VariantBatch, input_table, output_table

SIGNATURE = (tf.TensorSpec([None, None], tf.int32, name="inputs"),
             tf.TensorSpec([None, None], tf.float32, name="input_masks"),
             tf.TensorSpec([None, None], tf.int32, name="targets"),
             tf.TensorSpec([None, None], tf.float32, name="masks"),
             tf.TensorSpec([None, None], tf.float32, name="labels"))
DTYPES = (np.int32, np.float32, np.int32, np.float32, np.float32)


def context_mean(vectors: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """(B, C, E) input rows, (B, C) masks -> (B, E) their masked mean (cbow_mean=1)."""
    count = tf.maximum(tf.reduce_sum(masks, axis=1, keepdims=True), 1.0)
    return tf.reduce_sum(vectors * masks[:, :, None], axis=1) / count


def slot_mean_bce(logits: tf.Tensor, labels: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
    """(B, L) -> (B,): each example's mean sigmoid BCE over its real slots."""
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(masks * bce, axis=1) / tf.maximum(tf.reduce_sum(masks, axis=1), 1.0)


class Word2VecVariant(keras.Model):
    """The centre and context tables, and for hierarchical softmax the V-1 inner nodes."""

    def __init__(self, vocab_size: int, embed_size: int, model: str, loss: str) -> None:
        super().__init__(name="word2vec")
        self.source, self.sink = input_table(model), output_table(model, loss)
        self.center = keras.layers.Embedding(vocab_size, embed_size, name="center")
        self.context = keras.layers.Embedding(vocab_size, embed_size, name="context")
        self.tables = {"center": self.center, "context": self.context}
        if loss == "hsoftmax":  # word2vec starts its syn1 at zero
            self.inner = keras.layers.Embedding(vocab_size - 1, embed_size, name="inner",
                                                embeddings_initializer="zeros")
            self.tables["inner"] = self.inner
        for layer in self.tables.values():
            layer.build()

    def call(self, inputs: tf.Tensor, input_masks: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
        """(B, C), (B, C), (B, L) -> (B, L) logits of the input mean against the targets."""
        h = context_mean(self.tables[self.source](inputs), input_masks)          # (B, E)
        u = self.tables[self.sink](targets)                                       # (B, L, E)
        return tf.linalg.matvec(u, h)

    def objective(self, inputs: tf.Tensor, input_masks: tf.Tensor, targets: tf.Tensor,
                  masks: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        """The batch objective: the sum of each example's mean over its real slots."""
        return tf.reduce_sum(slot_mean_bce(self(inputs, input_masks, targets), labels, masks))


class VariantBackend(VariantMixin, TFBackend):
    """The four combinations through `tf.GradientTape` and `keras.optimizers.Adam` or `SGD`."""

    def __init__(self, vocab_size: int, embed_size: int, *, model: str, loss: str,
                 max_window: int, num_noise: int, counts: np.ndarray | None = None,
                 tree: Any = None, **options: Any) -> None:
        from backends.base import Backend

        Backend.__init__(self, vocab_size, embed_size, **options)
        kind, index = self.check_device(self.device)
        self.tf_device = "/CPU:0" if kind == "cpu" else f"/GPU:{index}"
        self.setup_variant(model, loss, max_window=max_window, num_noise=num_noise,
                           counts=counts, tree=tree)
        with tf.device(self.tf_device):
            self.net = Word2VecVariant(vocab_size, embed_size, model, loss)
            self.keras_optimizer = keras.optimizers.SGD(self.lr) if self.optimizer == "sgd" \
                else chapter.adam(self.lr)
            # The Keras variables in `table_names` order, for the tape and the optimiser.
            self.weights_by_name = {name: self.net.tables[name].embeddings
                                    for name in self.table_names}
            self.keras_optimizer.build(list(self.weights_by_name.values()))
            slots = {variable.name: variable.value
                     for variable in self.keras_optimizer.variables}
            self.variables = {name: weight.value for name, weight in self.weights_by_name.items()}
            # Keras names each slot `<variable path with _>_<momentum|velocity>` (sgd: none).
            self.moments = tuple({name: slots[f"{weight.path.replace('/', '_')}_{kind}"]
                                  for name, weight in self.weights_by_name.items()}
                                 for kind in ("momentum", "velocity")) \
                if self.optimizer != "sgd" else ({}, {})
        self._step = tf.function(self._step_graph, jit_compile=True,
                                 input_signature=(*SIGNATURE, tf.TensorSpec([], tf.float32)))
        self._gradients = tf.function(self._gradients_graph, input_signature=SIGNATURE,
                                      jit_compile=True)
        self._eval = tf.function(self.net.objective, input_signature=SIGNATURE,
                                 jit_compile=True)
        self.init_params(self.seed)

    def _gradients_graph(self, *batch: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            loss = self.net.objective(*batch)
        return loss, [chapter.dense(g) for g in
                      tape.gradient(loss, list(self.variables.values()),
                                    # hierarchical softmax leaves one of the pair out: 0
                                    unconnected_gradients=tf.UnconnectedGradients.ZERO)]

    def _step_graph(self, *batch_and_lr: tf.Tensor) -> tf.Tensor:
        *batch, lr = batch_and_lr
        loss, gradients = self._gradients_graph(*batch)
        self.keras_optimizer.learning_rate = lr
        if self.optimizer != "sgd":
            self.keras_optimizer.epsilon.assign(
                chapter.torch_epsilon(self.keras_optimizer.iterations + 1))
        self.keras_optimizer.apply_gradients(zip(gradients, self.weights_by_name.values()))
        return loss

    def _tensors(self, batch: VariantBatch) -> list[tf.Tensor]:
        with tf.device(self.tf_device):
            return [tf.convert_to_tensor(np.asarray(array, dtype))
                    for array, dtype in zip(batch, DTYPES)]

    def get_tables(self) -> dict[str, np.ndarray]:
        return {name: np.array(variable.numpy()) for name, variable in self.variables.items()}

    def set_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.check_tables(tables, "parameter table")
        for name, variable in self.variables.items():
            variable.assign(np.asarray(tables[name], np.float32))
        self.load_optimizer_tables(VariantState(0, self.empty_moments(), self.empty_moments()))

    def optimizer_tables(self) -> VariantState:
        if self.optimizer == "sgd":
            return VariantState(int(self.keras_optimizer.iterations.numpy()),
                                self.empty_moments(), self.empty_moments())
        return VariantState(int(self.keras_optimizer.iterations.numpy()),
                            *({name: np.array(moment.numpy()) for name, moment in kind.items()}
                              for kind in self.moments))

    def load_optimizer_tables(self, state: VariantState) -> None:
        self.check_moments(state)
        for moments, values in zip(self.moments, (state.exp_avg, state.exp_avg_sq)):
            for name, moment in moments.items():
                moment.assign(np.asarray(values[name], np.float32))
        self.keras_optimizer.iterations.assign(int(state.step))
        self.adam_steps = int(state.step)

    def variant_loss_and_grads(self, batch: VariantBatch) -> tuple[float, dict[str, np.ndarray]]:
        with tf.device(self.tf_device):
            loss, gradients = self._gradients(*self._tensors(batch))
        return float(loss), {name: g.numpy() for name, g in zip(self.table_names, gradients)}

    def variant_eval(self, batch: VariantBatch) -> tf.Tensor:
        with tf.device(self.tf_device):
            return self._eval(*self._tensors(batch))

    def variant_step(self, batch: VariantBatch, lr: float) -> tf.Tensor:
        with tf.device(self.tf_device):
            return self._step(*self._tensors(batch), tf.constant(lr, tf.float32))

    def synchronize(self) -> None:
        self.keras_optimizer.iterations.numpy()

"""The chapter's model in JAX + Flax NNX: the embedding pair, `skip_gram` by batched matmul,
the masked loss, trained by `jax.value_and_grad` and `optax.adam` (the `chapter` step).

Flax NNX, not Linen: since Flax 0.10 its documentation teaches NNX to new users, and NNX
modules are plain Python objects holding their parameters, like `torch.nn.Module`. The tuned
step that computes the same numbers faster is `backends/jax/fast.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def embed(table: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows of `table` at `ids`: (V, E), (...) ints -> (..., E), as `nnx.Embed` looks them up."""
    return jnp.take(table, ids, axis=0)


def skip_gram(centers: jax.Array, contexts_negatives: jax.Array, center_table: jax.Array,
              context_table: jax.Array) -> jax.Array:
    """Dot products of each centre vector with its context and noise vectors.

    (B, 1), (B, L) ids, (V, E), (V, E) tables -> (B, 1, L), the chapter's `bmm(v, u^T)`.
    """
    v = embed(center_table, centers)              # (B, 1, E)
    u = embed(context_table, contexts_negatives)  # (B, L, E)
    return jnp.matmul(v, jnp.swapaxes(u, 1, 2))


def masked_bce(logits: jax.Array, labels: jax.Array, masks: jax.Array) -> jax.Array:
    """The chapter's `SigmoidBCELoss`: (B, L) logits, labels, masks -> (B,) mean over L."""
    # optax's loss is element-wise and has no `weight=`: the mask multiplies it instead.
    bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype))
    return (masks.astype(logits.dtype) * bce).mean(axis=1)


def per_example_objective(logits: jax.Array, labels: jax.Array, masks: jax.Array) -> jax.Array:
    """Mean BCE over each example's real slots: (B, L) -> (B,).

    The chapter's `loss(...) * L / mask.sum(1)`; the `maximum` makes the all-padding rows that
    pad the last batch to a fixed shape count 0 instead of 0/0.
    """
    slots = masks.shape[1]
    real = jnp.maximum(masks.sum(axis=1).astype(logits.dtype), 1)
    return masked_bce(logits, labels, masks) * slots / real


class SkipGramModel(nnx.Module):
    """The chapter's `net`: centre table `embed_v` (net[0]) and context table `embed_u` (net[1])."""

    def __init__(self, vocab_size: int, embed_size: int, *, rngs: nnx.Rngs) -> None:
        # Xavier-uniform, as the chapter's `init_weights` (nnx.Embed's default is a scaled
        # normal). The backend then overwrites both tables from `init_params_numpy`, so that a
        # seed means the same tables in every backend; this keeps the module right on its own.
        # Flax takes a (V, E) table's fan_in as V, torch as E; Xavier uses their sum, so the
        # bound sqrt(6 / (V + E)) is the same.
        init = nnx.initializers.xavier_uniform()
        self.center = nnx.Embed(vocab_size, embed_size, embedding_init=init, rngs=rngs)
        self.context = nnx.Embed(vocab_size, embed_size, embedding_init=init, rngs=rngs)

    def __call__(self, centers: jax.Array, contexts_negatives: jax.Array) -> jax.Array:
        """(B, 1), (B, L) ids -> (B, 1, L) logits."""
        v, u = self.center(centers), self.context(contexts_negatives)  # (B, 1, E), (B, L, E)
        return jnp.matmul(v, jnp.swapaxes(u, 1, 2))

    def objective(self, centers: jax.Array, contexts_negatives: jax.Array, masks: jax.Array,
                  labels: jax.Array) -> jax.Array:
        """The optimised quantity, the chapter's `l.sum()`: (B, 1), (B, L) ... -> a 0-d array."""
        logits = self(centers, contexts_negatives).reshape(labels.shape)
        return per_example_objective(logits, labels, masks).sum()

"""JAX's tuned step (`--step fast`): `value_and_grad` over the looked-up rows, chunk by chunk.

`jax.value_and_grad` of the whole objective (the chapter step, `backends/jax/model.py`)
streams (B, L, E) blocks through memory on CPU: the looked-up rows, their gradient, and
zeroed (V, E) tables for the lookup's scatter. Here autodiff differentiates the objective with
respect to the looked-up rows (`objective_of_rows`), for a chunk of examples at a time, and the
lookup's own gradient -- add each row's gradient to the table row it came from -- is one
scatter-add per chunk into a running total. A chunk's blocks stay in cache, and `lax.scan`
reuses their buffers. Same numbers (tested), exact and dense: Adam stays the chapter's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from backends.jax.model import embed, per_example_objective
from common.batching import Batch

# The parameter pytree: SkipGramModel's parameters as `nnx.to_pure_dict` writes them,
# {"center": {"embedding": (V, E)}, "context": {"embedding": (V, E)}}.
Tables = dict[str, dict[str, jax.Array]]

# Examples per chunk of the gradient: a chunk's (rows, L, E) blocks of looked-up rows and
# their gradients hold about this many floats (3 MiB: 128 examples of the chapter's L = 60,
# E = 100), which stays in a 2-core CPU's cache (benchmarks/README.md has the sizes tried).
CHUNK_ELEMENTS = 128 * 60 * 100


def objective_of_rows(center_rows: jax.Array, context_rows: jax.Array, masks: jax.Array,
                      labels: jax.Array) -> jax.Array:
    """The optimised quantity given the looked-up rows: (B, 1, E), (B, L, E), (B, L), (B, L)
    -> a 0-d array, the chapter's `l.sum()`."""
    logits = jnp.matmul(center_rows, jnp.swapaxes(context_rows, 1, 2)).reshape(labels.shape)
    return per_example_objective(logits, labels, masks).sum()


def chunking(batch_size: int, slots: int, embed_size: int, chunked: bool) -> tuple[int, int]:
    """(chunks, rows per chunk) for a (B, L) batch; one chunk when not `chunked` (GPUs)."""
    if not chunked:
        return 1, batch_size
    target_rows = max(1, CHUNK_ELEMENTS // (slots * embed_size))
    count = -(-batch_size // target_rows)
    return count, -(-batch_size // count)


def value_and_table_grads(graphdef: nnx.GraphDef, params: Tables, batch: Batch, *,
                          chunked: bool) -> tuple[jax.Array, Tables]:
    """The objective on `batch` and its dense gradients with respect to both tables.

    (B, 1), (B, L) ids, (B, L) masks and labels -> 0-d loss, gradients shaped like `params`.
    A batch that does not split evenly into chunks is padded with all-padding examples
    (mask 0), which count 0.
    """
    module = nnx.merge(graphdef, params)
    center_table, context_table = module.center.embedding[...], module.context.embedding[...]
    batch_size, slots = batch.contexts_negatives.shape
    count, rows = chunking(batch_size, slots, center_table.shape[1], chunked)

    def split(array: jax.Array) -> jax.Array:  # (B, ...) -> (count, rows, ...)
        padding = [(0, count * rows - batch_size)] + [(0, 0)] * (array.ndim - 1)
        return jnp.pad(array, padding).reshape(count, rows, *array.shape[1:])

    rows_value_and_grad = jax.value_and_grad(objective_of_rows, argnums=(0, 1))

    def accumulate(totals: tuple[jax.Array, jax.Array, jax.Array],
                   chunk: Batch) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        loss, center_grad, context_grad = totals
        center_rows = embed(center_table, chunk.centers)              # (rows, 1, E)
        context_rows = embed(context_table, chunk.contexts_negatives)  # (rows, L, E)
        chunk_loss, (center_rows_grad, context_rows_grad) = rows_value_and_grad(
            center_rows, context_rows, chunk.masks, chunk.labels)
        # Ids repeated within and across examples: `.at[].add` sums them, as autodiff would.
        center_grad = center_grad.at[chunk.centers].add(center_rows_grad)
        context_grad = context_grad.at[chunk.contexts_negatives].add(context_rows_grad)
        return (loss + chunk_loss, center_grad, context_grad), None

    zero = jnp.zeros((), center_table.dtype)
    (loss, center_grad, context_grad), _ = jax.lax.scan(
        accumulate, (zero, jnp.zeros_like(center_table), jnp.zeros_like(context_table)),
        Batch(*(split(array) for array in batch)))
    return loss, {"center": {"embedding": center_grad}, "context": {"embedding": context_grad}}

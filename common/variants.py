"""The data of word2vec's other choices, framework-neutral: CBOW batches and the Huffman tree.

Every combination is trained from the chapter's skip-gram batches (`common.batching.Batch`),
transformed here on the host, so the rules stay the same for all four: the same subsampling,
the same random window, the same noise words from the same seeded generator. A batch's row is
one centre word with its window contexts first, then K noise words per context.

- skipgram + negative: the chapter's batch itself.
- cbow + negative: the row's contexts, padded to 2 * max_window and masked, predict the centre
  against the first K of the row's noise words (word2vec's K per centre; never the centre,
  never `<unk>`, as every noise word here).
- skipgram + hsoftmax: the centre predicts each context word along its Huffman path.
- cbow + hsoftmax: the mean of the contexts predicts the centre along its path.

Widths are fixed by the configuration (2W contexts, 1 + K targets, D or 2W * D path nodes,
D the tree's depth), so every backend sees the same shapes (compiled ones need them anyway).
"""
from __future__ import annotations

import heapq
from typing import NamedTuple

import numpy as np

from common.batching import Batch

MODELS = ("skipgram", "cbow")
LOSSES = ("negative", "hsoftmax")
# The chapter's combination: the one the `fast` steps and `--optimizer sparse_adam` train.
CHAPTER = ("skipgram", "negative")
# What the other three train with, in both steps: each framework's stock dense Adam and SGD
# (SGD on a dense gradient moves the touched rows alone). A sparse Adam would need each
# framework's row-sparse gradients, whose padded slots (inner node 0 is a real node) touch
# rows the oracle does not.
VARIANT_OPTIMIZERS = ("adam", "sgd")


class HuffmanTree(NamedTuple):
    """Each word's path from the root to its leaf, padded to the tree's depth D.

    Inner nodes are numbered 0 .. V-2 (rows of the third table); `codes` are word2vec's bits
    (1 = the right child), so the BCE label of a node on a word's path is 1 - code.
    """

    paths: np.ndarray  # (V, D) int32 inner-node ids, padded with 0
    codes: np.ndarray  # (V, D) float32 0/1, padded with 0
    masks: np.ndarray  # (V, D) float32, 1 = a node on the path

    @property
    def depth(self) -> int:
        return int(self.paths.shape[1])


def build_huffman(counts: np.ndarray) -> HuffmanTree:
    """word2vec's Huffman tree over `counts` (V,) -> HuffmanTree, built once per run.

    Frequent words get short paths. Ties break by node number (leaves by index, inner nodes
    in order of creation), so the tree is a pure function of the counts.
    """
    counts = np.asarray(counts, dtype=np.int64)
    vocab_size = len(counts)
    if vocab_size < 2:
        raise ValueError("a Huffman tree needs at least two words")
    heap = [(int(count), node) for node, count in enumerate(counts)]
    heapq.heapify(heap)
    parent = np.zeros(2 * vocab_size - 1, dtype=np.int64)
    bit = np.zeros(2 * vocab_size - 1, dtype=np.int64)
    for inner in range(vocab_size - 1):
        (count_a, a), (count_b, b) = heapq.heappop(heap), heapq.heappop(heap)
        node = vocab_size + inner
        parent[a], parent[b], bit[b] = node, node, 1
        heapq.heappush(heap, (count_a + count_b, node))
    root = 2 * vocab_size - 2
    # Root first: walk the inner nodes from the root down, each extending its parent's path.
    paths: dict[int, tuple[list[int], list[int]]] = {root: ([], [])}
    for node in range(root - 1, -1, -1):
        up_nodes, up_codes = paths[int(parent[node])]
        paths[node] = (up_nodes + [int(parent[node]) - vocab_size], up_codes + [int(bit[node])])
    depth = max(len(paths[word][0]) for word in range(vocab_size))
    tree = HuffmanTree(np.zeros((vocab_size, depth), np.int32),
                       np.zeros((vocab_size, depth), np.float32),
                       np.zeros((vocab_size, depth), np.float32))
    for word in range(vocab_size):
        nodes, codes = paths[word]
        tree.paths[word, :len(nodes)] = nodes
        tree.codes[word, :len(codes)] = codes
        tree.masks[word, :len(nodes)] = 1
    return tree


class VariantBatch(NamedTuple):
    """One batch of any combination: B examples, C input slots, L output slots.

        inputs       (B, C) int32   skipgram: the centre (C = 1); cbow: its contexts (C = 2W)
        input_masks  (B, C) float32 1 = a real input word (all 0 on padding rows)
        targets      (B, L) int32   rows of the output table: contexts + noise, centre + K
                                    noise (L = 1 + K), or Huffman path nodes (L = D or 2W * D)
        masks        (B, L) float32 1 = a real output slot
        labels       (B, L) float32 1 = a true word / 1 - code

    The input vector is the masked mean of the input rows (cbow_mean=1; skip-gram's one row
    is its own mean); each example's loss is the mean BCE over its real output slots, and the
    batch objective is their sum.
    """

    inputs: np.ndarray
    input_masks: np.ndarray
    targets: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


def table_names(loss: str) -> tuple[str, ...]:
    """The trained tables: the chapter's pair, and the V-1 inner nodes for hsoftmax."""
    return ("center", "context", "inner") if loss == "hsoftmax" else ("center", "context")


def input_table(model: str) -> str:
    """The table looked up for the model's input words: the one exported, as word2vec does."""
    return "context" if model == "cbow" else "center"


def output_table(model: str, loss: str) -> str:
    """The table the input vector is compared with."""
    if loss == "hsoftmax":
        return "inner"
    return "center" if model == "cbow" else "context"


def _pad_columns(array: np.ndarray, width: int) -> np.ndarray:
    if array.shape[1] >= width:
        return array[:, :width]
    return np.pad(array, ((0, 0), (0, width - array.shape[1])))


def to_variant(batch: Batch, model: str, loss: str, *, max_window: int, num_noise: int,
               tree: HuffmanTree | None = None) -> VariantBatch:
    """The chapter's skip-gram batch -> the same examples for (`model`, `loss`).

    Padding rows (mask 0 in slot 0: fixed-shape backends fill the last batch with them) get
    all-zero masks and count for nothing.
    """
    centers = np.asarray(batch.centers, dtype=np.int32).reshape(-1, 1)
    masks = np.asarray(batch.masks, dtype=np.float32)
    real = (masks[:, 0] > 0).astype(np.float32)[:, None]                      # (B, 1)
    if (model, loss) == CHAPTER:
        return VariantBatch(centers, real, np.asarray(batch.contexts_negatives, np.int32),
                            masks, np.asarray(batch.labels, np.float32))
    width = 2 * max_window
    ids = np.asarray(batch.contexts_negatives, dtype=np.int32)
    num_contexts = ((np.asarray(batch.labels) > 0) & (masks > 0)).sum(axis=1)  # (B,)
    contexts = _pad_columns(ids, width)                                        # (B, 2W)
    context_masks = (np.arange(width)[None, :] < num_contexts[:, None]).astype(np.float32)
    contexts = contexts * context_masks.astype(np.int32)
    if loss == "negative":  # cbow: the centre against the row's first K noise words
        columns = np.minimum(num_contexts[:, None] + np.arange(num_noise)[None, :],
                             ids.shape[1] - 1)
        noise = np.take_along_axis(ids, columns, axis=1) * real.astype(np.int32)
        targets = np.concatenate([centers, noise], axis=1)
        labels = np.zeros(targets.shape, np.float32)
        labels[:, 0] = 1
        return VariantBatch(contexts, context_masks, targets,
                            np.repeat(real, 1 + num_noise, axis=1), labels)
    if tree is None:
        raise ValueError("hierarchical softmax needs the Huffman tree")
    if model == "cbow":
        words, word_masks = centers, real                                      # (B, 1)
        inputs, input_masks = contexts, context_masks
    else:
        words, word_masks = contexts, context_masks                            # (B, 2W)
        inputs, input_masks = centers, real
    batch_size = len(centers)
    path_masks = tree.masks[words] * word_masks[:, :, None]                    # (B, n, D)
    return VariantBatch(inputs, input_masks,
                        (tree.paths[words] * path_masks.astype(np.int32)).reshape(batch_size, -1),
                        path_masks.reshape(batch_size, -1),
                        ((1 - tree.codes[words]) * path_masks).reshape(batch_size, -1))


def output_width(model: str, loss: str, *, max_window: int, num_noise: int, depth: int) -> int:
    """L of a combination's batches (skip-gram + negative: at most 2W(1 + K), per batch)."""
    if loss == "hsoftmax":
        return depth * (2 * max_window if model == "skipgram" else 1)
    return 1 + num_noise if model == "cbow" else 2 * max_window * (1 + num_noise)


def combination_error(model: str, loss: str, optimizer: str) -> str | None:
    """Why these settings cannot train together (one line naming what works), or None."""
    if model not in MODELS:
        return f"--model must be one of {', '.join(MODELS)}, got {model!r}"
    if loss not in LOSSES:
        return f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}"
    if (model, loss) != CHAPTER and optimizer not in VARIANT_OPTIMIZERS:
        return (f"--optimizer {optimizer} trains only --model skipgram --loss negative; "
                f"--model {model} --loss {loss} trains with --optimizer "
                f"{' or '.join(VARIANT_OPTIMIZERS)} (either --step: the same autodiff step)")
    return None

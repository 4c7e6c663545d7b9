"""The resource preflight: what a run will allocate, checked before it allocates any of it.

This module is the one place that knows a run's memory. `estimate` turns the sizes that decide
it (V, E, K, window, batch, optimiser, backend, the corpus' shape) into named items; `check`
compares their sum with the memory this process may still use (the cgroup's limit where there
is one, else the kernel's `MemAvailable`) and refuses with one line naming both. Whatever
changes what a run holds (the data pipeline, an optimiser, replicas, a model variant) must
change its item here, so the preflight keeps telling the truth.

The estimates are upper bounds, not measurements: `tests/test_faults.py` checks that a small
run's actual NumPy peak stays below them. The memory compared is the host's: on an accelerator
the tables live in device memory, which this does not read yet.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from common.config import TrainConfig
from common.errors import ResourceError
from common.sampling import context_reach
from common.variants import CHAPTER, output_width

INT32, INT64, FLOAT32 = 4, 8, 4
# Batches alive at once: the one training, and `batching.prefetch`'s queue of two.
BATCHES_IN_FLIGHT = 3


def padded_width(config: TrainConfig, longest_sentence: int) -> int:
    """The widest row of contexts and noise this corpus can give: 2 * reach * (1 + K)."""
    reach = context_reach(config.max_window_size, longest_sentence)
    return 2 * reach * (1 + config.num_noise_words)


@dataclass
class Shape:
    """What the corpus contributes to a run's size."""

    vocab_size: int
    tokens: int
    longest_sentence: int
    centres: int  # centre words an epoch can hold (an upper bound after subsampling)


@dataclass
class Estimate:
    """A run's memory, item by item (bytes), and the sizes that gave it."""

    items: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def breakdown(self) -> str:
        """`tables 5.4 MB, gradients 5.4 MB, ...` in decreasing order."""
        ordered = sorted(self.items.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {human(size)}" for name, size in ordered)


def human(size: float) -> str:
    """Bytes for people: 1.2 GiB, 340.0 MiB, 12.0 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} EiB"  # pragma: no cover


def expected_centres(counts: np.ndarray, subsample_t: float, tokens: int) -> int:
    """An upper bound on an epoch's centre words after subsampling (never above `tokens`).

    Subsampling keeps word w with probability min(1, sqrt(t * total / count_w)); the kept
    count's mean is the sum of those, its spread at most sqrt(mean). Six spreads above the
    mean is a bound no seed crosses in practice.
    """
    counts = np.asarray(counts, dtype=np.float64)[1:]
    counts = counts[counts > 0]
    if not len(counts):
        return 0
    keep = np.minimum(1.0, np.sqrt(subsample_t * counts.sum() / counts))
    mean = float((counts * keep).sum())
    return min(tokens, math.ceil(mean + 6 * math.sqrt(mean) + 64))


def huffman_depth_bound(tokens: int, vocab_size: int) -> int:
    """An upper bound on the Huffman tree's depth before it is built.

    A Huffman path of length d needs a total count of at least Fibonacci(d + 2) times the
    smallest count (>= 1), so d is at most the largest such d for `tokens`, and below V.
    """
    previous, current, depth = 1, 2, 0   # Fibonacci(2), Fibonacci(3)
    while current <= max(tokens, 1) and depth < vocab_size - 1:
        previous, current, depth = current, previous + current, depth + 1
    return max(depth, 1)


def estimate(config: TrainConfig, shape: Shape, *, fixed_shapes: bool,
             steps_per_call: int = 1) -> Estimate:
    """The bytes a run of `config` on a corpus of `shape` holds at its peak, per item.

    - tables: the centre and context embeddings (V, E) float32;
    - gradients: dense (V, E) pairs for `adam` and for the sparse optimisers' chapter step
      (most frameworks' autodiff writes them); the touched rows for their fast step;
    - optimizer state: Adam's two moments of both tables for `adam` and `sparse_adam`
      (SparseAdam's are dense too), none for `sgd`;
    - transient copies: one more set of tables, gradients and state, for frameworks whose
      update writes new arrays before it frees the old ones (JAX, XLA, autograd buffers);
    - padded batch: ids, masks and labels of the batches in flight (`BATCHES_IN_FLIGHT`, and
      the `steps_per_call` a backend stacks into one call), plus the step's (B, L, E)
      gathered context rows and their gradient;
    - for CBOW or hierarchical softmax: the third table (V-1, E) with its gradient and
      moments, the Huffman paths (V, D), and the combination's batch and gathered rows;
    - epoch arrays: the streaming pipeline's plan, and an epoch's pre-drawn rows when it is
      small enough to be drawn whole (`examples_bytes`).
    """
    vocab, embed = shape.vocab_size, config.embed_size
    reach = context_reach(config.max_window_size, shape.longest_sentence)
    width = 2 * reach * (1 + config.num_noise_words)
    rows = min(config.batch_size, max(shape.centres, 1))
    if fixed_shapes:
        rows = config.batch_size if shape.centres >= config.batch_size else rows
    table = vocab * embed * FLOAT32
    items: dict[str, int] = {"tables": 2 * table}
    if config.optimizer != "adam" and config.step == "fast":
        items["gradients"] = 2 * min(vocab, rows * (1 + width)) * embed * FLOAT32
    else:
        items["gradients"] = 2 * table
    items["optimizer state"] = 0 if config.optimizer == "sgd" else 4 * table
    if config.loss == "hsoftmax":  # the V-1 inner nodes: table, gradient, Adam's moments
        inner = (vocab - 1) * embed * FLOAT32
        for item, copies in (("tables", 1), ("gradients", 1),
                             ("optimizer state", 0 if config.optimizer == "sgd" else 2)):
            items[item] += copies * inner
    items["transient copies"] = items["tables"] + items["gradients"] + items["optimizer state"]
    batch_ids = rows * (INT32 + width * (INT32 + FLOAT32 + FLOAT32))
    in_flight = BATCHES_IN_FLIGHT + 2 * (steps_per_call - 1)  # a group, and its stacked copy
    items["padded batch"] = (in_flight * batch_ids + 2 * rows * width * embed * FLOAT32
                             + drawing_bytes(config, rows, shape.longest_sentence))
    if (config.model, config.loss) != CHAPTER:
        depth = huffman_depth_bound(shape.tokens, vocab)
        if config.loss == "hsoftmax":  # each word's padded path, codes and mask
            items["huffman paths"] = vocab * depth * (INT32 + 2 * FLOAT32)
        slots = output_width(config.model, config.loss, max_window=reach,
                             num_noise=config.num_noise_words, depth=depth)
        # The combination's batch (made from the chapter's, which stays above) and its
        # step's gathered output rows and their gradient.
        items["padded batch"] += rows * (2 * reach * (INT32 + FLOAT32)
                                         + slots * (INT32 + 2 * FLOAT32)) \
            + 2 * rows * slots * embed * FLOAT32
    items["epoch arrays"] = examples_bytes(config, shape.centres, shape.longest_sentence, vocab,
                                           shape.tokens)
    return Estimate(items)


def drawing_bytes(config: TrainConfig, rows: int, longest_sentence: int) -> int:
    """The temporaries of drawing `rows` rows at once (`stream.make_rows`): the neighbour
    arrays of each row's 2R candidate contexts, then, for each of up to 2RK noise slots, its
    counters, uniforms and draw, and its comparison with the row's 2R contexts."""
    reach = context_reach(config.max_window_size, longest_sentence)
    noise_slots = 2 * reach * config.num_noise_words
    return rows * (2 * reach * (3 * INT64 + 2) + noise_slots * (2 * reach * (INT32 + 1)
                                                                  + 8 * INT64))


def examples_bytes(config: TrainConfig, centres: int, longest_sentence: int,
                   vocab_size: int, tokens: int | None = None) -> int:
    """The streaming pipeline's peak for an epoch of `centres` centre words (`common.stream`).

    Its plan (sorted centre positions and their shuffled order); the temporaries of finding
    the centres one `PLAN_CHUNK_TOKENS` chunk of `tokens` at a time (keep draws, masks,
    positions); and, for an epoch small enough to be drawn whole (`MATERIALIZE_BYTES`), its
    padded rows, drawn `ROWS_CHUNK` rows at a time. Larger epochs draw each batch when it is
    asked for (the padded batch item). `vocab_size` sizes nothing here: noise collisions are
    found per row, without a vocabulary-wide bitmap.
    """
    from common import stream

    tokens = centres if tokens is None else max(tokens, centres)
    width = padded_width(config, longest_sentence)
    plan = stream.plan_bytes(centres, tokens)
    finding = min(tokens, stream.PLAN_CHUNK_TOKENS) * (INT64 + FLOAT32 * 2 + INT64 + 1)
    total = plan + finding
    if centres * width * INT32 <= stream.MATERIALIZE_BYTES:
        total += centres * (width * INT32 + INT32 + 2 * INT64) + drawing_bytes(
            config, min(centres, stream.ROWS_CHUNK), longest_sentence)
    return total


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> tuple[int, str]:
    """Bytes this process may still allocate, and where the figure comes from.

    The smaller of the kernel's MemAvailable and what the cgroup (v2, else v1) leaves under
    its limit: in a container, MemAvailable is the host's, the limit is what kills.
    """
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes",
                                    "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(cgroup / limit_file), _read_int(cgroup / usage_file)
        if limit is not None and limit < 1 << 60:  # v1 says "no limit" with a huge number
            found.append((max(limit - (usage or 0), 0), "cgroup limit"))
            break
    if not found:  # no /proc (not Linux): trust the physical memory, if it can be asked
        try:
            found.append((os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                          "physical memory"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62, "unknown"
    return min(found)


def check(config: TrainConfig, shape: Shape, *, fixed_shapes: bool, steps_per_call: int = 1,
          available: Callable[[], tuple[int, str]] | None = None) -> Estimate:
    """Refuse (one line: bytes needed, bytes available, what to lower) a run that cannot fit."""
    needed = estimate(config, shape, fixed_shapes=fixed_shapes, steps_per_call=steps_per_call)
    free, source = (available or available_memory)()
    if needed.total > free:
        raise ResourceError(
            f"this run needs about {human(needed.total)} of memory ({needed.breakdown()}; "
            f"V={shape.vocab_size:,}, E={config.embed_size:,}, K={config.num_noise_words:,}, "
            f"window={config.max_window_size:,}, batch={config.batch_size:,}) but "
            f"{human(free)} are available ({source}): lower --embed-size, --batch-size, "
            f"--max-window-size or --num-noise-words, or raise --min-freq (fewer words)"
            + ("" if config.optimizer == "sgd" else
               ", or use --optimizer sgd (no optimizer state)"))
    return needed


def check_arrays(what: str, size: int,
                 available: Callable[[], tuple[int, str]] | None = None) -> None:
    """Refuse one more allocation of `size` bytes (held-out examples, say) that cannot fit."""
    free, source = (available or available_memory)()
    if size > free:
        raise ResourceError(f"the {what} need about {human(size)} of memory but {human(free)} "
                            f"are available ({source}): lower --max-window-size or "
                            f"--num-noise-words")

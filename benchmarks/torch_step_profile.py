"""Time, and optionally profile, one training step of the torch backend on PTB-shaped batches.

Contenders, run in alternating windows so that a noisy machine penalises all alike:
  chapter        the chapter's loop: nn.Embedding pair, bmm, masked BCE, autograd, default Adam
  torch          TorchBackend.train_step (hand-derived gradient over the real pairs, fused Adam)
  torch-sparse   TorchBackend(optimizer="sparse_adam"): a different optimiser, for reference
Synthetic batches: B centre words, n_ctx ~ U{2..10} contexts per centre and 5 noise words per
context (6 * n_ctx real slots, L = the batch's longest row, as the chapter pads), ids drawn
Zipf-like (contexts ~ 1/rank, noise ~ 1/rank^0.75) as PTB's are.

    python -m benchmarks.torch_step_profile                   # the table
    python -m benchmarks.torch_step_profile --profile torch   # where the step's time goes
Synthetic rows are fuller than PTB's (about 62% real slots against 44%), so the real-pair
step takes longer here than in `benchmarks.throughput` on PTB.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import backends
from common.batching import Batch

Step = Callable[[Batch], torch.Tensor]


def synthetic_batches(count: int, batch_size: int, vocab_size: int, seed: int) -> list[Batch]:
    """`count` PTB-shaped batches: (B, 1) int32 centres, (B, L) ids, masks, labels."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab_size + 1)
    context_p = 1 / ranks
    noise_p = ranks ** -0.75
    context_p, noise_p = context_p / context_p.sum(), noise_p / noise_p.sum()
    batches = []
    for _ in range(count):
        num_contexts = rng.integers(2, 11, size=batch_size)
        lengths = 6 * num_contexts
        slots = int(lengths.max())
        position = np.arange(slots)[None, :]
        masks = (position < lengths[:, None]).astype(np.float32)
        labels = (position < num_contexts[:, None]).astype(np.float32)
        ids = np.where(labels > 0, rng.choice(vocab_size, size=(batch_size, slots), p=context_p),
                       rng.choice(vocab_size, size=(batch_size, slots), p=noise_p))
        ids[masks == 0] = 0
        centers = rng.choice(vocab_size, size=(batch_size, 1), p=context_p)
        batches.append(Batch(centers.astype(np.int32), ids.astype(np.int32), masks, labels))
    return batches


def chapter_step(vocab_size: int, embed_size: int, lr: float) -> Step:
    """The chapter's training-loop body, as printed (its `loss`, `skip_gram` and Adam)."""
    net = nn.Sequential(nn.Embedding(vocab_size, embed_size), nn.Embedding(vocab_size, embed_size))
    for table in net:
        nn.init.xavier_uniform_(table.weight)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)

    def step(batch: Batch) -> torch.Tensor:
        center, context_negative, mask, label = (torch.from_numpy(x) for x in batch)
        optimizer.zero_grad()
        pred = torch.bmm(net[0](center), net[1](context_negative).permute(0, 2, 1))
        loss = F.binary_cross_entropy_with_logits(pred.reshape(label.shape), label, weight=mask,
                                                  reduction="none").mean(dim=1)
        loss = loss / mask.sum(dim=1) * mask.shape[1]
        loss.sum().backward()
        optimizer.step()
        return loss.sum().detach()

    return step


def contenders(names: list[str], vocab_size: int, embed_size: int) -> dict[str, Step]:
    torch_backend = backends.load("torch")
    made: dict[str, Step] = {}
    for name in names:
        if name == "chapter":
            made[name] = chapter_step(vocab_size, embed_size, 0.002)
        elif name == "torch":
            made[name] = torch_backend(vocab_size, embed_size).train_step
        elif name == "torch-sparse":
            made[name] = torch_backend(vocab_size, embed_size, optimizer="sparse_adam").train_step
        else:
            raise SystemExit(f"unknown contender {name!r}: chapter, torch, torch-sparse")
    return made


def time_window(step: Step, batches: list[Batch], steps: int) -> float:
    """Seconds per step over `steps` steps, the loss read once at the end (as training does)."""
    started = time.perf_counter()
    for index in range(steps):
        loss = step(batches[index % len(batches)])
    float(loss)  # waits for queued work
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default="chapter,torch,torch-sparse")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, default=6719)  # PTB, min_freq 10
    parser.add_argument("--embed-size", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="windows per contender")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--profile", metavar="CONTENDER", default=None,
                        help="print torch.profiler's table for one contender instead")
    parser.add_argument("--by-shape", action="store_true",
                        help="with --profile: one row per op and input shapes")
    parser.add_argument("--json", action="store_true", help="one JSON line per contender")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = synthetic_batches(50, args.batch_size, args.vocab_size, seed=0)
    names = [args.profile] if args.profile else args.contenders.split(",")
    steps = contenders(names, args.vocab_size, args.embed_size)
    for step in steps.values():  # warm-up: allocator, optimiser state, first-call costs
        time_window(step, batches, 20)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            time_window(steps[args.profile], batches, args.steps)
        # The real-pair step's shapes change with every batch's pair count: group by op.
        print(profiler.key_averages(group_by_input_shape=args.by_shape).table(
            sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40,
            max_shapes_column_width=50))
        return

    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds[name].append(time_window(step, batches, args.steps))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch_size}, "
          f"V={args.vocab_size}, E={args.embed_size}, L={batches[0].masks.shape[1]}")
    for name, values in seconds.items():
        median, best = statistics.median(values), min(values)
        row = {"contender": name, "ms_per_step": round(median * 1e3, 3),
               "best_ms_per_step": round(best * 1e3, 3),
               "centre_words_per_s": round(args.batch_size / median),
               "threads": torch.get_num_threads()}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{name:>13}: {median * 1e3:6.2f} ms/step (best {best * 1e3:.2f}), "
                  f"{args.batch_size / median:>9,.0f} centre words/s")


if __name__ == "__main__":
    main()

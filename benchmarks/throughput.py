"""Centre words per second of one backend's training step on PTB.

    python -m benchmarks.throughput --backend torch --device cpu [--data ptb.zip] [--repeats 3]
    python -m benchmarks.throughput --backend jax --batch-size 2048 --timed-words 120000
    python -m benchmarks.throughput --backend torch --step chapter   # the chapter's step

Warm-up (compilation, first-touch allocation) is timed apart from the steady state: the
first `--warmup-steps` steps run and are synchronised before the clock starts. Then
`--repeats` regions are timed, each ending with `synchronize()`: whole epochs by default
(the issue's per-epoch figure), or, with `--timed-words N`, the first ceil(N / batch size)
steps of an epoch (the scaling curves). The figure is the median of the repeats, with their
min and max. The unit is the chapter's "tokens": centre words, i.e. real (unpadded) rows.
Prints one readable line and one JSON line (appended to `--out` when given).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from itertools import islice
from typing import Any

from benchmarks import machine


def device_model(device: str) -> str:
    """What runs the step: the CPU's model, or the GPU's name as nvidia-smi gives it."""
    if device == "cpu":
        return machine.cpu_model()
    index = device.partition(":")[2] or "0"
    try:
        name = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader",
                               "-i", index], capture_output=True, text=True, timeout=10)
        return name.stdout.strip() or "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def load_data(backend_class: Any, device: str, *, data_path: str | None, batch_size: int,
              embed_size: int, optimizer: str, step: str = "fast",
              seed: int = 0, corpus: str = "ptb") -> tuple[Any, Any]:
    """The chapter's config with these sizes, and the corpus's (PTB's) static epochs shaped
    for the backend."""
    from common.config import TrainConfig
    from common.data import prepare_training_data

    backend_class.check_device(device)
    config = TrainConfig(backend=backend_class.name, device=device, corpus=corpus, data=data_path,
                         batch_size=batch_size, embed_size=embed_size, optimizer=optimizer,
                         step=step, seed=seed).validate()
    data = prepare_training_data(config, fixed_shapes=backend_class.fixed_shapes,
                                 log=lambda line: None)
    return config, data


def measure_backend(backend_class: Any, device: str, config: Any, data: Any, *, repeats: int,
                    warmup_steps: int, timed_words: int | None = None,
                    first_epoch: int = 1) -> dict[str, Any]:
    """Warm up, then time `repeats` regions (epochs, or `timed_words` worth of steps).

    Region r trains on epoch `first_epoch + r`'s batches (a benchmark round passes its number,
    so no two rounds time the same batches). The record discloses the work (`Backend.work`):
    what a step computes, its slots per step, native code, steps per compiled call, threads.
    """
    from common.batching import prefetch
    from common.training import real_examples, step_groups

    backend = backend_class(len(data.vocab), config.embed_size, lr=config.learning_rate, device=device,
                            seed=config.seed, optimizer=config.optimizer, step=config.step)
    # Steps go in groups of `steps_per_call`, as the epoch driver hands them to the backend.
    group_size = backend_class.steps_per_call
    started = time.perf_counter()
    for group in step_groups(islice(data.batches(0), warmup_steps), group_size):
        backend.train_steps(group)
    backend.synchronize()
    warmup_seconds = time.perf_counter() - started

    steps = None
    if timed_words is not None:  # whole groups, so a compiled multi-step call is never cut
        steps = min(data.num_batches(1), math.ceil(timed_words / config.batch_size))
        steps = max(group_size, steps - steps % group_size)
    regions = []
    for repeat in range(repeats):
        words, slots, losses = 0, 0, []
        # The batches are cut on a background thread, as in training; the next region's data
        # is a different epoch, so no repeat trains on exactly the batches of the one before.
        batches = prefetch(islice(data.batches(first_epoch + repeat), steps))
        backend.synchronize()
        started = time.perf_counter()
        for group in step_groups(batches, group_size):
            losses.extend(backend.train_steps(group))
            words += sum(real_examples(batch) for batch in group)
        backend.synchronize()
        seconds = time.perf_counter() - started
        loss = float(backend.losses_to_numpy(losses).sum()) / words
        # Counted after the clock: what the timed steps computed, padding included or not.
        for batch in islice(data.batches(first_epoch + repeat), steps):
            slots += backend.slots_computed(batch)
        regions.append({"seconds": seconds, "words": words, "steps": len(losses), "loss": loss,
                        "slots": slots})
    work = backend.work()
    rates = [r["words"] / r["seconds"] for r in regions]
    step_ms = [1000 * r["seconds"] / r["steps"] for r in regions]
    return {
        "benchmark": "throughput",
        "backend": backend_class.name,
        "framework_version": backend_class.version(),
        "optimizer": config.optimizer,
        "step": config.step,
        "steps_per_call": work.steps_per_call,
        "slots": work.slots,
        "slots_per_step": regions[-1]["slots"] / regions[-1]["steps"],
        "native_code": work.native_code,
        "compiled": work.compiled,
        "device": backend.device,
        "device_model": device_model(backend.device),
        "batch_size": config.batch_size,
        "embed_size": config.embed_size,
        "vocab_size": len(data.vocab),
        "timed": "epoch" if steps is None else f"{steps} steps",
        "timed_words": regions[-1]["words"],
        "centre_words_per_second": statistics.median(rates),
        "centre_words_per_second_min": min(rates),
        "centre_words_per_second_max": max(rates),
        "ms_per_step": statistics.median(step_ms),
        "ms_per_step_min": min(step_ms),
        "ms_per_step_max": max(step_ms),
        "warmup_seconds": warmup_seconds,
        "warmup_steps": warmup_steps,
        "repeats": repeats,
        # Mean per-example loss over the last timed region: a check that the step trains.
        "loss_after_timed_epoch": regions[-1]["loss"],
        "peak_rss_mib": machine.peak_rss_mib(),
    }


def measure(backend_name: str, device: str, *, data_path: str | None, repeats: int,
            warmup_steps: int, batch_size: int, embed_size: int, optimizer: str,
            step: str = "fast", timed_words: int | None = None,
            seed: int = 0, threads: int = 0, first_epoch: int = 1,
            corpus: str = "ptb") -> dict[str, Any]:
    """Load the backend and PTB, then `measure_backend`; the record carries machine facts."""
    from common.session import resolve_backend

    backend_class = resolve_backend(backend_name, device, threads)
    config, data = load_data(backend_class, device, data_path=data_path, batch_size=batch_size,
                             embed_size=embed_size, optimizer=optimizer, step=step,
                             seed=seed, corpus=corpus)
    row = measure_backend(backend_class, device, config, data, repeats=repeats,
                          warmup_steps=warmup_steps, timed_words=timed_words,
                          first_epoch=first_epoch)
    return machine.stamp({**row, "corpus": data.corpus_name})


def summary(row: dict[str, Any]) -> str:
    """One readable line of a record."""
    return (f"{row['backend']} {row['framework_version']} ({row.get('step', 'fast')} step, "
            f"{row['optimizer']}) on "
            f"{row['device']}, B={row['batch_size']} E={row['embed_size']}: "
            f"{row['centre_words_per_second']:,.0f} centre words/s "
            f"(min {row['centre_words_per_second_min']:,.0f}, max "
            f"{row['centre_words_per_second_max']:,.0f} over {row['repeats']} x {row['timed']}), "
            f"{row['ms_per_step']:.2f} ms/step; {row['slots']}, {row['slots_per_step']:,.0f} "
            f"slots/step, native code: {row['native_code']}, {row['steps_per_call']} step(s) "
            f"per call, {row['threads']} thread(s); warm-up {row['warmup_seconds']:.1f} s, "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB, loss {row['loss_after_timed_epoch']:.3f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed regions (median reported)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--step", default="fast", choices=("chapter", "fast"),
                        help="the chapter's step (framework autodiff) or the tuned one")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads, as `w2v train --threads` (0: every CPU)")
    parser.add_argument("--round", type=int, default=0,
                        help="the benchmark round this measurement belongs to (recorded; its "
                             "timed epochs start at epoch round + 1)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One-line usage errors for impossible counts (`add_arguments`' and --timed-words)."""
    if args.repeats < 1 or args.warmup_steps < 0 or (args.timed_words or 1) < 1:
        parser.error("--repeats and --timed-words must be positive, --warmup-steps >= 0")
    if args.threads < 0 or args.round < 0:
        parser.error("--threads (0: every CPU) and --round must be non-negative integers")


@machine.script("throughput")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("W2V_BACKEND", "torch"))
    parser.add_argument("--device", default="cpu")
    add_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--embed-size", type=int, default=100)
    parser.add_argument("--timed-words", type=int, default=None,
                        help="time this many centre words per repeat instead of a whole epoch")
    parser.add_argument("--corpus", default="ptb",
                        help="ptb (default) or a text file, one sentence per line")
    parser.add_argument("--out", default=None, help="append the JSON line here")
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    row = measure(args.backend, args.device, data_path=args.data, repeats=args.repeats,
                  warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                  embed_size=args.embed_size, optimizer=args.optimizer, step=args.step,
                  timed_words=args.timed_words, threads=args.threads,
                  first_epoch=args.round + 1, corpus=args.corpus)
    row["round"] = args.round
    machine.emit(row, summary(row), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

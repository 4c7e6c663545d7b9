"""Time the data pipeline on the real PTB, on one core: is data ever the bottleneck?

    python -m benchmarks.pipeline --data /path/to/ptb.zip      (or env W2V_PTB)

The streaming pipeline (`common.stream`) on one core: the epoch's plan (subsample, the centres
and their shuffled order), then one epoch's batches made from it, each batch's contexts, noise,
masks and labels drawn when it is asked for, or (PTB's padded rows fit in
`common.stream.MATERIALIZE_BYTES`, as in training) drawn whole once and gathered. Targets (one
core): the plan <= 0.5 s; one epoch's batches drawn one by one <= 2 s; a re-sampled epoch
(plan, rows, batches) <= 2.5 s.
Prints a table and one JSON line (appended to `--out` as well, when given).
"""
from __future__ import annotations

import os

# Before NumPy loads: one core means one BLAS/OpenMP thread too.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from common.corpus import read_ptb  # noqa: E402
from common.sampling import NoiseSampler  # noqa: E402
from common.stream import EpochData, plan_bytes  # noqa: E402
from common.vocab import Vocab  # noqa: E402

TARGETS = {"plan": 0.5, "epoch_batches": 2.0, "resample_epoch": 2.5}


def timed(function: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    """Wall seconds of `repeat` calls, and the last result."""
    seconds, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("W2V_PTB"),
                        help="ptb.zip or a folder holding ptb.train.txt (default: env W2V_PTB)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--max-window-size", type=int, default=5)
    parser.add_argument("--num-noise-words", type=int, default=5)
    parser.add_argument("--min-freq", type=int, default=10)
    parser.add_argument("--t", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    parser.add_argument("--out", help="also append the JSON line to this file")
    args = parser.parse_args(argv)
    if not args.data or not Path(args.data).exists():
        print("pipeline.py: give --data PATH or set W2V_PTB to a local ptb.zip", file=sys.stderr)
        return 2
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rng = np.random.default_rng(args.seed)
    sampling = dict(max_window_size=args.max_window_size, num_noise_words=args.num_noise_words,
                    t=args.t)
    rows: list[tuple[str, str, list[float]]] = []  # (label, JSON key, seconds per repeat)

    read_s, sentences = timed(lambda: read_ptb(Path(args.data)).sentences, args.repeat)
    vocab_s, vocab = timed(lambda: Vocab(sentences, min_freq=args.min_freq), args.repeat)
    encode_s, corpus = timed(lambda: vocab.encode(sentences), args.repeat)
    rows += [("read PTB", "read", read_s), ("build vocabulary", "vocab", vocab_s),
             ("encode corpus", "encode", encode_s)]

    def epoch_data(mode: str, **options: Any) -> EpochData:
        return EpochData(corpus, vocab.counts, batch_size=args.batch_size, seed=args.seed,
                         mode=mode, **sampling, **options)

    plan_s, static = timed(lambda: epoch_data("static"), args.repeat)
    sampler_s, _ = timed(lambda: NoiseSampler(vocab.counts), args.repeat)
    epochs = iter(range(10**6))

    def epoch_batches(data: EpochData) -> int:
        return sum(len(batch.centers) for batch in data.batches(next(epochs)))

    streamed = epoch_data("static", materialize_bytes=0)  # every batch drawn when asked for
    batches_s, _ = timed(lambda: epoch_batches(streamed), args.repeat)
    width = 2 * args.max_window_size * (1 + args.num_noise_words)
    fixed = epoch_data("static", fixed_length=width, pad_last_batch=True, materialize_bytes=0)
    fixed_s, _ = timed(lambda: epoch_batches(fixed), args.repeat)
    # PTB's padded rows fit MATERIALIZE_BYTES: training draws them once (static) and gathers.
    def epoch_rows() -> int:  # afresh each time: a new EpochData, its plan made first
        data = epoch_data("static")
        plan = data.plan(0)
        started = time.perf_counter()
        data._epoch_rows(0, plan)
        return time.perf_counter() - started

    rows_s = [epoch_rows() for _ in range(args.repeat)]
    epoch_batches(static)  # makes its rows; the timed epochs below only gather
    gathered_s, _ = timed(lambda: epoch_batches(static), args.repeat)
    resample = epoch_data("resample")
    resample_s, _ = timed(lambda: epoch_batches(resample), args.repeat)  # plan + rows + batches
    rows += [("epoch plan (subsample, centres, order)", "plan", plan_s),
             ("noise sampler (alias table)", "noise_sampler", sampler_s),
             ("one epoch's batches, each drawn (own L)", "epoch_batches", batches_s),
             ("one epoch's batches, each drawn (fixed L)", "epoch_batches_fixed", fixed_s),
             ("the epoch's rows drawn whole", "epoch_rows", rows_s),
             ("one epoch's batches gathered from them", "epoch_gathered", gathered_s),
             ("re-sampled epoch (plan + rows + batches)", "resample_epoch", resample_s)]

    # Memory: the process peak so far, then the traced peak of one re-sampled epoch alone
    # (tracemalloc slows allocation, so it stays out of the timings above).
    max_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()
    epoch_batches(resample)
    resample_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    examples = static.num_examples(0)
    context_words = int(static.dataset(0).num_contexts.sum())

    record: dict[str, Any] = {
        "benchmark": "pipeline", "python": platform.python_version(), "numpy": np.__version__,
        "pinned_one_core": not args.all_cores, "repeat": args.repeat,
        "sentences": len(sentences), "tokens": int(len(corpus.tokens)), "vocab_size": len(vocab),
        "examples": examples, "context_words": context_words,
        "batches": static.num_batches(0),
        "plan_mib": round(plan_bytes(examples, len(corpus.tokens)) / 2**20, 1),
        "max_rss_mib": round(max_rss_mib, 1),
        "resample_epoch_traced_peak_mib": round(resample_peak_mib, 1),
    }
    print(f"PTB: {len(sentences):,} sentences, {len(corpus.tokens):,} tokens, vocabulary "
          f"{len(vocab):,}; {examples:,} centres, {record['context_words']:,} context "
          f"words, {record['batches']} batches of {args.batch_size}")
    print(f"NumPy {np.__version__}, Python {platform.python_version()}, "
          f"{'one core' if not args.all_cores else 'all cores'}, {args.repeat} repeats\n")
    print(f"{'step':42} {'median s':>9} {'min s':>8} {'target s':>9}")
    failed = []
    for label, key, seconds in rows:
        median = statistics.median(seconds)
        target = TARGETS.get(key)
        verdict = "" if target is None else ("  ok" if median <= target else "  OVER")
        if target is not None and median > target:
            failed.append(key)
        print(f"{label:42} {median:9.3f} {min(seconds):8.3f} "
              f"{'' if target is None else f'{target:.1f}':>9}{verdict}")
        record[f"{key}_s"] = round(median, 4)
    print(f"\npeak memory: {max_rss_mib:.0f} MiB resident (process); the epoch's plan "
          f"{record['plan_mib']} MiB; one re-sampled epoch, plan and batches, "
          f"{resample_peak_mib:.0f} MiB traced")
    record["targets_met"] = not failed
    line = json.dumps(record, sort_keys=True)
    print(line)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

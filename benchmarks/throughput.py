"""Centre words per second of one backend's training step on PTB, per epoch.

    python -m benchmarks.throughput --backend torch --device cpu [--data ptb.zip] [--repeats 3]

Warm-up (compilation, first-touch allocation) is timed apart from the steady state: the
first `--warmup-steps` steps run and are synchronised before the clock starts; then whole
epochs are timed, each region ending with `synchronize()`. Prints one readable line and one
JSON line (appended to `--out` when given). The unit is the chapter's "tokens": centre words.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def measure(backend_name: str, device: str, *, data_path: str | None, repeats: int,
            warmup_steps: int, batch_size: int, embed_size: int, optimizer: str,
            seed: int = 0) -> dict[str, Any]:
    """Train `repeats` timed epochs after a warm-up; return the measurement as a dict."""
    import backends
    from backends.base import require_device
    from common.batching import prefetch
    from common.config import TrainConfig
    from common.data import prepare_training_data
    from common.training import real_examples, step_groups

    backend_class = backends.load(backend_name)
    require_device(device, backend_class.devices())
    config = TrainConfig(backend=backend_class.name, device=device, corpus="ptb", data=data_path,
                         batch_size=batch_size, embed_size=embed_size, optimizer=optimizer,
                         seed=seed).validate()
    data = prepare_training_data(config, fixed_shapes=backend_class.fixed_shapes,
                                 log=lambda line: None)
    backend = backend_class(len(data.vocab), embed_size, lr=config.lr, device=device,
                            seed=seed, optimizer=optimizer)
    # Steps go in groups of `steps_per_call`, as the epoch driver hands them to the backend.
    group_size = backend_class.steps_per_call
    started = time.perf_counter()
    for group in step_groups(islice(data.batches(0), warmup_steps), group_size):
        backend.train_steps(group)
    backend.synchronize()
    warmup_seconds = time.perf_counter() - started

    epochs = []
    for repeat in range(repeats):
        words, losses = 0, []
        backend.synchronize()
        started = time.perf_counter()
        for group in step_groups(prefetch(data.batches(repeat + 1)), group_size):
            losses.extend(backend.train_steps(group))
            words += sum(real_examples(batch) for batch in group)
        backend.synchronize()
        seconds = time.perf_counter() - started
        loss = float(backend.losses_to_numpy(losses).sum()) / words
        epochs.append({"seconds": seconds, "words": words, "steps": len(losses), "loss": loss})
    rates = [e["words"] / e["seconds"] for e in epochs]
    step_ms = [1000 * e["seconds"] / e["steps"] for e in epochs]
    return {
        "backend": backend_class.name,
        "framework_version": backend_class.version(),
        "optimizer": optimizer,
        "steps_per_call": group_size,
        "device": backend.device,
        "cpu": _cpu_model(),
        "threads": os.cpu_count(),
        "batch_size": batch_size,
        "embed_size": embed_size,
        "vocab_size": len(data.vocab),
        "centre_words_per_second": statistics.median(rates),
        "centre_words_per_second_min": min(rates),
        "centre_words_per_second_max": max(rates),
        "ms_per_step": statistics.median(step_ms),
        "warmup_seconds": warmup_seconds,
        "warmup_steps": warmup_steps,
        "repeats": repeats,
        "loss_after_timed_epoch": epochs[-1]["loss"],
        "peak_rss_mib": _peak_rss_mib(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
    }


def main(argv: list[str] | None = None) -> int:
    from common.errors import W2VError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("W2V_BACKEND", "torch"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs (median reported)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--embed-size", type=int, default=100)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = parser.parse_args(argv)
    try:
        row = measure(args.backend, args.device, data_path=args.data, repeats=args.repeats,
                      warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                      embed_size=args.embed_size, optimizer=args.optimizer)
    except W2VError as error:
        print(f"throughput: error: {error}", file=sys.stderr)
        return error.exit_code
    print(f"{row['backend']} {row['framework_version']} ({row['optimizer']}) on {row['device']}: "
          f"{row['centre_words_per_second']:,.0f} centre words/s "
          f"(min {row['centre_words_per_second_min']:,.0f}, max "
          f"{row['centre_words_per_second_max']:,.0f} over {row['repeats']} epochs), "
          f"{row['ms_per_step']:.2f} ms/step, warm-up {row['warmup_seconds']:.1f} s, "
          f"peak RSS {row['peak_rss_mib']:.0f} MiB, loss {row['loss_after_timed_epoch']:.3f}")
    line = json.dumps(row, sort_keys=True)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

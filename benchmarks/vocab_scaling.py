"""Centre words/s, ms/step and peak memory against vocabulary size, per (backend, optimiser, step).

    python -m benchmarks.vocab_scaling [--backends torch,jax,tf] [--vocab 10000,100000,1000000]
    python -m benchmarks.vocab_scaling --render     # only redraw the table and plot
    python -m benchmarks.vocab_scaling --floor      # the touched rows' memory work alone

V is set directly: every batch's ids are drawn from a Zipf law over V ids with the shared
generator (`benchmarks.zipf`), centres and contexts with exponent 1, noise words with 0.75 (the
unigram^0.75 of a Zipf(1) law), 2 to 10 contexts per centre and 5 noise words per context, as
the chapter's window of 5 gives: a 1M-word vocabulary needs no 10^8-token corpus. E = 100,
B = 512. Each (backend, optimiser, step) runs in its own process, smallest V first, so the
process's peak resident memory after a V is that V's peak. A point warms up (compilation, the
power-of-two row counts of the sparse steps), then times steps until `--seconds` have passed
(at least `--min-steps`, at most `--max-steps`): dense Adam's decline at V = 1M is shown over
those few steps rather than skipped. Records go to `benchmarks/results/vocab_scaling.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine

JSONL = machine.RESULTS / "vocab_scaling.jsonl"
TABLE = machine.RESULTS / "vocab_scaling.md"
PLOT = machine.RESULTS / "vocab_scaling.png"
VOCABS = (10_000, 100_000, 1_000_000)
BACKENDS = ("torch", "jax", "tf", "mxnet")
OPTIMIZERS = ("adam", "sparse_adam", "sgd")
STEPS = ("fast", "chapter")
EMBED, BATCH, WINDOW, NOISE = 100, 512, 5, 5
TARGET = 2 / 3  # of the V = 10k throughput kept at V = 1M, sparse optimisers' fast step
# MXNet's interpreter (its own environment); env W2V_MXNET_PYTHON overrides.
MXNET_PYTHON = Path(os.environ.get("W2V_MXNET_PYTHON", ".venv-mxnet/bin/python"))


def zipf_batches(vocab_size: int, count: int, seed: int = 0) -> list[Any]:
    """`count` padded (B, L = 60) batches whose ids follow Zipf laws over ids 1..V-1."""
    from benchmarks.zipf import zipf_corpus
    from common.batching import Batch

    slots = 2 * WINDOW * (1 + NOISE)
    rng = np.random.default_rng(seed)
    draws = BATCH * count
    centres = zipf_corpus(draws, types=vocab_size - 1, exponent=1.0, line_length=draws,
                          seed=seed)[0] + 1
    contexts = zipf_corpus(draws * 2 * WINDOW, types=vocab_size - 1, exponent=1.0,
                           line_length=draws, seed=seed + 1)[0] + 1
    noise = zipf_corpus(draws * 2 * WINDOW * NOISE, types=vocab_size - 1, exponent=0.75,
                        line_length=draws, seed=seed + 2)[0] + 1
    contexts = contexts.reshape(count, BATCH, 2 * WINDOW)
    noise = noise.reshape(count, BATCH, 2 * WINDOW * NOISE)
    batches = []
    for index in range(count):
        num_contexts = 2 * rng.integers(1, WINDOW + 1, size=BATCH)        # 2 .. 2 * window
        lengths = num_contexts * (1 + NOISE)
        position = np.arange(slots)[None, :]
        ids = np.zeros((BATCH, slots), np.int32)
        for row in range(BATCH):
            n = num_contexts[row]
            ids[row, :n] = contexts[index, row, :n]
            ids[row, n:n * (1 + NOISE)] = noise[index, row, :n * NOISE]
        batches.append(Batch(centres[index * BATCH:(index + 1) * BATCH].reshape(-1, 1),
                             ids, (position < lengths[:, None]).astype(np.float32),
                             (position < num_contexts[:, None]).astype(np.float32)))
    return batches


def measure(backend_name: str, optimizer: str, step: str, vocab_size: int, *, seconds: float,
            min_steps: int, max_steps: int) -> dict[str, Any]:
    """One point in this process: build, warm up, time; words/s, ms/step, peak RSS."""
    import backends

    backend_class = backends.load(backend_name)
    started = time.perf_counter()
    backend = backend_class(vocab_size, EMBED, lr=0.002 if optimizer != "sgd" else 0.1,
                            optimizer=optimizer, step=step)
    build_seconds = time.perf_counter() - started
    group = backend.steps_per_call
    batches = zipf_batches(vocab_size, 8 * group)

    def run(count: int, offset: int) -> None:
        chosen = [batches[(offset + i) % len(batches)] for i in range(count)]
        for start in range(0, count, group):
            backend.losses_to_numpy(backend.train_steps(chosen[start:start + group]))
        backend.synchronize()

    started = time.perf_counter()
    run(max(group, 4), 0)  # compilation; the sparse steps' row counts
    warmup_seconds = time.perf_counter() - started
    steps, elapsed = 0, 0.0
    while steps < max_steps and (steps < min_steps or elapsed < seconds):
        started = time.perf_counter()
        run(group, steps)
        elapsed += time.perf_counter() - started
        steps += group
    return {"benchmark": "vocab_scaling", "backend": backend_name,
            "framework_version": backend_class.version(), "optimizer": optimizer,
            "step": step, "vocab_size": vocab_size, "embed_size": EMBED, "batch_size": BATCH,
            "timed_steps": steps, "seconds": elapsed,
            "centre_words_per_s": steps * BATCH / elapsed, "ms_per_step": 1000 * elapsed / steps,
            "peak_rss_mib": machine.peak_rss_mib(), "build_seconds": build_seconds,
            "warmup_seconds": warmup_seconds}


def worker(args: argparse.Namespace) -> int:
    """Every V of one (backend, optimiser, step), smallest first, one JSON line each."""
    for vocab_size in sorted(args.vocab):
        with machine.cpu_lock():
            row = measure(args.backends[0], args.optimizers[0], args.steps[0], vocab_size,
                          seconds=args.seconds, min_steps=args.min_steps,
                          max_steps=args.max_steps)
        print(json.dumps(row), flush=True)
    return 0


def floor(vocabs: list[int], count: int = 16, repeats: int = 3) -> list[str]:
    """The least a sparse step must do, per V: the distinct rows a Zipf batch looks up and
    touches, and the time to gather those rows of both (V, E) tables and write them back
    changed (torch's `index_select` / `index_copy_`, this process's threads), cycling over
    `count` batches; then the same for a fixed 6,000 rows drawn uniformly (V = 10k's count),
    which separates "more rows" from "a larger table" (cache and TLB misses)."""
    import torch

    from common.batching import localize, touched_rows

    lines = []
    for vocab_size in sorted(vocabs):
        batches = zipf_batches(vocab_size, count)
        looked_up = [torch.from_numpy(localize(batch).rows) for batch in batches]
        touched = [sum(len(ids) for ids in touched_rows(batch)) for batch in batches]
        rng = np.random.default_rng(0)
        spread = min(6_000, vocab_size - 1)
        uniform = [torch.from_numpy(np.sort(rng.choice(np.arange(1, vocab_size), spread,
                                                       replace=False))) for _ in range(count)]
        tables = [torch.from_numpy(init_table) for init_table in
                  (np.random.default_rng(1).random((vocab_size, EMBED), np.float32),
                   np.random.default_rng(2).random((vocab_size, EMBED), np.float32))]

        def cycle(row_sets: list[Any]) -> float:
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                for rows in row_sets:
                    for table in tables:
                        table.index_copy_(0, rows, table.index_select(0, rows).add_(1e-6))
                best = min(best, (time.perf_counter() - started) / len(row_sets))
            return 1000 * best

        lines.append(f"V={vocab_size:>9,}: {np.mean([len(r) for r in looked_up]):8,.0f} rows "
                     f"looked up, {np.mean(touched):8,.0f} touched (centre + context tables) "
                     f"per batch; gather + write back both tables: {cycle(looked_up):6.2f} "
                     f"ms/step; 6,000 uniform rows: {cycle(uniform):6.2f} ms/step")
    return lines


def python_for(backend_name: str) -> str:
    """MXNet lives in its own environment (numpy<1.24); the rest in this one."""
    if backend_name == "mxnet" and MXNET_PYTHON.exists():
        return str(MXNET_PYTHON)
    return sys.executable


def drive(args: argparse.Namespace) -> int:
    """One worker process per (backend, optimiser, step); records appended as they come."""
    for backend_name in args.backends:
        for step in args.steps:
            for optimizer in args.optimizers:
                command = [python_for(backend_name), "-m", "benchmarks.vocab_scaling",
                           "--worker", "--backends", backend_name, "--optimizers", optimizer,
                           "--steps", step, "--vocab", ",".join(map(str, args.vocab)),
                           "--seconds", str(args.seconds), "--min-steps", str(args.min_steps),
                           "--max-steps", str(args.max_steps)]
                done = subprocess.run(command, capture_output=True, text=True,
                                      timeout=args.timeout)
                for line in done.stdout.splitlines():
                    if line.startswith("{"):
                        row = machine.stamp(json.loads(line))
                        machine.append_jsonl(args.out, row)
                        print(summary(row), flush=True)
                if done.returncode:
                    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{backend_name} {step} {optimizer}: failed: {tail}", flush=True)
    return 0


def summary(row: dict[str, Any]) -> str:
    return (f"{row['backend']:6s} {row['step']:7s} {row['optimizer']:11s} "
            f"V={row['vocab_size']:>9,}: {row['centre_words_per_s']:>10,.0f} centre words/s, "
            f"{row['ms_per_step']:8.1f} ms/step, peak {row['peak_rss_mib']:7,.0f} MiB "
            f"({row['timed_steps']} steps)")


def latest(path: Path = JSONL) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """The newest record per (backend, step, optimiser, V)."""
    newest: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    for row in machine.read_jsonl(path):
        newest[(row["backend"], row["step"], row["optimizer"], row["vocab_size"])] = row
    return newest


def table(rows: dict[tuple[str, str, str, int], dict[str, Any]]) -> str:
    """Markdown: one line per (backend, step, optimiser), each V's words/s, ms/step, MiB,
    and the share of the V = 10k throughput kept at the largest V."""
    vocabs = sorted({key[3] for key in rows})
    header = ("| backend | step | optimizer | "
              + " | ".join(f"V={v:,}: words/s, ms/step, peak MiB" for v in vocabs)
              + f" | kept at V={vocabs[-1]:,} |")
    lines = [header, "|" + "---|" * (4 + len(vocabs))]
    for backend_name, step, optimizer in sorted({key[:3] for key in rows},
                                                key=lambda k: (BACKENDS.index(k[0])
                                                               if k[0] in BACKENDS else 9,
                                                               STEPS.index(k[1]),
                                                               OPTIMIZERS.index(k[2]))):
        cells, speeds = [], []
        for vocab_size in vocabs:
            row = rows.get((backend_name, step, optimizer, vocab_size))
            speeds.append(row["centre_words_per_s"] if row else None)
            cells.append(f"{row['centre_words_per_s']:,.0f}, {row['ms_per_step']:,.1f}, "
                         f"{row['peak_rss_mib']:,.0f}" if row else "not measured")
        kept = (f"{speeds[-1] / speeds[0]:.0%}" if speeds[0] and speeds[-1] else "-")
        if optimizer != "adam" and step == "fast" and speeds[0] and speeds[-1]:
            kept += " (target 67%: " + ("met" if speeds[-1] / speeds[0] >= TARGET
                                        else "missed") + ")"
        lines.append(f"| {backend_name} | {step} | {optimizer} | " + " | ".join(cells)
                     + f" | {kept} |")
    return "\n".join(lines)


def memory_table(vocabs: tuple[int, ...] = VOCABS) -> str:
    """What a user needs at each V: tables and optimiser state, from the preflight's items."""
    lines = ["| V | tables (2 V E float32) | adam, sparse_adam state (4 V E) | sgd state |"
             " adam total | sgd total |", "|---|---|---|---|---|---|"]
    from common.preflight import human

    for vocab_size in vocabs:
        table_bytes = vocab_size * EMBED * 4
        lines.append(f"| {vocab_size:,} | {human(2 * table_bytes)} | {human(4 * table_bytes)} | "
                     f"0 | {human(6 * table_bytes)} | {human(2 * table_bytes)} |")
    return "\n".join(lines)


def render(path: Path = JSONL) -> list[Path]:
    """The table (vocab_scaling.md) and the plot (vocab_scaling.png) from the records."""
    from common.io import write_text
    from common.plotting import _pyplot, save_figure

    rows = latest(path)
    if not rows:
        return []
    any_row = next(iter(rows.values()))
    body = (f"# Throughput against vocabulary size\n\nE={EMBED}, B={BATCH}, Zipf ids; "
            f"{any_row.get('cpu', '?')}, {any_row.get('threads', '?')} threads, "
            f"{any_row.get('date', '?')}\n\n{table(rows)}\n\n## Memory a run needs\n\n"
            f"{memory_table()}\n")
    write_text(TABLE if path == JSONL else path.with_suffix(".md"), body)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    colours = {"adam": "tab:red", "sparse_adam": "tab:blue", "sgd": "tab:green"}
    markers = {"torch": "o", "jax": "s", "tf": "^", "mxnet": "D"}
    for axis, step in zip(axes, STEPS):
        for (backend_name, row_step, optimizer) in sorted({key[:3] for key in rows}):
            if row_step != step:
                continue
            points = sorted((key[3], row["centre_words_per_s"]) for key, row in rows.items()
                            if key[:3] == (backend_name, step, optimizer))
            axis.plot(*zip(*points), marker=markers.get(backend_name, "x"),
                      color=colours[optimizer], label=f"{backend_name} {optimizer}")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("vocabulary size V")
        axis.set_title(f"{step} step (E={EMBED}, B={BATCH})")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_ylabel("centre words/s")
    return [TABLE, save_figure(figure, PLOT)]


def _csv(kind: type) -> Any:
    return lambda text: [kind(part) for part in text.split(",") if part]


@machine.script("vocab_scaling")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", type=_csv(str), default=list(BACKENDS))
    parser.add_argument("--optimizers", type=_csv(str), default=list(OPTIMIZERS))
    parser.add_argument("--steps", type=_csv(str), default=list(STEPS))
    parser.add_argument("--vocab", type=_csv(int), default=list(VOCABS))
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="timed seconds per point (default: 3)")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds per worker process (default: 900)")
    parser.add_argument("--out", type=Path, default=JSONL)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="only redraw table and plot")
    parser.add_argument("--floor", action="store_true",
                        help="only time the touched rows' gather and write-back per V")
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.floor:
        with machine.cpu_lock():
            print("\n".join(floor(args.vocab)))
        return 0
    if not args.render:
        drive(args)
    for written in render(args.out):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

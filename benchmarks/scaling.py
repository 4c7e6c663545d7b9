"""Centre words/s against batch size and embedding size, for one backend, on PTB.

    python -m benchmarks.scaling --backend torch [--device cpu] [--data ptb.zip]
    python -m benchmarks.scaling --render        # only redraw scaling_batch.png, scaling_embed.png

Batch sizes 128..4096 at embedding size 100, then embedding sizes 50..300 at batch size 512
(the chapter's point is measured once and appears on both curves). Each point builds a fresh
backend, warms it up (compilation for a new shape included, timed apart), then times
`--repeats` regions of `--timed-words` centre words, each ending with `synchronize()`; the
median and the min-max spread are stored as JSON lines in `benchmarks/results/scaling.jsonl`.
Every point holds the shared benchmark lock (`benchmarks.machine.cpu_lock`) while it runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from benchmarks import machine

JSONL = machine.RESULTS / "scaling.jsonl"
# One colour per backend in every plot: its chapter and fast steps share it.
COLOURS = {"numpy": "tab:gray", "torch": "tab:red", "jax": "tab:blue", "tf": "tab:orange",
           "mxnet": "tab:green"}
BATCH_SIZES = (128, 256, 512, 1024, 2048, 4096)
EMBED_SIZES = (50, 100, 200, 300)
BASE_BATCH, BASE_EMBED = 512, 100


def points(batch_sizes: tuple[int, ...], embed_sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """(batch, embed) pairs: the batch sweep at BASE_EMBED, the embed sweep at BASE_BATCH."""
    chosen = [(batch, BASE_EMBED) for batch in batch_sizes]
    chosen += [(BASE_BATCH, embed) for embed in embed_sizes if (BASE_BATCH, embed) not in chosen]
    return chosen


def run(backend_name: str, device: str, *, data_path: str | None, repeats: int,
        warmup_steps: int, timed_words: int, optimizer: str, out: Path,
        batch_sizes: tuple[int, ...] = BATCH_SIZES,
        embed_sizes: tuple[int, ...] = EMBED_SIZES, step: str = "fast", threads: int = 0,
        round_number: int = 0) -> list[dict[str, Any]]:
    """Measure every point, appending each record to `out` as soon as it is taken."""
    from benchmarks.throughput import load_data, measure_backend, summary
    from common.session import resolve_backend

    backend_class = resolve_backend(backend_name, device, threads)
    rows, loaded = [], {}
    for batch_size, embed_size in points(batch_sizes, embed_sizes):
        if batch_size not in loaded:  # the batches depend on the batch size only
            loaded = {batch_size: load_data(backend_class, device, data_path=data_path,
                                            batch_size=batch_size, embed_size=embed_size,
                                            optimizer=optimizer, step=step)}
        config, data = loaded[batch_size]
        config = dataclasses.replace(config, embed_size=embed_size).validate()
        with machine.cpu_lock():
            row = measure_backend(backend_class, device, config, data, repeats=repeats,
                                  warmup_steps=warmup_steps, timed_words=timed_words,
                                  first_epoch=round_number + 1)
        row = machine.stamp({**row, "benchmark": "scaling", "round": round_number})
        print(summary(row), flush=True)
        machine.append_jsonl(out, row)
        rows.append(row)
    return rows


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest benchmark run's points, one per (backend, step, device, batch, embed): the
    median over that run's rounds, with the rounds' min and max. Nothing of another run (so
    of another commit) is mixed in."""
    from benchmarks.report import across_rounds, of_newest_run

    return across_rounds(of_newest_run(rows), ("backend", "framework_version", "step",
                                                "optimizer", "device", "batch_size",
                                                "embed_size"))


def _series(rows: list[dict[str, Any]], vary: str, fixed: str,
            fixed_value: int) -> dict[str, list[dict[str, Any]]]:
    lines: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row[fixed] == fixed_value:
            label = (f"{row['backend']} {row.get('step', 'fast')}"
                     f"{'' if row['device'] == 'cpu' else ' ' + row['device']}")
            lines.setdefault(label, []).append(row)
    return {label: sorted(chosen, key=lambda r: r[vary]) for label, chosen in sorted(lines.items())}


def render(path: Path = JSONL) -> list[Path]:
    """scaling_batch.png and scaling_embed.png from the newest record of every point."""
    rows = latest(machine.read_jsonl(path))
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plotting import save_figure

    written = []
    cpu = rows[-1].get("cpu", "?")
    for vary, fixed, fixed_value, name, xlabel in (
            ("batch_size", "embed_size", BASE_EMBED, "scaling_batch.png", "batch size"),
            ("embed_size", "batch_size", BASE_BATCH, "scaling_embed.png", "embedding size")):
        figure, axis = plt.subplots(figsize=(6, 3.8), dpi=120)
        for label, chosen in _series(rows, vary, fixed, fixed_value).items():
            x = [r[vary] for r in chosen]
            y = [r["centre_words_per_second"] for r in chosen]
            spread = [[v - r["centre_words_per_second_min"] for v, r in zip(y, chosen)],
                      [r["centre_words_per_second_max"] - v for v, r in zip(y, chosen)]]
            backend = label.split()[0]
            axis.errorbar(x, y, yerr=spread, marker="o" if "fast" in label else "s",
                          capsize=3, label=label, color=COLOURS.get(backend),
                          linestyle="-" if "fast" in label else "--")
        if vary == "batch_size":
            axis.set_xscale("log", base=2)
        axis.set_xticks(sorted({r[vary] for r in rows if r[fixed] == fixed_value}))
        axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_xlabel(xlabel)
        axis.set_ylabel("centre words / s (median, min-max)")
        axis.set_title(f"PTB, dense Adam, {fixed.replace('_', ' ')} {fixed_value}; {cpu}, "
                       f"{rows[-1].get('threads', '?')} threads; commit {rows[-1]['commit']}; "
                       f"solid: fast, dashed: chapter", fontsize=7)
        axis.grid(alpha=0.3)
        axis.yaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
        axis.legend(fontsize=7)
        written.append(save_figure(figure, path.parent / name))
    return written


def table(path: Path = JSONL) -> str:
    """A markdown table: backends as rows, points as columns, thousands of centre words/s."""
    rows = latest(machine.read_jsonl(path))
    if not rows:
        return ""
    batch_sizes = sorted({r["batch_size"] for r in rows if r["embed_size"] == BASE_EMBED})
    embed_sizes = sorted({r["embed_size"] for r in rows if r["batch_size"] == BASE_BATCH})
    columns = points(tuple(batch_sizes), tuple(embed_sizes))
    from benchmarks.report import order

    by_backend: dict[str, dict[tuple[int, int], float]] = {}
    for row in sorted(rows, key=lambda r: order(dict(r, step=r.get("step", "fast")))):
        label = (f"{row['backend']} {row['framework_version']} {row.get('step', 'fast')} "
                 f"{row['device']}")
        by_backend.setdefault(label, {})[(row["batch_size"], row["embed_size"])] = \
            row["centre_words_per_second"]
    header = "| backend | " + " | ".join(f"B={b} E={e}" for b, e in columns) + " |"
    lines = [header, "|---" * (len(columns) + 1) + "|"]
    for label, values in by_backend.items():
        cells = [f"{values[c] / 1000:,.0f}k" if c in values else "-" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@machine.script("scaling")
def main(argv: list[str] | None = None) -> int:
    from benchmarks.throughput import add_arguments, check_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", help="measure this backend (omit with --render)")
    parser.add_argument("--device", default="cpu")
    add_arguments(parser)
    parser.add_argument("--timed-words", type=int, default=100_000,
                        help="centre words per timed repeat (default 100,000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--embed-sizes", type=int, nargs="+", default=list(EMBED_SIZES))
    parser.add_argument("--out", type=Path, default=JSONL)
    parser.add_argument("--render", action="store_true", help="only redraw the plots")
    args = parser.parse_args(argv)
    if not args.render and not args.backend:
        parser.error("give --backend NAME, or --render")
    if not args.render:
        check_arguments(parser, args)
        run(args.backend, args.device, data_path=args.data, repeats=args.repeats,
            warmup_steps=args.warmup_steps, timed_words=args.timed_words,
            optimizer=args.optimizer, out=args.out, batch_sizes=tuple(args.batch_sizes),
            embed_sizes=tuple(args.embed_sizes), step=args.step, threads=args.threads,
            round_number=args.round)
    for written in render(args.out):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

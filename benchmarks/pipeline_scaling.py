"""The data pipeline on generated Zipf corpora: seconds and peak memory, `static` vs `resample`.

    python -m benchmarks.pipeline_scaling [--sizes 1M 10M 50M] [--render]

A corpus of N tokens is drawn by the shared generator (`benchmarks.zipf`): 50,000 word types
with Zipf frequencies (exponent 1.1; after subsampling 40% of the tokens remain, as on PTB),
sentences of 1 + Poisson(19) tokens. It is generated afresh in each measurement, never stored.
Every point runs in a fresh subprocess, so its peak resident memory (`ru_maxrss`) is its own:

- `vocab`: `Vocab(sentences, min_freq=10)` and `encode` over the corpus as lists of strings
  (the form `w2v train` reads), seconds of each; the string corpus itself dominates memory.
- `static` / `resample`: the chapter's settings (window 5, 5 noise words, t = 1e-4, batch 512)
  on the encoded corpus: seconds to build the epoch's plan (its centres and their order) and
  to make one epoch's batches from it, and the peak memory above the encoded corpus. Both
  stream (`common.stream`): they differ only in which key the draws take. (Before the
  streaming pipeline `static` held every centre's padded row: 5.6 GB at text8's size.)

A `static` point whose memory, extrapolated linearly from a smaller measured one, would take
more than half of the machine's available memory is not run: its row says "extrapolated".
Records go to `benchmarks/results/pipeline_scaling.jsonl`; `--render` (also done after every
run) redraws `pipeline_scaling.png` and `pipeline_scaling.md`. Each point holds the shared
benchmark lock while it runs.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine, zipf

JSONL = machine.RESULTS / "pipeline_scaling.jsonl"
TYPES, EXPONENT, MEAN_SENTENCE = 50_000, 1.1, 20
SAMPLING = dict(max_window_size=5, num_noise_words=5, t=1e-4)
BATCH_SIZE, MIN_FREQ = 512, 10
POINTS = ("vocab", "resample", "static")
_DRAW_CHUNK = 1 << 18  # small temporaries, so encoding never sets the peak


def parse_size(text: str) -> int:
    """'1M' -> 1_000_000, '500k' -> 500_000, '2000' -> 2000."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1M, 500k)") from None
    if value < 1000:
        raise argparse.ArgumentTypeError(f"a corpus needs at least 1000 tokens, got {text}")
    return value


def label(tokens: int) -> str:
    return f"{tokens / 10**6:g}M" if tokens >= 10**6 else f"{tokens / 1000:g}k"


def zipf_corpus(tokens: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) from the shared generator with this benchmark's parameters."""
    return zipf.zipf_corpus(tokens, types=TYPES, exponent=EXPONENT, line_length=MEAN_SENTENCE,
                            seed=seed, poisson_lines=True)


def encoded_corpus(tokens: int, seed: int = 0) -> tuple[Any, np.ndarray]:
    """The corpus as `Vocab(min_freq=10).encode` would give it, built in NumPy; and counts."""
    from common.vocab import EncodedCorpus

    ids, offsets = zipf_corpus(tokens, seed)
    frequency = np.zeros(TYPES, dtype=np.int64)
    for start in range(0, tokens, _DRAW_CHUNK):  # bincount copies to int64: chunks only
        frequency += np.bincount(ids[start:start + _DRAW_CHUNK], minlength=TYPES)
    kept = np.flatnonzero(frequency >= MIN_FREQ)
    kept = kept[np.argsort(-frequency[kept], kind="stable")]  # by count, as Vocab orders
    index = np.zeros(TYPES, dtype=np.int32)  # rare words -> <unk> = 0
    index[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    for start in range(0, tokens, _DRAW_CHUNK):
        ids[start:start + _DRAW_CHUNK] = index[ids[start:start + _DRAW_CHUNK]]
    counts = np.concatenate([[tokens - frequency[kept].sum()], frequency[kept]]).astype(np.int64)
    return EncodedCorpus(ids, offsets), counts


def point_vocab(tokens: int) -> dict[str, Any]:
    """Vocabulary and encoding from string sentences, as `w2v train` does them."""
    from common.vocab import Vocab

    ids, offsets = zipf_corpus(tokens)
    words = np.array([f"w{rank}" for rank in range(TYPES)], dtype=object)
    sentences, bounds = [], offsets.tolist()
    for first in range(0, len(bounds) - 1, 10_000):  # string lists, built a block at a time
        last = min(first + 10_000, len(bounds) - 1)
        flat = words[ids[bounds[first]:bounds[last]]].tolist()
        base = bounds[first]
        sentences.extend(flat[bounds[i] - base:bounds[i + 1] - base] for i in range(first, last))
    del ids, words, flat
    gc.collect()
    corpus_rss = machine.rss_mib()
    started = time.perf_counter()
    vocab = Vocab(sentences, min_freq=MIN_FREQ)
    vocab_seconds = time.perf_counter() - started
    started = time.perf_counter()
    encoded = vocab.encode(sentences)
    encode_seconds = time.perf_counter() - started
    return {"vocab_seconds": vocab_seconds, "encode_seconds": encode_seconds,
            "vocab_size": len(vocab), "sentences": len(sentences),
            "string_corpus_rss_mib": corpus_rss, "encoded_mib": sum(
                a.nbytes for a in encoded) / 2**20, "peak_rss_mib": machine.peak_rss_mib()}


def point_dataset(tokens: int, mode: str) -> dict[str, Any]:
    """Build `mode`'s epoch data and produce one epoch's batches; seconds and memory."""
    from common.stream import EpochData, plan_bytes

    corpus, counts = encoded_corpus(tokens)
    gc.collect()
    corpus_rss, before_peak = machine.rss_mib(), machine.peak_rss_mib()
    started = time.perf_counter()
    # Every batch drawn when asked for, at every size (training draws a small epoch's rows
    # whole instead; `benchmarks.pipeline` measures that on PTB).
    epochs = EpochData(corpus, counts, batch_size=BATCH_SIZE, seed=0, mode=mode,
                       materialize_bytes=0, **SAMPLING)
    batches = epochs.num_batches(0)  # the epoch's plan (centres, order) is drawn here
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    produced = 0
    for batch in epochs.batches(0):
        produced += 1
    epoch_seconds = time.perf_counter() - started
    assert produced == batches, (produced, batches)
    peak = machine.peak_rss_mib()
    record = {"build_seconds": build_seconds, "epoch_seconds": epoch_seconds,
              "total_seconds": build_seconds + epoch_seconds, "batches": batches,
              "centre_words": epochs.num_examples(0), "vocab_size": len(counts),
              "corpus_mib": (corpus.tokens.nbytes + corpus.offsets.nbytes) / 2**20,
              "corpus_rss_mib": corpus_rss, "peak_rss_mib": peak,
              "peak_above_corpus_mib": peak - corpus_rss,
              "peak_before_stage_mib": before_peak,
              # False: generating the corpus peaked higher, so the stage's peak is only bounded.
              "stage_set_peak": peak > before_peak}
    record["plan_mib"] = plan_bytes(epochs.num_examples(0), tokens) / 2**20
    return record


def _child(point: str, tokens: int) -> int:
    record = point_vocab(tokens) if point == "vocab" else point_dataset(tokens, point)
    print(json.dumps(record))
    return 0


def measure(point: str, tokens: int) -> dict[str, Any]:
    """Run one point in a fresh interpreter (its own peak RSS) under the benchmark lock."""
    command = [sys.executable, "-m", "benchmarks.pipeline_scaling", "--child", point,
               str(tokens)]
    with machine.cpu_lock():
        done = subprocess.run(command, capture_output=True, text=True,
                              cwd=machine.RESULTS.parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{point} at {tokens} tokens failed:\n{done.stderr[-2000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return machine.stamp({"benchmark": "pipeline_scaling", "point": point, "tokens": tokens,
                          "measured": True, "numpy": np.__version__, "types": TYPES,
                          "zipf_exponent": EXPONENT, "batch_size": BATCH_SIZE, **SAMPLING,
                          **record})


def _extrapolated(tokens: int, smaller: dict[str, Any]) -> dict[str, Any]:
    scale = tokens / smaller["tokens"]
    return {"benchmark": "pipeline_scaling", "point": "static", "tokens": tokens,
            "measured": False, "extrapolated_from": smaller["tokens"],
            "corpus_mib": smaller["corpus_mib"] * scale,
            "peak_above_corpus_mib": smaller["peak_above_corpus_mib"] * scale,
            "plan_mib": smaller.get("plan_mib", 0) * scale,
            "total_seconds": smaller["total_seconds"] * scale, "date": machine.now()}


def run(sizes: list[int], out: Path,
        chosen: tuple[str, ...] = POINTS) -> list[dict[str, Any]]:
    """Every size's vocab, resample and static points, smallest first."""
    rows: list[dict[str, Any]] = []
    for tokens in sorted(sizes):
        for point in (p for p in POINTS if p in chosen):
            smaller = [r for r in rows if r["point"] == "static" and r["measured"]]
            if point == "static" and smaller:
                estimate = _extrapolated(tokens, smaller[-1])
                needed = estimate["peak_above_corpus_mib"] + estimate["corpus_mib"]
                if needed > machine.available_mib() / 2:
                    print(f"static at {label(tokens)}: not run, it would need about "
                          f"{needed:,.0f} MiB (linear from {label(smaller[-1]['tokens'])}), "
                          f"over half of the {machine.available_mib():,.0f} MiB available",
                          flush=True)
                    machine.append_jsonl(out, estimate)
                    rows.append(estimate)
                    continue
            row = measure(point, tokens)
            print(_line(row), flush=True)
            machine.append_jsonl(out, row)
            rows.append(row)
    return rows


def _line(row: dict[str, Any]) -> str:
    if row["point"] == "vocab":
        return (f"{label(row['tokens'])} tokens, vocabulary: build {row['vocab_seconds']:.2f} s, "
                f"encode {row['encode_seconds']:.2f} s ({row['vocab_size']:,} words kept); the "
                f"string corpus takes {row['string_corpus_rss_mib']:,.0f} MiB resident")
    return (f"{label(row['tokens'])} tokens, {row['point']}: build {row['build_seconds']:.2f} s, "
            f"one epoch of batches {row['epoch_seconds']:.2f} s ({row['centre_words']:,} centre "
            f"words); peak {row['peak_rss_mib']:,.0f} MiB resident, "
            f"{row['peak_above_corpus_mib']:,.0f} MiB above the encoded corpus")


def latest(path: Path = JSONL) -> dict[tuple[str, int], dict[str, Any]]:
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in machine.read_jsonl(path):
        if row.get("benchmark") == "pipeline_scaling":
            newest[(row["point"], row["tokens"])] = row
    return newest


def table(path: Path = JSONL) -> str:
    """Markdown: per size, seconds and memory of vocab, static and resample."""
    rows = latest(path)
    if not rows:
        return ""
    lines = ["| tokens | vocab + encode s | static: build s | static: epoch s | static: peak "
             "above corpus MiB | resample: plan s | resample: epoch s | resample: peak above "
             "corpus MiB | encoded corpus MiB |", "|---" * 9 + "|"]
    for tokens in sorted({t for _, t in rows}):
        vocab, static, resample = (rows.get((p, tokens)) for p in ("vocab", "static", "resample"))
        cells = [label(tokens)]
        cells.append(f"{vocab['vocab_seconds'] + vocab['encode_seconds']:.2f}" if vocab else "-")
        if static and static["measured"]:
            cells += [f"{static['build_seconds']:.2f}", f"{static['epoch_seconds']:.2f}",
                      f"{static['peak_above_corpus_mib']:,.0f}"]
        elif static:
            cells += ["-", "-", f"~{static['peak_above_corpus_mib']:,.0f} (extrapolated, not run)"]
        else:
            cells += ["-", "-", "-"]
        if resample:
            bound = "" if resample.get("stage_set_peak", True) else "<= "
            cells += [f"{resample['build_seconds']:.2f}", f"{resample['epoch_seconds']:.2f}",
                      f"{bound}{resample['peak_above_corpus_mib']:,.0f}"]
        else:
            cells += ["-", "-", "-"]
        corpus = resample or static
        cells.append(f"{corpus['corpus_mib']:,.0f}" if corpus else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(path: Path = JSONL) -> list[Path]:
    """pipeline_scaling.png (seconds and memory against corpus size) and pipeline_scaling.md."""
    from common.io import write_text
    from common.plotting import save_figure

    rows = latest(path)
    if not any(r.get("measured") for r in rows.values()):
        return []
    any_row = next(r for r in rows.values() if r.get("measured"))
    header = (f"Data pipeline on generated Zipf corpora ({TYPES:,} types, exponent {EXPONENT}, "
              f"sentences of ~{MEAN_SENTENCE} tokens), chapter settings (window 5, 5 noise "
              f"words, t = 1e-4, batch {BATCH_SIZE}, min_freq {MIN_FREQ}); one fresh process per "
              f"cell, peak resident memory (ru_maxrss) above the encoded corpus. NumPy "
              f"{any_row.get('numpy', '?')}, {any_row.get('cpu', '?')}. `python -m "
              f"benchmarks.pipeline_scaling`.\n\n")
    written = [write_text(path.parent / "pipeline_scaling.md", header + table(path) + "\n")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (seconds_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    colors = {"vocab": "tab:blue", "static": "tab:orange", "resample": "tab:green"}
    series = (("vocab", "vocab_seconds", "vocabulary + encode (strings)"),
              ("static", "total_seconds", "static: build + one epoch"),
              ("resample", "total_seconds", "resample: plan + one epoch"))
    for point, key, name in series:
        chosen = sorted((r for (p, _), r in rows.items() if p == point and r.get("measured")),
                        key=lambda r: r["tokens"])
        values = [r[key] + (r["encode_seconds"] if point == "vocab" else 0) for r in chosen]
        seconds_axis.plot([r["tokens"] for r in chosen], values, marker="o", label=name,
                          color=colors[point])
    for point, name in (("static", "static"), ("resample", "resample")):
        chosen = sorted((r for (p, _), r in rows.items() if p == point),
                        key=lambda r: r["tokens"])
        measured = [r for r in chosen if r.get("measured")]
        line, = memory_axis.plot([r["tokens"] for r in measured],
                                 [r["peak_above_corpus_mib"] for r in measured], marker="o",
                                 color=colors[point], label=f"{name}: peak above the corpus")
        guessed = [r for r in chosen if not r.get("measured")]
        if guessed and measured:
            memory_axis.plot([measured[-1]["tokens"]] + [r["tokens"] for r in guessed],
                             [measured[-1]["peak_above_corpus_mib"]] +
                             [r["peak_above_corpus_mib"] for r in guessed], linestyle="--",
                             marker="o", markerfacecolor="none", color=line.get_color(),
                             label=f"{name}: extrapolated (not run)")
    corpus = sorted((r for (p, _), r in rows.items() if p in ("resample", "static")),
                    key=lambda r: r["tokens"])
    memory_axis.plot(sorted({r["tokens"] for r in corpus}),
                     [next(r["corpus_mib"] for r in corpus if r["tokens"] == t)
                      for t in sorted({r["tokens"] for r in corpus})],
                     color="gray", linestyle=":", label="the encoded corpus itself")
    for axis, ylabel in ((seconds_axis, "seconds"), (memory_axis, "MiB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("corpus tokens")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=7)
    seconds_axis.set_title("pipeline seconds (wall clock)", fontsize=8)
    memory_axis.set_title("peak resident memory above the encoded corpus", fontsize=8)
    written.append(save_figure(figure, path.parent / "pipeline_scaling.png"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+",
                        default=[10**6, 10**7, 5 * 10**7])
    parser.add_argument("--points", nargs="+", choices=POINTS, default=list(POINTS))
    parser.add_argument("--out", type=Path, default=JSONL)
    parser.add_argument("--render", action="store_true", help="only redraw the figure/table")
    parser.add_argument("--child", nargs=2, metavar=("POINT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args.child[0], int(args.child[1]))
    if not args.render:
        try:
            run(args.sizes, args.out, tuple(args.points))
        except RuntimeError as error:
            print(f"pipeline_scaling: error: {error}", file=sys.stderr)
            return 1
    for written in render(args.out):
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

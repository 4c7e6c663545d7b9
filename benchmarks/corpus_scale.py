"""Corpora past PTB: data build, speed and memory of `w2v` from 1M to 100M tokens, and gensim.

    python -m benchmarks.corpus_scale [--sizes 1M 17M 100M] [--backends numpy torch jax tf]
                                      [--steps 30] [--no-peer] [--render]

Each corpus is a text file written by the shared generator (`benchmarks.zipf`): exponent 1.0,
250,000 word types, lines of 1,000 tokens, seed 0 (text8's size is 17M tokens); `--min-freq 5`
and otherwise the chapter's settings (window 5, 5 noise words, t = 1e-4, E = 100, B = 512,
dense Adam). The files go to `--work` (default /tmp/w2v-corpus-scale; 100M tokens take about
0.8 GB) and are reused. Every point runs in a fresh process under the shared benchmark lock:

- `data`: `w2v`'s data path from the text file with an empty token cache: the vocabulary pass,
  the cache (encode) pass, the epoch's plan. Its seconds are the data-build figure.
- one point per backend: the data again (now from the cache), the model, then a bounded number
  of optimiser steps (`--steps` after 3 warm-up steps; never a whole epoch: dense Adam at this
  vocabulary takes about half an hour per 17M-token epoch), batches made by the prefetch
  thread as in training. Centre words/s over the timed steps. `--optimizer` picks the
  backends' optimiser (dense `adam` by default; `--render` shows `--optimizer`'s rows), so the
  sparse optimisers can be measured on the same corpora beside gensim.
- `gensim` (2 workers): `build_vocab` over the whole file (its data build), then `train` on
  the first `--peer-lines` lines (1,000 tokens each), effective words/s.

Memory: peak resident (`VmHWM`) and peak anonymous memory (`RssAnon`, sampled every 10 ms on
a thread: the memory-mapped corpus's pages are file-backed and do not count). The 100M point
uses the 17M corpus's vocabulary (same tables, so the two differ only by the corpus length),
for the target "anonymous memory at 100M <= 1.5 x that at 17M". Records go to
`benchmarks/results/corpus_scale.jsonl`; `--render` (also done after every run) redraws
`corpus_scale.md` and `corpus_scale.png`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import machine, zipf
from benchmarks.pipeline_scaling import label, parse_size

JSONL = machine.RESULTS / "corpus_scale.jsonl"
TYPES, EXPONENT, LINE_LENGTH, SEED, MIN_FREQ = 250_000, 1.0, 1000, 0, 5
SIZES = (10**6, 17 * 10**6, 10**8)
SAME_VOCAB_AS = {10**8: 17 * 10**6}  # size -> the size whose vocabulary it trains with
WARMUP_STEPS = 3
TARGETS = {"torch_peak_rss_mib_17M": 1536, "anon_ratio_100M_over_17M": 1.5,
           "data_build_seconds_17M": 20.0}


def corpus_file(work: Path, tokens: int) -> Path:
    """The Zipf text of `tokens` tokens, written once into `work`."""
    path = work / f"zipf-{label(tokens)}.txt"
    if not path.is_file():
        print(f"writing {path} ({tokens:,} tokens)", flush=True)
        zipf.write_text(path, tokens, types=TYPES, exponent=EXPONENT, line_length=LINE_LENGTH,
                        seed=SEED)
    return path


class MemoryWatch:
    """Peak RssAnon of this process, sampled on a thread (the kernel keeps no peak of it)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.peak_anon_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.peak_anon_kib = max(self.peak_anon_kib, self.status("RssAnon"))
            time.sleep(interval)

    def stop(self) -> dict[str, float]:
        self.peak_anon_kib = max(self.peak_anon_kib, self.status("RssAnon"))
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mib": self.status("VmHWM") / 1024,
                "peak_anon_mib": self.peak_anon_kib / 1024}


def _vocab_of(work: Path, tokens: int) -> Any:
    """The vocabulary `w2v` gives the corpus of `tokens` tokens (from its token cache)."""
    from common.corpus import text_file_source
    from common.token_cache import TextLayout, load_streamed

    source = text_file_source(corpus_file(work, tokens))
    return load_streamed(source.name, source.open_binary, source.source, TextLayout(),
                         min_freq=MIN_FREQ, cache_folder=_cache(work) / "w2v-multi" / "tokens",
                         log=lambda line: None).vocab


def _cache(work: Path) -> Path:
    return work / "xdg"


def _prepare(work: Path, tokens: int, fixed_shapes: bool) -> tuple[Any, float]:
    """`prepare_training_data` on the corpus file, timed; (data, seconds)."""
    from common.config import TrainConfig
    from common.data import prepare_training_data

    vocab = _vocab_of(work, SAME_VOCAB_AS[tokens]) if tokens in SAME_VOCAB_AS else None
    config = TrainConfig(corpus=str(corpus_file(work, tokens)), min_freq=MIN_FREQ)
    started = time.perf_counter()
    data = prepare_training_data(config, fixed_shapes=fixed_shapes, vocab=vocab,
                                 log=lambda line: None)
    return data, time.perf_counter() - started


def point_data(work: Path, tokens: int) -> dict[str, Any]:
    """The data build from the text file with no token cache: vocabulary, cache, plan."""
    watch = MemoryWatch()
    data, seconds = _prepare(work, tokens, fixed_shapes=False)
    return {"build_seconds": seconds, "vocab_size": len(data.vocab),
            "centre_words": data.num_examples(0), "batches": data.num_batches(0),
            "cache_mib": data.cache.stat().st_size / 2**20, **watch.stop()}


def point_backend(work: Path, tokens: int, name: str, steps: int,
                  optimizer: str = "adam") -> dict[str, Any]:
    """Data (from the cache), the model, then `steps` timed optimiser steps."""
    import backends
    from common.batching import prefetch
    from common.training import real_examples

    watch = MemoryWatch()
    backend_class = backends.load(name)
    data, seconds = _prepare(work, tokens, fixed_shapes=backend_class.fixed_shapes)
    backend = backend_class(len(data.vocab), 100, lr=0.002, seed=0, optimizer=optimizer)
    backend.init_params(0)
    batches = prefetch(data.batches(0))
    for _ in range(WARMUP_STEPS):  # compilation and first-touch of the tables and moments
        backend.train_step(next(batches))
    backend.synchronize()
    words, started = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
        backend.train_step(batch)
        words += real_examples(batch)
    backend.synchronize()
    elapsed = time.perf_counter() - started
    batches.close()
    return {"backend": name, "version": backend_class.version(), "warm_build_seconds": seconds,
            "vocab_size": len(data.vocab), "centre_words": data.num_examples(0),
            "batches": data.num_batches(0), "steps": steps, "seconds": elapsed,
            "centre_words_per_second": words / elapsed,
            "epoch_seconds_estimate": data.num_batches(0) * elapsed / steps, **watch.stop()}


def point_gensim(work: Path, tokens: int, lines: int) -> dict[str, Any]:
    """gensim, 2 workers: build_vocab over the file, then train on its first `lines` lines."""
    import itertools
    import logging

    import gensim
    from gensim.models import Word2Vec
    from gensim.models.word2vec import LineSentence

    from benchmarks.peer import CHAPTER

    logging.getLogger("gensim").setLevel(logging.WARNING)
    watch = MemoryWatch()
    path = corpus_file(work, tokens)
    model = Word2Vec(**{**CHAPTER, "min_count": MIN_FREQ, "workers": 2, "seed": 0})
    started = time.perf_counter()
    model.build_vocab(LineSentence(str(path), max_sentence_length=LINE_LENGTH))
    build = time.perf_counter() - started
    started = time.perf_counter()
    sample = list(itertools.islice(LineSentence(str(path), max_sentence_length=LINE_LENGTH),
                                   lines))
    effective, raw = model.train(sample, total_examples=len(sample), epochs=1)
    elapsed = time.perf_counter() - started
    return {"backend": "gensim", "version": gensim.__version__, "workers": 2,
            "build_seconds": build, "vocab_size": len(model.wv), "lines": lines,
            "seconds": elapsed, "centre_words_per_second": effective / elapsed,
            "raw_words": raw, **watch.stop()}


def _child(args: argparse.Namespace) -> int:
    point, tokens = args.child[0], int(args.child[1])
    if point == "data":
        record = point_data(args.work, tokens)
    elif point == "gensim":
        record = point_gensim(args.work, tokens, args.peer_lines)
    else:
        record = point_backend(args.work, tokens, point, args.steps, args.optimizer)
    print(json.dumps(record))
    return 0


def measure(args: argparse.Namespace, point: str, tokens: int) -> dict[str, Any]:
    """One point in a fresh interpreter (its own peak memory), under the benchmark lock."""
    command = [sys.executable, "-m", "benchmarks.corpus_scale", "--child", point, str(tokens),
               "--work", str(args.work), "--steps", str(args.steps),
               "--peer-lines", str(args.peer_lines), "--optimizer", args.optimizer]
    environment = dict(os.environ, XDG_CACHE_HOME=str(_cache(args.work)))
    with machine.cpu_lock():
        if point == "data":  # a cold build: this corpus's token caches go first
            for old in (_cache(args.work) / "w2v-multi" / "tokens").glob(
                    f"zipf-{label(tokens)}.txt-*"):
                old.unlink()
        done = subprocess.run(command, capture_output=True, text=True, env=environment,
                              cwd=machine.RESULTS.parent.parent, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{point} at {label(tokens)} failed:\n{done.stderr[-3000:]}")
    record = json.loads(done.stdout.strip().splitlines()[-1])
    return machine.stamp({"benchmark": "corpus_scale", "point": point, "tokens": tokens,
                          "types": TYPES, "zipf_exponent": EXPONENT, "line_length": LINE_LENGTH,
                          "min_freq": MIN_FREQ, "optimizer": args.optimizer,
                          "vocab_from_tokens": tokens if point == "gensim"  # its own vocabulary
                          else SAME_VOCAB_AS.get(tokens, tokens), **record})


def _line(row: dict[str, Any]) -> str:
    size = label(row["tokens"])
    memory = (f"peak {row['peak_rss_mib']:,.0f} MiB resident, {row['peak_anon_mib']:,.0f} MiB "
              f"anonymous")
    if row["point"] == "data":
        return (f"{size} data build: {row['build_seconds']:.1f} s, vocabulary "
                f"{row['vocab_size']:,}, {row['centre_words']:,} centre words; {memory}")
    return (f"{size} {row['point']}: {row['centre_words_per_second']:,.0f} centre words/s; "
            f"{memory}")


def run(args: argparse.Namespace) -> None:
    args.work.mkdir(parents=True, exist_ok=True)
    for tokens in sorted(args.sizes):
        if tokens in SAME_VOCAB_AS:
            corpus_file(args.work, SAME_VOCAB_AS[tokens])
        corpus_file(args.work, tokens)
        points = ["data", *args.backends] + ([] if args.no_peer else ["gensim"])
        for point in points:
            row = measure(args, point, tokens)
            print(_line(row), flush=True)
            machine.append_jsonl(args.out, row)


def latest(path: Path = JSONL, optimizer: str = "adam") -> dict[tuple[str, int], dict[str, Any]]:
    """The newest row of each (point, tokens) measured with `optimizer` (gensim: always)."""
    newest: dict[tuple[str, int], dict[str, Any]] = {}
    for row in machine.read_jsonl(path):
        if row.get("benchmark") == "corpus_scale" and (
                row["point"] in ("data", "gensim") or row.get("optimizer") == optimizer):
            newest[(row["point"], row["tokens"])] = row
    return newest


def targets(rows: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    """The issue's three targets, each with its measured figure and a verdict."""
    lines = []
    torch17 = rows.get(("torch", 17 * 10**6))
    if torch17:
        value = torch17["peak_rss_mib"]
        lines.append(f"torch peak resident memory at 17M tokens, optimizer "
                     f"{torch17.get('optimizer', 'adam')}: {value:,.0f} MiB "
                     f"(target <= 1,536 MiB: {'met' if value <= 1536 else 'NOT met'})")
    for point in ("torch", "numpy", "jax", "tf", "mxnet"):
        small, large = rows.get((point, 17 * 10**6)), rows.get((point, 10**8))
        if small and large:
            ratio = large["peak_anon_mib"] / small["peak_anon_mib"]
            lines.append(f"{point} peak anonymous memory, 100M / 17M tokens (same vocabulary): "
                         f"{large['peak_anon_mib']:,.0f} / {small['peak_anon_mib']:,.0f} MiB = "
                         f"{ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
    data17 = rows.get(("data", 17 * 10**6))
    if data17:
        value = data17["build_seconds"]
        lines.append(f"data build at 17M tokens: {value:.1f} s (target <= 20 s: "
                     f"{'met' if value <= 20 else 'NOT met'})")
    return lines


def table(path: Path = JSONL, optimizer: str = "adam") -> str:
    rows = latest(path, optimizer)
    if not rows:
        return ""
    lines = ["| tokens | point | vocabulary | data build s | centre words/s | epoch s (est.) | "
             "peak RSS MiB | peak anon MiB |", "|---" * 8 + "|"]
    order = {"data": 0, "numpy": 1, "torch": 2, "jax": 3, "tf": 4, "mxnet": 5, "gensim": 6}
    for (point, tokens), row in sorted(rows.items(), key=lambda item: (item[0][1],
                                                                     order.get(item[0][0], 9))):
        build = row.get("build_seconds", row.get("warm_build_seconds"))
        build_text = "-" if build is None else (
            f"{build:.1f}" + ("" if point in ("data", "gensim") else " (cached)"))
        speed = row.get("centre_words_per_second")
        epoch = row.get("epoch_seconds_estimate")
        imposed = point != "gensim" and row.get("vocab_from_tokens", tokens) != tokens
        vocab = f"{row['vocab_size']:,}" + (f" ({label(row['vocab_from_tokens'])}'s)"
                                            if imposed else "")
        lines.append(f"| {label(tokens)} | {point} | {vocab} | {build_text} | "
                     f"{'-' if speed is None else f'{speed:,.0f}'} | "
                     f"{'-' if epoch is None else f'{epoch:,.0f}'} | "
                     f"{row['peak_rss_mib']:,.0f} | {row['peak_anon_mib']:,.0f} |")
    return "\n".join(lines)


def render(path: Path = JSONL, optimizer: str = "adam") -> list[Path]:
    """corpus_scale.md (table and targets) and corpus_scale.png (build s, memory vs tokens)."""
    from common.io import write_text
    from common.plotting import save_figure

    rows = latest(path, optimizer)
    if not rows:
        return []
    any_row = next(iter(rows.values()))
    header = (f"Synthetic Zipf corpora (exponent {EXPONENT}, {TYPES:,} types, lines of "
              f"{LINE_LENGTH:,} tokens, seed {SEED}), `--min-freq {MIN_FREQ}`, chapter settings, "
              f"optimizer {optimizer}; {any_row.get('cpu', '?')}, "
              f"{any_row.get('threads', '?')} threads. "
              f"Speed over a bounded number of steps, not a whole epoch; the 100M corpus trains "
              f"with the 17M corpus's vocabulary. `python -m benchmarks.corpus_scale`.\n\n")
    body = header + table(path, optimizer) + "\n\n" + \
        "\n".join(f"- {line}" for line in targets(rows))
    written = [write_text(path.parent / "corpus_scale.md", body + "\n")]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (build_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    points = sorted({point for point, _ in rows}, key=lambda p: (p != "data", p))
    for point in points:
        chosen = sorted((r for (p, _), r in rows.items() if p == point),
                        key=lambda r: r["tokens"])
        sizes = [r["tokens"] for r in chosen]
        if point in ("data", "gensim"):
            build_axis.plot(sizes, [r["build_seconds"] for r in chosen], marker="o",
                            label="w2v (vocabulary, token cache, plan)" if point == "data"
                            else "gensim build_vocab")
        if point != "data":
            line, = memory_axis.plot(sizes, [r["peak_rss_mib"] for r in chosen], marker="o",
                                     label=f"{point}: peak RSS")
            memory_axis.plot(sizes, [r["peak_anon_mib"] for r in chosen], marker="s",
                             linestyle="--", color=line.get_color(),
                             label=f"{point}: peak anonymous")
    for axis, ylabel in ((build_axis, "seconds"), (memory_axis, "MiB")):
        axis.set_xscale("log")
        axis.set_xlabel("corpus tokens")
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=6)
    build_axis.set_yscale("log")
    build_axis.set_title("data build from the text file (cold cache)", fontsize=8)
    memory_axis.set_title("peak memory, dense Adam (the mapped corpus is not anonymous)",
                          fontsize=8)
    written.append(save_figure(figure, path.parent / "corpus_scale.png"))
    return written


@machine.script("corpus_scale")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=list(SIZES))
    parser.add_argument("--backends", nargs="*", default=["numpy", "torch", "jax", "tf"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per backend")
    parser.add_argument("--optimizer", default="adam",
                        help="the backends' optimiser (a TrainConfig value, e.g. sparse_adam)")
    parser.add_argument("--peer-lines", type=int, default=1000,
                        help="lines (of 1,000 tokens) gensim trains on")
    parser.add_argument("--no-peer", action="store_true", help="leave gensim out")
    parser.add_argument("--work", type=Path, default=Path(
        os.environ.get("W2V_CORPUS_SCALE_DIR", "/tmp/w2v-corpus-scale")))
    parser.add_argument("--out", type=Path, default=JSONL)
    parser.add_argument("--render", action="store_true", help="only redraw the table/plot")
    parser.add_argument("--clean", action="store_true", help="delete --work at the end")
    parser.add_argument("--child", nargs=2, metavar=("POINT", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.peer_lines < 1:
        parser.error("--steps and --peer-lines must be positive")
    if args.child:
        return _child(args)
    if not args.render:
        try:
            run(args)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"corpus_scale: error: {error}", file=sys.stderr)
            return 1
        finally:
            if args.clean:
                shutil.rmtree(args.work, ignore_errors=True)
    for written in render(args.out, args.optimizer):
        print(f"wrote {written}")
    for line in targets(latest(args.out, args.optimizer)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`--optimizer sgd` against gensim's SGD, on the same sentences, in one interleaved run.

    python -m benchmarks.gensim_sgd [--backend torch] [--seeds 0 1 2 3 4] [--long-seeds 0]
                                    [--text8-size] [--render]

PTB, the chapter's settings for both (window 5, 5 noise words, t = 1e-4, E = 100, min count
10, `<unk>` dropped: `benchmarks.peer`). For each seed, in turn: gensim with 2 workers and
with 1 (seed 0 only), then `w2v`'s backend with `--optimizer sgd` and its defaults (rate and
word2vec's decay), 5 epochs each, so that both see the machine in the same state. Reported
in the same unit for both: centre words trained per second after subsampling (gensim's
"effective words"), the training seconds of the 5 epochs, WordSim353 after 5 epochs; then,
for `--long-seeds`, WordSim353 after 20 epochs (each its own run, its schedule over 20).

`--text8-size`: one epoch on the corpus-scale benchmark's 17M-token Zipf text
(`benchmarks.corpus_scale.corpus_file`, min count 5), whole commands timed from outside:
`w2v train` (data build with an empty token cache, training, export, evaluation) against a
gensim script that reads the file, scans its vocabulary and trains (2 workers).

Records: `benchmarks/results/gensim_sgd.jsonl`; the table: `gensim_sgd.md`.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import machine

JSONL = machine.RESULTS / "gensim_sgd.jsonl"
TABLE = machine.RESULTS / "gensim_sgd.md"
TEXT8_TOKENS = 17 * 10**6
GENSIM_SCRIPT = """
import sys, time
from gensim.models import Word2Vec
from gensim.models.word2vec import LineSentence
started = time.perf_counter()
model = Word2Vec(LineSentence(sys.argv[1]), sg=1, negative=5, window=5, vector_size=100,
                 sample=1e-4, min_count=5, workers=2, epochs=1, seed=0)
print(len(model.wv), model.corpus_total_words, time.perf_counter() - started)
"""


def ours(backend: str, data: str | None, seed: int, epochs: int,
         lr: float | None = None) -> dict[str, Any]:
    """`w2v train`'s session with `--optimizer sgd` and its defaults (or `lr`); seconds,
    rate, scores."""
    from common.config import TrainConfig
    from common.session import train_run

    config = TrainConfig(backend=backend, optimizer="sgd", corpus="ptb", data=data, seed=seed,
                         epochs=epochs, lr=lr)
    with tempfile.TemporaryDirectory(prefix="w2v-gensim-sgd-") as folder, machine.cpu_lock():
        outcome = train_run(config, Path(folder) / "run", log=lambda line: None,
                            progress=False)
    return {"who": f"{backend} sgd", "seed": seed, "epochs": epochs,
            "lr": config.learning_rate, "schedule": config.schedule,
            "train_seconds": outcome.result.seconds,
            "centre_words_per_second": outcome.result.words_per_second,
            "wordsim353": outcome.evaluation["wordsim353"]["spearman"]}


def peer(sentences: list[list[str]], workers: int, seed: int, epochs: int) -> dict[str, Any]:
    """gensim's `train()` alone (vocabulary built apart), as `benchmarks.peer` times it."""
    from benchmarks.peer import train_gensim
    from common.evaluate import evaluate

    with machine.cpu_lock():
        result = train_gensim(sentences, workers=workers, epochs=epochs, seed=seed)
    return {"who": f"gensim {workers} worker{'s' if workers > 1 else ''}", "seed": seed,
            "epochs": epochs, "gensim_version": result.gensim_version,
            "train_seconds": result.train_seconds,
            "centre_words_per_second": result.words_per_second,
            "wordsim353": evaluate(result.keyed)["wordsim353"]["spearman"]}


def text8_size(backend: str, work: Path) -> list[dict[str, Any]]:
    """One epoch on the 17M-token text, whole commands, interleaved: gensim, then w2v."""
    from benchmarks.corpus_scale import corpus_file

    path = corpus_file(work, TEXT8_TOKENS)
    rows = []
    with machine.cpu_lock():
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", GENSIM_SCRIPT, str(path)],
                              capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        vocab, _, inside = done.stdout.split()
        rows.append({"who": "gensim 2 workers", "corpus": "zipf-17M", "epochs": 1,
                     "wall_seconds": wall, "vocab_size": int(vocab),
                     "inside_seconds": float(inside)})
    cache = Path(tempfile.mkdtemp(prefix="w2v-text8-cache-"))
    try:
        with machine.cpu_lock():
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "common.cli", "train", "--backend", backend,
                            "--optimizer", "sgd", "--corpus", str(path), "--min-freq", "5",
                            "--epochs", "1", "--out", str(cache / "run"), "--no-progress"],
                           capture_output=True, text=True, check=True,
                           env={**__import__("os").environ, "XDG_CACHE_HOME": str(cache)})
            wall = time.perf_counter() - started
        report = __import__("json").loads((cache / "run" / "report.json").read_text())
        rows.append({"who": f"{backend} sgd", "corpus": "zipf-17M", "epochs": 1,
                     "wall_seconds": wall, "report": report})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return rows


def render(path: Path = JSONL) -> str:
    """The table of the latest PTB run and the latest 17M-token run (rows of one `run`
    stamp each), written to `gensim_sgd.md`."""
    from common.io import atomic_path

    everything = machine.read_jsonl(path)
    if not everything:
        return ""
    rows = []
    for text8 in (False, True):
        part = [row for row in everything if ("corpus" in row) == text8]
        if part:
            rows += [row for row in part if row["run"] == part[-1]["run"]]
    runs = ", ".join(dict.fromkeys(row["run"] for row in rows))
    lines = [f"Runs {runs}; {rows[0].get('cpu', '?')}, {rows[0].get('threads', '?')} threads.",
             "",
             "| PTB | epochs | seeds | training seconds (mean, min-max) | centre words/s | "
             "WordSim353 (mean, min-max) |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        if "corpus" not in row:
            groups.setdefault((row["who"], row["epochs"]), []).append(row)
    for (who, epochs), group in groups.items():
        seconds = [row["train_seconds"] for row in group]
        rho = [row["wordsim353"] for row in group]
        speed = statistics.fmean(row["centre_words_per_second"] for row in group)
        lines.append(f"| {who} | {epochs} | {len(group)} | {statistics.fmean(seconds):.2f} "
                     f"({min(seconds):.2f}-{max(seconds):.2f}) | {speed:,.0f} | "
                     f"{statistics.fmean(rho):.3f} ({min(rho):.3f}-{max(rho):.3f}) |")
    whole = [row for row in rows if "corpus" in row]
    if whole:
        lines += ["", "| 17M-token Zipf text, 1 epoch, whole command | wall seconds |",
                  "|---|---|"]
        lines += [f"| {row['who']} | {row['wall_seconds']:.1f} |" for row in whole]
    text = "\n".join(lines) + "\n"
    with atomic_path(TABLE, suffix=".md") as temporary:
        temporary.write_text(text, encoding="utf-8")
    return text


@machine.script("gensim_sgd")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="ptb.zip or folder (default: env W2V_PTB)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--lr", type=float, default=None,
                        help="sgd's starting rate (default: the optimiser's default)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--long-seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--text8-size", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("/tmp/w2v-corpus-scale"))
    parser.add_argument("--render", action="store_true", help="only rewrite the table")
    args = parser.parse_args(argv)
    if not args.render:
        from benchmarks.peer import ptb_sentences

        logging.getLogger("gensim").setLevel(logging.WARNING)
        stamp = machine.now()
        sentences = ptb_sentences(args.data)

        def record(row: dict[str, Any]) -> None:
            row = machine.stamp({**row, "benchmark": "gensim_sgd", "run": stamp})
            machine.append_jsonl(JSONL, row)
            print({k: v for k, v in row.items() if k not in ("cpu", "python", "commit")},
                  flush=True)

        for seed in args.seeds:
            record(peer(sentences, 2, seed, 5))
            if seed == args.seeds[0]:
                record(peer(sentences, 1, seed, 5))
            record(ours(args.backend, args.data, seed, 5, args.lr))
        for seed in args.long_seeds:
            record(peer(sentences, 2, seed, 20))
            record(ours(args.backend, args.data, seed, 20, args.lr))
        if args.text8_size:
            for row in text8_size(args.backend, args.work):
                record(row)
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
